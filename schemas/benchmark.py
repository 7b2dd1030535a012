"""BenchmarkRecord: one evaluation of one SAE, reproducible from its own fields.

A record of eval_type_id "core" (written as JSON by ``to_json``) validates as SAEBench's own
``CoreEvalOutput`` (sae-bench 0.6.0 sae_bench/evals/core/eval_output.py, on
``BaseEvalOutput`` in sae_bench/evals/base_eval_output.py): ``eval_config`` holds exactly
SAEBench's ``CoreEvalConfig`` keys, ``eval_result_metrics`` every category SAEBench requires,
each metric under SAEBench's name computed by SAEBench's definition (SAELens-defined ones
beside them with a ``_saelens`` suffix), ``eval_result_details`` one ``CoreFeatureMetric`` per
latent. saekit's own check configuration is ``check_config``; hashes, seeds and environment
follow. SAEBench ignores the fields it does not know.
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
    eval_config: dict[str, Any] = Field(
        description="SAEBench's eval config (CoreEvalConfig keys for 'core'); saekit's own is check_config."
    )
    eval_id: str
    datetime_epoch_millis: int = Field(ge=0)
    eval_result_metrics: dict[str, dict[str, int | float]] = Field(
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
    check_config: dict[str, Any] = Field(
        default_factory=dict, description="saekit's check configuration: tokens, batch, context, seeds, dtype, ..."
    )
    sae: SAERef
    metric_definitions: dict[str, MetricDefinition] = Field(default_factory=dict)
    seeds: dict[str, int] = Field(default_factory=dict)
    model: ModelInfo | None = None
    data: DataInfo | None = None
    packages: dict[str, str] = Field(default_factory=dict, description="name -> version.")
    hardware: Hardware | None = None
    timings: Timings | None = None
    gate: GateVerdict | None = None

    def to_json(self, *, indent: int | None = 2) -> str:
        """JSON without unset optional fields, except the ones SAEBench's BaseEvalOutput
        requires to be present (they may be null)."""
        import json

        data = self.model_dump(mode="json", exclude_none=True)
        for key in ("sae_bench_commit_hash", "sae_lens_id", "sae_lens_release_id", "sae_lens_version", "sae_cfg_dict"):
            data.setdefault(key, None)
        return json.dumps(data, indent=indent)

    def config(self) -> dict[str, Any]:
        """saekit's check configuration (older records kept it in eval_config)."""
        return self.check_config or self.eval_config

    def metric(self, name: str) -> float | None:
        """A metric by name from any category."""
        for cat in self.eval_result_metrics.values():
            if name in cat:
                return cat[name]
        return None
