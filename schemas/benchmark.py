"""BenchmarkRecord: one evaluation of one SAE, reproducible from its own fields.

Readable as SAEBench's ``BaseEvalOutput`` (eval_type_id, eval_config, eval_id,
datetime_epoch_millis, eval_result_metrics by category, eval_result_details,
eval_result_unstructured, sae_lens_* fields; see adamkarvonen/SAEBench
sae_bench/evals/base_eval_output.py), plus saekit's hashes, seeds and environment.
Metric names follow SAELens' evals (explained_variance, mse, l0, ce_loss_score, ...).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from saekit.schemas.card import SAERef
from saekit.schemas.common import SCHEMA_VERSION, Hex64, Strict
from saekit.schemas.release import GateVerdict


class MetricDefinition(Strict):
    """What a metric means and which way is better."""

    definition: str = Field(min_length=1, description="Formula in words or symbols.")
    direction: Literal["higher", "lower", "none"]
    source: str | None = Field(None, description="Where the definition comes from.")


class ModelInfo(Strict):
    id: str
    revision: str | None = None
    weights_sha256: Hex64 | None = Field(None, description="sha256 of the model weights file.")
    hook_name: str | None = None


class DataInfo(Strict):
    """The token set, pinned by the sha256 of its token ids."""

    source: str = Field(description="e.g. a text file path, a dataset id, or 'shards:<dir>'.")
    fingerprint: Hex64
    n_tokens: int = Field(ge=0)
    context_size: int | None = Field(None, gt=0)


class Hardware(Strict):
    device: str = Field(description="'cpu' or the CUDA device name.")
    cpu: str | None = None
    cuda: str | None = None
    driver: str | None = None


class Timings(Strict):
    total_s: float = Field(ge=0)
    tokens_per_s: float | None = Field(None, ge=0)
    phases: dict[str, float] = Field(default_factory=dict)


class BenchmarkRecord(Strict):
    """One evaluation of one SAE, SAEBench-compatible, with what reproduces it."""

    schema_version: Literal["1.0"] = SCHEMA_VERSION
    # --- SAEBench BaseEvalOutput fields
    eval_type_id: str = Field(description="e.g. 'core' (SAEBench's reconstruction + sparsity eval).")
    eval_config: dict[str, Any] = Field(description="Full config: tokens, batch, context, seeds, ...")
    eval_id: str
    datetime_epoch_millis: int = Field(ge=0)
    eval_result_metrics: dict[str, dict[str, float]] = Field(
        description="Metrics by category, e.g. {'reconstruction_quality': {'explained_variance': 0.8}}."
    )
    eval_result_details: list[dict[str, Any]] = Field(default_factory=list)
    eval_result_unstructured: Any = None
    sae_bench_commit_hash: str | None = None
    sae_lens_id: str | None = None
    sae_lens_release_id: str | None = None
    sae_lens_version: str | None = None
    sae_cfg_dict: dict[str, Any] | None = None
    # --- saekit
    sae: SAERef
    metric_definitions: dict[str, MetricDefinition] = Field(default_factory=dict)
    seeds: dict[str, int] = Field(default_factory=dict)
    model: ModelInfo | None = None
    data: DataInfo | None = None
    packages: dict[str, str] = Field(default_factory=dict, description="name -> version.")
    hardware: Hardware | None = None
    timings: Timings | None = None
    gate: GateVerdict | None = None

    def metric(self, name: str) -> float | None:
        """A metric by name from any category."""
        for cat in self.eval_result_metrics.values():
            if name in cat:
                return cat[name]
        return None
