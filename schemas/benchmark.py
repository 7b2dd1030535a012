"""BenchmarkRecord: one evaluation of one SAE, reproducible from its own fields.

A record of eval_type_id "core" (written as JSON by ``to_json``) validates as SAEBench's own
``CoreEvalOutput`` (sae-bench 0.6.0 sae_bench/evals/core/eval_output.py, on
``BaseEvalOutput`` in sae_bench/evals/base_eval_output.py): ``eval_config`` holds exactly
SAEBench's ``CoreEvalConfig`` keys, ``eval_result_metrics`` every category SAEBench requires,
each metric under SAEBench's name computed by SAEBench's definition (SAELens-defined ones
beside them with a ``_saelens`` suffix), ``eval_result_details`` one ``CoreFeatureMetric`` per
latent. saekit's own check configuration is ``check_config``, a typed ``CheckConfig``
(everything that determines the check's result, and what ``saekit check --from-record``
re-runs); hashes, seeds and environment follow. SAEBench ignores the fields it does not know.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, ValidationError, field_serializer

from saekit.schemas.card import SAERef
from saekit.schemas import safeio
from saekit.schemas.common import SCHEMA_VERSION, Hex64, Strict
from saekit.schemas.errors import InputError, NotFoundError, first_problem
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
    weights: str | None = Field(
        None, description="The weights as the check ran them, e.g. 'SmolLM2-135M-Instruct, Q4_1 GGUF de-quantized to float32'."
    )


class DataInfo(Strict):
    """The token set, pinned by the sha256 of its token ids."""

    source: str = Field(description="e.g. a text file path, a dataset id, or 'shards:<dir>'.")
    fingerprint: Hex64
    n_tokens: int = Field(ge=0)
    context_size: int | None = Field(None, gt=0)
    dataset_id: str | None = Field(None, description="The dataset: 'pydoc', a local path, or a Hub id ORG/NAME.")
    revision: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")] | None = Field(
        None, description="The Hub dataset's commit the windows were read at."
    )
    split: str | None = Field(None, description="The dataset's split (row datasets; SAELens reads 'train').")
    column: str | None = Field(None, description="The column read: tokens, input_ids, text or problem.")


class Hardware(Strict):
    device: str = Field(description="'cpu' or the CUDA device name.")
    cpu: str | None = None
    cuda: str | None = None
    driver: str | None = None


class Timings(Strict):
    total_s: float = Field(ge=0)
    tokens_per_s: float | None = Field(None, ge=0)
    phases: dict[str, float] = Field(default_factory=dict)


# a count of latents, or "all"; the CLI passes its text ("16") and is recorded as given
LatentCount = Annotated[int, Field(ge=0)] | Annotated[str, StringConstraints(pattern=r"^(all|[0-9]+)$")]


# The check's defaults, in one place: the CLI's options, check()'s arguments, the harness and
# the configuration's fields read them.
DEFAULT_TOKENS = 8192
DEFAULT_CONTEXT = 128
DEFAULT_BATCH = 4
DEFAULT_CARDS = "all"  # a card for every latent (or a number: the N most active)
DEFAULT_DOWNSTREAM = 16  # exact ablation for (at most) the N most active latents ('all' on request)
# each in its strongest window (issue 22: 16 latents x 4 windows were 64 window forwards, 2x a
# plain pass over the default 2,048-token reference set; the agreement with attribution
# compares the two on the same windows, so one window per latent keeps its 16 pairs)
DEFAULT_ABLATION_WINDOWS = 1


def default_downstream(n_windows: int) -> int:
    """The latents a check ablates exactly when not told: DEFAULT_DOWNSTREAM, but at most half
    the token set's windows (at least 2, for the agreement). Each is a window forward from
    the hook: 16 on 2,048 tokens (16 windows) cost as much as a forward over every window,
    which alone put the check past 2.5x a plain forward+backward (issue 22); bounded, exact
    ablation stays a share of the check that does not grow as the token set shrinks."""
    return min(DEFAULT_DOWNSTREAM, max(2, n_windows // 2))
DEFAULT_EXAMPLES = 5
# With 5 top examples: 20 activating examples per card, enough for an explainer to see 10
# and a scorer to hold out the rest (issue 21); and this many windows where the latent is zero
DEFAULT_QUANTILE_EXAMPLES = 15
DEFAULT_NEGATIVE_EXAMPLES = 20


class DownstreamMethod(Strict):
    """How the cards' downstream effects are measured."""

    all: Literal["attribution"] | None = Field(
        None, description="Every card's estimate (one backward per batch); null without downstream."
    )
    chosen: Literal["exact-ablation"] = Field("exact-ablation", description="For the chosen, most active latents.")


class CardsConfig(Strict):
    """The feature cards of a check."""

    enabled: bool = True
    latents: LatentCount = Field(DEFAULT_CARDS, description="Cards for every latent ('all') or the N most active.")
    downstream_latents: LatentCount | None = Field(
        None, description=f"Exact ablation for the N most active latents, or 'all' (null: not given, a check uses "
        f"{DEFAULT_DOWNSTREAM}, at most half its windows, and records it)."
    )
    ablation_windows: int | None = Field(
        None, ge=1, description=f"Strongest windows each of those latents is ablated in (null: not given, a check "
        f"uses {DEFAULT_ABLATION_WINDOWS} and records it; in records before this field, 4)."
    )
    n_examples: int = Field(DEFAULT_EXAMPLES, ge=1, description="Top activating examples per card.")
    # null: the defaults (DEFAULT_QUANTILE_EXAMPLES, DEFAULT_NEGATIVE_EXAMPLES), resolved in
    # the record; records written before these fields read and write back unchanged
    n_quantile_examples: int | None = Field(
        None, ge=0, description=f"Examples at quantiles of the activations per card (null: {DEFAULT_QUANTILE_EXAMPLES})."
    )
    n_negative_examples: int | None = Field(
        None, ge=0, description="Windows where the latent is zero throughout, per card, for scoring explanations "
        f"(null: {DEFAULT_NEGATIVE_EXAMPLES})."
    )
    n_cards: int | None = Field(None, ge=0, description="Resolved: the cards written.")
    downstream_method: DownstreamMethod | None = Field(None, description="Resolved from downstream.")

    @field_serializer("downstream_method", when_used="json")
    def _method(self, value: DownstreamMethod | None) -> dict[str, Any] | None:
        # written whole, its null included ("all": null says no attribution estimate)
        return None if value is None else value.model_dump(mode="json")


class CheckConfig(Strict):
    """A check's configuration: everything that determines its result. ``saekit.check``
    builds it from its arguments, fills in what it resolves (hook, model, token count, dtype,
    threads, world size, cards written) and records it as ``BenchmarkRecord.check_config``;
    ``--from-record`` re-runs it. Unset (null) fields are not written: a check on stored
    activation shards has no model, token set, batch size or cards."""

    sae_ref: str | None = Field(None, description="The SAE: registry reference, hf://... or artifact folder.")
    model_id: str | None = Field(None, description="The language model (default: the SAE's, resolved).")
    hook_name: str | None = Field(None, description="The hooked module (default: the SAE's, resolved).")
    # the token set (saekit.harness.text.TokenSet.config)
    corpus: str | None = Field(
        None, description="The dataset: 'pydoc', a .txt/.jsonl/.parquet file or folder, or "
        "hf://datasets/ORG/NAME@COMMIT (resolved: pinned; default the SAE's dataset_path, else pydoc).")
    split: Literal["eval", "train", "all"] | None = Field(None, description="The window split: every 8th window is eval.")
    dataset_split: str | None = Field(None, description="The dataset's own split (row datasets; default train).")
    seed: int = Field(0, description="Seed of the token-window sample and of torch.")
    context_size: int | None = Field(None, ge=2, description="Tokens per window, BOS included.")
    n_tokens: int | None = Field(None, gt=0, description="Tokens to evaluate on (resolved: whole windows).")
    prepend_bos: bool | None = Field(None, description="Default: the SAE's (resolved).")
    batch_size: int | None = Field(None, ge=1, description="Windows per forward pass.")
    exclude_special_tokens: bool | None = Field(None, description="BOS/EOS/PAD left out of the metrics (SAELens).")
    downstream: bool = Field(True, description="CE/KL with the reconstruction spliced in, and cards' effects.")
    device: str = Field("cpu", description="'cpu' or 'cuda[:N]'.")
    dtype: str | None = Field(None, description="Resolved: the SAE's dtype.")
    kernels: str | None = Field(None, description="Resolved: the kernels setting (SAEKIT_KERNELS).")
    torch_threads: int | None = Field(None, ge=1, description="Torch threads (resolved when not given).")
    world_size: int | None = Field(None, ge=1, description="Resolved: torchrun ranks.")
    cards: CardsConfig | None = None
    # the check on stored activation shards
    activations: str | None = Field(None, description="Folder of activation shards instead of the model.")
    exclude_token_ids: list[int] | None = Field(None, description="Resolved: the token ids the shards left out.")


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
    check_config: CheckConfig | None = Field(
        None, description="saekit's check configuration: what re-runs the check (saekit check --from-record)."
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

    def config(self) -> CheckConfig | None:
        """saekit's check configuration: ``check_config``; older records kept it in
        ``eval_config`` (read as a CheckConfig: pydantic's ValidationError when it is not
        one); None when the record has none (a record SAEBench wrote)."""
        if self.check_config is not None:
            return self.check_config
        if not self.eval_config or "model_name" in self.eval_config:  # empty, or SAEBench's CoreEvalConfig
            return None
        return CheckConfig.model_validate(self.eval_config)

    def metric(self, name: str) -> float | None:
        """A metric by name from any category."""
        for cat in self.eval_result_metrics.values():
            if name in cat:
                return cat[name]
        return None


def read_records(path: str | os.PathLike) -> list[BenchmarkRecord]:
    """The BenchmarkRecord(s) of an eval.json (one object, or a list where a check appended),
    read within safeio's JSON limits and validated strictly: the one reader of check records
    (the gate judges what it returns, so nothing is coerced)."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError("no such benchmark record", where=str(path))
    raw = safeio.load_json(safeio.read_bytes(path.parent, path.name, max_bytes=safeio.JSON_LIMITS.max_file_bytes),
                           where=str(path))
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise InputError("not a BenchmarkRecord: an empty list", where=str(path))
    try:
        return [BenchmarkRecord.model_validate(r) for r in items]
    except ValidationError as err:
        raise InputError(f"not a BenchmarkRecord: {first_problem(err)}", where=str(path)) from None
