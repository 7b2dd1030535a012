"""``saekit check`` of a transcoder set: each MLP's output predicted, and the model run with
the MLPs replaced, one layer at a time and all layers at once.

Per layer and for the whole set the records report (definitions in DEFINITIONS, each cited):
- ``fvu``: sum_t ||y_t - y_hat_t||^2 / sum_t ||y_t - mean(y)||^2 over every evaluated token,
  y the module's real output on the clean forward pass, y_hat the transcoder's prediction
  from the module's real input (sparsify 1.3.3 ``sparse_coder.py`` SparseCoder.forward:
  ``fvu = l2_loss / total_variance``, total_variance = (y - y.mean(0)).pow(2).sum(); here the
  mean and sums run over all tokens, not one batch); the set's pools every layer's sums;
- ``l0``, ``dead_fraction``, ``dense_fraction`` as for SAEs (saekit.harness.metrics);
- CE and KL with the module's output replaced by the prediction (at non-special positions,
  as SAELens splices a reconstruction) and with it zeroed (every position), and SAELens'
  ``ce_loss_score`` / ``kl_div_score`` from them (sae_lens evals.py
  get_downstream_reconstruction_metrics): per layer with that layer replaced, for the set
  with every layer replaced at once (each transcoder reading its module's input in the
  replaced run).
Special tokens (BOS) are left out of every metric, as in the SAE check.

One clean pass per batch feeds every layer's FVU, sparsity and latent statistics (cards);
then one replaced and one zero-ablated pass per layer and one of each for the whole set.
Records are SAEBench-style BenchmarkRecords (eval_type_id ``saekit_transcoder``): one per
layer (``layer_{i}/eval.json``, with ``feature_cards.jsonl`` beside it) and one for the set
(``eval.json``). Cards carry input-side examples (the windows where the latent fires most,
read from the module's input) and output-side logit effects (W_dec @ W_U, as SAE cards);
no downstream ablations.
"""

from __future__ import annotations

import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from saekit.harness.metrics import DEFINITIONS as SAE_DEFINITIONS, DENSE_THRESHOLD
from saekit.schemas import (
    BenchmarkRecord,
    CardsConfig,
    CheckConfig,
    DataInfo,
    InputError,
    MetricDefinition,
    SAERef,
    Timings,
    safeio,
)
from saekit.schemas.console import Progress, say
from saekit.schemas.version import __version__

EVAL_TYPE = "saekit_transcoder"
_SPARSIFY = "sparsify 1.3.3 sparsify/sparse_coder.py SparseCoder.forward (fvu = l2_loss / total_variance)"

DEFINITIONS: dict[str, MetricDefinition] = {
    "fvu": MetricDefinition(
        definition="sum over evaluated tokens of ||y - y_hat||^2 / sum over evaluated tokens of ||y - mean(y)||^2; "
        "y the module's output on the clean pass, y_hat the transcoder's prediction from the module's input "
        "(the set's: every layer's sums pooled)",
        direction="lower", source=_SPARSIFY + "; sums over all tokens instead of one batch"),
    "fvu_mean_over_layers": MetricDefinition(
        definition="mean over the set's layers of each layer's fvu", direction="lower", source="saekit"),
    **{k: SAE_DEFINITIONS[k] for k in ("l0", "dead_fraction", "dense_fraction", "ce_loss_without_sae",
                                       "ce_loss_with_ablation", "ce_loss_score", "kl_div_with_ablation",
                                       "kl_div_score", "total_tokens_evaluated")},
    "ce_loss_with_sae": MetricDefinition(
        definition="mean next-token cross-entropy with the module's output replaced by the transcoder's prediction "
        "at non-special positions (the set's: every layer's at once)",
        direction="lower", source="sae_lens 6.54.12 sae_lens/evals.py get_recons_loss (standard_replacement_hook)"),
    "kl_div_with_sae": MetricDefinition(
        definition="mean over non-special positions of KL(p_model || p_replaced), the module's output replaced "
        "as in ce_loss_with_sae", direction="lower", source="sae_lens 6.54.12 sae_lens/evals.py _kl"),
}
CATEGORIES: dict[str, list[str]] = {
    "reconstruction_quality": ["fvu", "fvu_mean_over_layers"],
    "sparsity": ["l0", "dead_fraction", "dense_fraction"],
    "model_performance_preservation": ["ce_loss_score", "ce_loss_with_ablation", "ce_loss_with_sae",
                                       "ce_loss_without_sae"],
    "model_behavior_preservation": ["kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"],
    "token_stats": ["total_tokens_evaluated"],
}
HEADLINE = ["fvu", "l0", "dead_fraction", "ce_loss_score", "kl_div_score"]


# --- replacing modules ---------------------------------------------------------------------

Replace = Callable[[int, Any, Any], Any]  # (layer, module input x, module output y) -> new y or None


def sites(model: Any, tc: Any, where: str) -> tuple[Any, Any]:
    """(where the transcoder reads, where it writes) on the HF ``model``: hook_in a module path
    (its *input*) or a TransformerLens name (e.g. ``blocks.8.ln2.hook_normalized``), hook_out a
    module path (its output) or a TL name (``blocks.8.hook_mlp_out``), as saekit.harness.hooks
    maps them."""
    from saekit.harness.hooks import TL_HOOK, Site, module, site

    if not tc.hook_in or not tc.hook_out:
        raise InputError("the transcoder names no hook (hook_name)", where=where)
    if TL_HOOK.fullmatch(tc.hook_in):
        read = site(model, tc.hook_in)
    else:
        module(model, tc.hook_in)
        read = Site(tc.hook_in, "input")
    write = site(model, tc.hook_out)
    if write.carry is not None or write.read != "output":
        raise InputError(f"hook_out {tc.hook_out!r}: a transcoder's prediction replaces a module's output "
                         "(e.g. model.layers.N.mlp, blocks.N.hook_mlp_out)", where=where)
    return read, write


@contextmanager
def replaced(model: Any, tset: Any, layers: list[int], fn: Replace) -> Iterator[None]:
    """Within the block, for each layer: the activation the transcoder reads (x) is kept, and
    the output it predicts (y) becomes ``fn(layer, x, y)`` (None: left as it is)."""
    from saekit.harness.activations import _on_site

    with ExitStack() as stack:
        for layer in layers:
            read, write = sites(model, tset[layer], f"layer {layer}")
            box: dict[str, Any] = {}

            def keep(x: Any, box: dict = box) -> None:
                box["x"] = x

            def swap(y: Any, box: dict = box, layer: int = layer) -> Any:
                new = fn(layer, box.pop("x"), y)
                return None if new is None else new.to(y.dtype)

            stack.callback(_on_site(model, read, keep).remove)
            stack.callback(_on_site(model, write, swap).remove)
        yield


# --- sums ------------------------------------------------------------------------------------

@dataclass
class _Layer:
    """One layer's running sums (float64) over the evaluated tokens."""

    d_sae: int
    n: int = 0
    err: float = 0.0  # sum ||y - y_hat||^2
    y_sq: float = 0.0  # sum ||y||^2
    y_sum: Any = None  # [d_out] sum of y
    l0: float = 0.0
    fire: Any = None  # [d_sae] tokens where each latent fires
    ce: dict[str, float] = field(default_factory=lambda: {"with": 0.0, "abl": 0.0, "kl_with": 0.0, "kl_abl": 0.0})

    def add(self, y: Any, y_hat: Any, values: Any, indices: Any) -> None:
        import torch

        y64 = y.double()
        self.n += y.shape[0]
        self.err += float((y64 - y_hat.double()).pow(2).sum())
        self.y_sq += float(y64.pow(2).sum())
        s = y64.sum(0)
        self.y_sum = s if self.y_sum is None else self.y_sum + s
        on = values > 0
        self.l0 += float(on.sum())
        if self.fire is None:
            self.fire = torch.zeros(self.d_sae, dtype=torch.int64)
        self.fire.index_add_(0, indices[on].long().cpu(), torch.ones(int(on.sum()), dtype=torch.int64))

    @property
    def total_variance(self) -> float:
        """sum ||y - mean y||^2 = sum ||y||^2 - n ||mean y||^2 (float64)."""
        return self.y_sq - float(self.y_sum.pow(2).sum()) / self.n if self.n else 0.0


def _down(ce: dict[str, float], clean: float, n_ce: int, n_kl: int) -> dict[str, float]:
    """SAELens' CE/KL metrics from summed per-token values (sae_lens evals.py
    get_downstream_reconstruction_metrics)."""
    ce_clean, ce_with, ce_abl = clean / n_ce, ce["with"] / n_ce, ce["abl"] / n_ce
    kl_with, kl_abl = ce["kl_with"] / n_kl, ce["kl_abl"] / n_kl
    return {
        "ce_loss_without_sae": ce_clean, "ce_loss_with_sae": ce_with, "ce_loss_with_ablation": ce_abl,
        "ce_loss_score": (ce_abl - ce_with) / (ce_abl - ce_clean) if ce_abl != ce_clean else float("nan"),
        "kl_div_with_sae": kl_with, "kl_div_with_ablation": kl_abl,
        "kl_div_score": (kl_abl - kl_with) / kl_abl if kl_abl else float("nan"),
    }


def _sparsity(fire: Any, n: int) -> dict[str, float]:
    density = fire.double() / max(n, 1)
    return {"dead_fraction": float((density == 0).double().mean()),
            "dense_fraction": float((density > DENSE_THRESHOLD).double().mean())}


# --- the check -----------------------------------------------------------------------------

@dataclass
class SetCheckResult:
    """What a transcoder-set check produced."""

    record: BenchmarkRecord
    """The set's record (eval.json in ``out``)."""
    layers: dict[int, BenchmarkRecord]
    """Each layer's record (layer_{i}/eval.json)."""
    out: Path
    cards: dict[int, Path] = field(default_factory=dict)
    tokens: Any = None
    """The TokenSet evaluated on."""

    @property
    def metrics(self) -> dict[str, float]:
        return {k: v for cat in self.record.eval_result_metrics.values() for k, v in cat.items()}

    def layer_metrics(self, layer: int) -> dict[str, float]:
        return {k: v for cat in self.layers[layer].eval_result_metrics.values() for k, v in cat.items()}

    logged: bool = False
    ok = True  # no gate for sets yet

    def summary(self) -> dict[str, Any]:
        return {"ok": True, "logged": self.logged, "set": self.record.sae.model_dump(exclude_none=True), "metrics": self.metrics,
                "layers": {str(i): self.layer_metrics(i) for i in self.layers}, "record": str(self.out / "eval.json"),
                "cards": {str(i): str(p) for i, p in self.cards.items()}}

    def describe(self) -> list[str]:
        ref = self.record.sae
        lines = [f"transcoder set {ref.name}" + (f"/{ref.version}" if ref.version else "") + f"  ({len(self.layers)} layers)",
                 f"  {'layer':<6}" + "".join(f"{m:>15}" for m in HEADLINE)]
        for i in self.layers:
            ms = self.layer_metrics(i)
            lines.append(f"  {i:<6}" + "".join(f"{ms.get(m, float('nan')):>15.5g}" for m in HEADLINE))
        ms = self.metrics
        lines.append(f"  {'set':<6}" + "".join(f"{ms.get(m, float('nan')):>15.5g}" for m in HEADLINE))
        lines.append(f"records: {self.out}/eval.json, {self.out}/layer_*/eval.json")
        if self.logged:
            lines.append(f"logged on {ref.name}/{ref.version}")
        return lines


def check_set(
    tset: Any,
    *,
    ref: str | None = None,
    n_tokens: int = 2048,
    context_size: int = 128,
    batch_size: int = 4,
    corpus: str = "pydoc",
    split: str = "eval",
    seed: int = 0,
    model_id: str | None = None,
    out_dir: Path | None = None,
    cards: bool = True,
    n_examples: int = 5,
    n_quantile_examples: int = 5,
    n_negative_examples: int = 5,
    threads: int | None = None,
) -> SetCheckResult:
    """Check the transcoder set ``tset`` (a TranscoderSet) on its language model (module
    docstring); writes the records (and cards) under ``out_dir`` (default
    SAEKIT_HOME/checks/<eval_id>). ``ref``: how the set was named (recorded)."""
    import torch

    from saekit.harness.cards import build_cards, select_latents
    from saekit.harness.dist import configure_threads
    from saekit.harness.latent_stats import LatentStats
    from saekit.harness.metrics import log_probs, per_token_ce, per_token_kl
    from saekit.harness.model import DEFAULT_MODEL_ID, load_lm
    from saekit.harness.datasets import token_set
    from saekit.harness.text import special_token_ids
    from saekit.schemas.card_files import write_cards
    from saekit.schemas.settings import current

    if out_dir is not None:  # a link planted in --out fails now, not after the passes
        safeio.check_writable(Path(out_dir) / "eval.json")
    t_start = time.perf_counter()
    phases: dict[str, float] = {}
    torch.manual_seed(seed)
    threads_before = torch.get_num_threads()
    configure_threads(threads)
    layers = list(tset.layers)
    mid = model_id
    if mid is None and tset.model_name not in (None, DEFAULT_MODEL_ID):
        mid = tset.model_name
    t = time.perf_counter()
    model, tok = load_lm(mid)
    info = model.saekit_info
    tokens = token_set(tok, n_tokens=n_tokens, context_size=context_size, dataset=corpus, split=split, seed=seed,
                       model_id=info.id)
    phases["load"] = time.perf_counter() - t
    special = torch.tensor(special_token_ids(tok), dtype=torch.long)
    mask_all = ~torch.isin(tokens.tokens, special)
    sums = {i: _Layer(tset[i].d_sae) for i in layers}
    set_ce = {"with": 0.0, "abl": 0.0, "kl_with": 0.0, "kl_abl": 0.0}
    clean_ce, n_ce, n_kl = 0.0, 0, 0
    ctx = tokens.context_size
    n_rows = tokens.tokens.shape[0]
    stats = {i: LatentStats.empty(tset[i].d_sae, k=n_examples, ctx=ctx, negatives=4 * n_negative_examples,
                                  n_rows=n_rows, seed=seed) for i in layers} if cards else {}

    def ce_kl(toks: Any, mask: Any, lp_clean: Any, logits: Any) -> tuple[float, float]:
        lp = log_probs(logits)
        return (float(per_token_ce(None, toks, logp=lp)[mask[:, :-1]].double().sum()),
                float(per_token_kl(lp_clean, lp)[mask].double().sum()))

    t = time.perf_counter()
    n_batches = -(-n_rows // batch_size)
    try:
        with torch.inference_mode(), Progress("transcoder set check batches", total=n_batches) as bar:
            for b in range(n_batches):
                r0 = b * batch_size
                toks, mask = tokens.tokens[r0 : r0 + batch_size], mask_all[r0 : r0 + batch_size]
                fmask = mask.reshape(-1)

                def clean(layer: int, x: Any, y: Any, r0: int = r0, fmask: Any = fmask) -> None:
                    tc = tset[layer]
                    xf, yf = x.reshape(-1, tc.d_in), y.reshape(-1, tc.d_out)
                    code = tc.encode(xf)
                    y_hat = tc.decode(code) + tc.skip(xf)
                    vals = code.values * fmask[:, None]
                    sums[layer].add(yf[fmask], y_hat[fmask], vals[fmask], code.indices[fmask])
                    if cards:
                        stats[layer].update(vals, code.indices, row0=r0, ctx=ctx, mask=fmask)

                def predict(layer: int, x: Any, y: Any, mask: Any = mask) -> Any:
                    return torch.where(mask[..., None], tset[layer](x).to(y.dtype), y)

                with replaced(model, tset, layers, clean):
                    lp_clean = log_probs(model(toks).logits)
                clean_ce += float(per_token_ce(None, toks, logp=lp_clean)[mask[:, :-1]].double().sum())
                n_ce += int(mask[:, :-1].sum())
                n_kl += int(mask.sum())
                zero = lambda _l, _x, y: torch.zeros_like(y)  # noqa: E731
                for layer in layers:
                    for key, fn in (("with", predict), ("abl", zero)):
                        with replaced(model, tset, [layer], fn):
                            c, k = ce_kl(toks, mask, lp_clean, model(toks).logits)
                        sums[layer].ce[key] += c
                        sums[layer].ce["kl_" + key] += k
                for key, fn in (("with", predict), ("abl", zero)):
                    with replaced(model, tset, layers, fn):
                        c, k = ce_kl(toks, mask, lp_clean, model(toks).logits)
                    set_ce[key] += c
                    set_ce["kl_" + key] += k
                bar.update()
        phases["eval"] = time.perf_counter() - t

        eval_id = uuid.uuid4().hex
        out = Path(out_dir) if out_dir is not None else current().home / "checks" / eval_id
        set_ref = getattr(tset, "ref", None) or SAERef(name=Path(ref).name if ref else "transcoder-set")
        layer_metrics: dict[int, dict[str, float]] = {}
        for i in layers:
            s = sums[i]
            fvu = s.err / s.total_variance if s.total_variance > 0 else float("nan")
            layer_metrics[i] = {"fvu": fvu, "l0": s.l0 / max(s.n, 1), **_sparsity(s.fire, s.n),
                                **_down(s.ce, clean_ce, n_ce, n_kl), "total_tokens_evaluated": s.n}
        err, var = sum(s.err for s in sums.values()), sum(s.total_variance for s in sums.values())
        fire_all = torch.cat([sums[i].fire for i in layers])
        n_tok = sums[layers[0]].n
        set_metrics = {
            "fvu": err / var if var > 0 else float("nan"),
            "fvu_mean_over_layers": sum(m["fvu"] for m in layer_metrics.values()) / len(layers),
            "l0": sum(m["l0"] for m in layer_metrics.values()) / len(layers),
            **_sparsity(fire_all, n_tok), **_down(set_ce, clean_ce, n_ce, n_kl), "total_tokens_evaluated": n_tok,
        }

        card_paths: dict[int, Path] = {}
        if cards:
            t = time.perf_counter()
            for i in layers:
                tc = tset[i]
                lref = tc.ref or SAERef(name=f"{set_ref.name}/layer_{i}", d_sae=tc.d_sae)
                card_list = build_cards(
                    tc, model, tok, stats[i], tokens, sae_ref=lref, hook_name=f"{tc.hook_in} (input)",
                    latents=select_latents(stats[i].fire_count, "all"), batch_size=batch_size,
                    attribution=False, n_examples=n_examples,
                    n_quantile_examples=n_quantile_examples, n_negative_examples=n_negative_examples)
                card_paths[i] = write_cards(card_list, _fresh(out / f"layer_{i}" / "feature_cards.jsonl"))
            phases["cards"] = time.perf_counter() - t

        data = DataInfo(source=tokens.source, fingerprint=tokens.fingerprint, n_tokens=tokens.n_tokens,
                        context_size=tokens.context_size, dataset_id=tokens.dataset_id or tokens.corpus,
                        revision=tokens.revision, split=tokens.dataset_split, column=tokens.column)
        config = CheckConfig(
            sae_ref=ref, model_id=info.spec, hook_name=None, **tokens.config(), batch_size=batch_size,
            exclude_special_tokens=True, downstream=True, device="cpu", dtype=str(next(iter(tset.values())).dtype
                                                                                 ).removeprefix("torch."),
            torch_threads=torch.get_num_threads(),
            cards=CardsConfig(enabled=cards, latents="all", downstream_latents=0, n_examples=n_examples,
                              n_quantile_examples=n_quantile_examples, n_negative_examples=n_negative_examples,
                              n_cards=sum(tset[i].d_sae for i in card_paths)),
        )
        common = dict(config=config, eval_id=eval_id, info=info, data=data, phases=phases, t_start=t_start,
                      n_batches=n_batches)
        layer_records = {}
        for i in layers:
            tc = tset[i]
            lref = tc.ref or SAERef(name=f"{set_ref.name}/layer_{i}", d_sae=tc.d_sae)
            details = [{"index": j, "feature_density": round(float(f) / max(sums[i].n, 1), 10)}
                       for j, f in enumerate(sums[i].fire.tolist())]
            layer_records[i] = _record(lref, layer_metrics[i], details, hook=tc.hook_in,
                                       cfg=tc.cfg.to_saelens_dict(), **common,
                                       unstructured={"layer": i, "hook_in": tc.hook_in, "hook_out": tc.hook_out})
            _write(out / f"layer_{i}" / "eval.json", layer_records[i])
        set_record = _record(set_ref, set_metrics, [], hook=None, cfg=None, **common,
                             unstructured={"layers": layers, "per_layer": {str(i): layer_metrics[i] for i in layers}})
        _write(out / "eval.json", set_record)
    finally:
        if torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)
    return SetCheckResult(record=set_record, layers=layer_records, out=out, cards=card_paths, tokens=tokens)


def _fresh(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    safeio.check_writable(path)
    return path


def _write(path: Path, record: BenchmarkRecord) -> None:
    safeio.write_bytes(_fresh(path), (record.to_json(indent=2) + "\n").encode("utf-8"))


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def _record(sae_ref: SAERef, metrics: dict[str, float], details: list[dict[str, Any]], *, hook: str | None,
            cfg: dict[str, Any] | None, config: CheckConfig, eval_id: str, info: Any, data: DataInfo,
            phases: dict[str, float], t_start: float, n_batches: int, unstructured: Any) -> BenchmarkRecord:
    """A SAEBench-style record (BaseEvalOutput's fields; metrics by category, NaN as -1 as
    SAEBench writes it) of one layer or of the set."""
    from saekit.harness.metrics import SAEBENCH_VERSION, SAELENS_VERSION
    from saekit.harness.record import hardware, package_versions

    by_cat = {cat: {n: (float(metrics[n]) if _finite(float(metrics[n])) else -1.0) for n in names if n in metrics}
              for cat, names in CATEGORIES.items()}
    by_cat = {c: m for c, m in by_cat.items() if m}
    if "token_stats" in by_cat:
        by_cat["token_stats"] = {k: int(v) for k, v in by_cat["token_stats"].items()}
    used = {n for m in by_cat.values() for n in m}
    eval_s = phases.get("eval")
    return BenchmarkRecord(
        eval_type_id=EVAL_TYPE,
        eval_config={"model_name": info.id, "batch_size_prompts": config.batch_size, "n_eval_batches": n_batches,
                     "dataset": data.source, "context_size": data.context_size, "compute_kl": True,
                     "compute_ce_loss": True, "exclude_special_tokens_from_reconstruction": True},
        check_config=config.model_copy(update={"hook_name": hook}),
        eval_id=eval_id,
        datetime_epoch_millis=int(time.time() * 1000),
        eval_result_metrics=by_cat,
        eval_result_details=details,
        eval_result_unstructured=unstructured,
        sae_bench_commit_hash=f"none: saekit {__version__}, sae-bench {SAEBENCH_VERSION} definitions",
        sae_lens_version=SAELENS_VERSION,
        sae_cfg_dict=cfg,
        sae=sae_ref,
        metric_definitions={k: DEFINITIONS[k] for k in sorted(used) if k in DEFINITIONS},
        seeds={"data": config.seed, "torch": config.seed},
        model=info.model_info(hook).model_copy(),
        data=data,
        packages=package_versions(),
        hardware=hardware("cpu"),
        timings=Timings(total_s=time.perf_counter() - t_start,
                        tokens_per_s=data.n_tokens / eval_s if eval_s else None, phases=dict(phases)),
    )


DEFAULT_SET_TOKENS = 2048  # the set check runs 2 * layers + 2 passes per batch
_SET_OPTIONS = ("n_tokens", "seed", "out_dir", "cards", "context_size", "batch_size", "corpus", "split", "model_id",
                "threads", "n_examples", "n_quantile_examples", "n_negative_examples")


def check_ref(ref: Any, load: Callable[[Any], Any], sae_check: Callable[..., Any], **kwargs: Any) -> Any:
    """``saekit check REF``: REF is loaded once; a transcoder set goes to ``check_set`` (and is
    logged on its registry version with ``log``), anything else to ``sae_check`` (the SAE
    check, saekit.harness.check.check) with the loaded object. Options the set check does
    not have (a gate policy, annotations, another device or dtype, a hook) are refused for a
    set with one line."""
    from saekit.kernels.transcoder import TranscoderSet

    n_tokens = kwargs.pop("n_tokens", None)
    if ref is None or kwargs.get("from_record") is not None or kwargs.get("activations") is not None:
        def sae_only(r: Any) -> Any:
            obj = load(r)
            if isinstance(obj, TranscoderSet):
                raise InputError("--from-record and --activations check SAEs; check a transcoder set with "
                                 "saekit check REF", where=str(r))
            return obj

        return sae_check(ref, loader=sae_only, **kwargs, **({"n_tokens": n_tokens} if n_tokens else {}))
    obj = load(ref)
    if not isinstance(obj, TranscoderSet):
        first = [obj]
        return sae_check(ref, loader=lambda r: first.pop() if first else load(r), **kwargs,
                         **({"n_tokens": n_tokens} if n_tokens else {}))
    from saekit.schemas.benchmark import DEFAULT_ABLATION_WINDOWS, DEFAULT_CARDS, DEFAULT_DOWNSTREAM

    refused = {"policy": None, "annotations": None, "device": "cpu", "dtype": None, "hook_name": None,
               "downstream_latents": DEFAULT_DOWNSTREAM, "ablation_windows": DEFAULT_ABLATION_WINDOWS,
               "cards_latents": DEFAULT_CARDS, "downstream": True}
    for key, default in refused.items():
        if key in kwargs and kwargs[key] is not None and str(kwargs[key]) != str(default):
            raise InputError(f"{key.replace('_', '-')} is not supported for a transcoder set check", where=str(ref))
    log = kwargs.get("log", True)
    opts = {k: v for k, v in kwargs.items() if k in _SET_OPTIONS and v is not None}
    res = check_set(obj, ref=str(ref), n_tokens=n_tokens or DEFAULT_SET_TOKENS, **opts)
    sref = obj.ref
    if log and sref is not None and sref.version is not None:
        from saekit.registry import store
        from saekit.registry import tags as T

        metrics = {k: v for k, v in res.metrics.items() if _finite(v)}
        tags = {T.EVAL_ID: res.record.eval_id}
        tags.update({T.metric(k): f"{metrics[k]:.6g}" for k in HEADLINE if k in metrics})
        say(f"logging the check on {sref.name}/{sref.version}")
        store.log_check(sref.name, int(sref.version), metrics=metrics, files=[res.out / "eval.json"], tags=tags,
                        data=res.record.data)
        res.logged = True
    return res
