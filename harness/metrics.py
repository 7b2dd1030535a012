"""SAELens' metrics of an SAE on a hooked language model, computed in one pass per batch.

Definitions follow sae-lens 6.54.12 ``sae_lens/evals.py`` (cited per metric in DEFINITIONS):
special tokens (BOS, EOS, PAD, ...) are left out of every metric, as ``run_evals`` does
with ``exclude_special_tokens=True``; the reconstruction is spliced in only at the other
positions (``get_recons_loss``' ``standard_replacement_hook``), zero ablation replaces every
position (``standard_zero_ablate_hook``). Batch statistics are sums, reduced by addition.
Encoding and per-latent statistics go through saekit.kernels.dispatch (SAE.encode/decode/
eval_batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saekit.harness.activations import captured, spliced
from saekit.harness.env import Progress
from saekit.harness.text import TokenSet, special_token_ids
from saekit.schemas import MetricDefinition

_EVALS = "sae_lens 6.54.12 sae_lens/evals.py"
DENSE_THRESHOLD = 0.1

DEFINITIONS: dict[str, MetricDefinition] = {
    "explained_variance": MetricDefinition(
        definition="1 - E[||x - x_hat||^2] / (E[||x||^2] - ||E[x]||^2), over all non-special tokens",
        direction="higher",
        source=f"{_EVALS} ExplainedVarianceCalculator",
    ),
    "mse": MetricDefinition(
        definition="mean over tokens of sum over dims of (x - x_hat)^2",
        direction="lower",
        source=f"{_EVALS} get_sparsity_and_variance_metrics (metric_dict['mse'])",
    ),
    "cossim": MetricDefinition(
        definition="mean over tokens of cos(x, x_hat)",
        direction="higher",
        source=f"{_EVALS} get_sparsity_and_variance_metrics (metric_dict['cossim'])",
    ),
    "l0": MetricDefinition(
        definition="mean over tokens of the number of non-zero latents",
        direction="none",
        source=f"{_EVALS} get_sparsity_and_variance_metrics (metric_dict['l0'])",
    ),
    "l1": MetricDefinition(
        definition="mean over tokens of sum of |latent activations|",
        direction="none",
        source=f"{_EVALS} get_sparsity_and_variance_metrics (metric_dict['l1'])",
    ),
    "dead_fraction": MetricDefinition(
        definition="fraction of latents with feature_density == 0 on the evaluated tokens",
        direction="lower",
        source=f"saekit; feature_density as in {_EVALS} (total_feature_acts / total_tokens)",
    ),
    "dense_fraction": MetricDefinition(
        definition=f"fraction of latents with feature_density > {DENSE_THRESHOLD} (fire on >10% of tokens)",
        direction="lower",
        source=f"saekit; feature_density as in {_EVALS}",
    ),
    "ce_loss_without_sae": MetricDefinition(
        definition="mean next-token cross-entropy of the unmodified model, over positions whose input token is not special",
        direction="none",
        source=f"{_EVALS} get_recons_loss / get_downstream_reconstruction_metrics",
    ),
    "ce_loss_with_sae": MetricDefinition(
        definition="mean next-token cross-entropy with the SAE reconstruction spliced in at the hook (non-special positions)",
        direction="lower",
        source=f"{_EVALS} get_recons_loss (standard_replacement_hook)",
    ),
    "ce_loss_with_ablation": MetricDefinition(
        definition="mean next-token cross-entropy with the hook's output zeroed at every position",
        direction="none",
        source=f"{_EVALS} get_recons_loss (standard_zero_ablate_hook)",
    ),
    "ce_loss_score": MetricDefinition(
        definition="(ce_loss_with_ablation - ce_loss_with_sae) / (ce_loss_with_ablation - ce_loss_without_sae)",
        direction="higher",
        source=f"{_EVALS} get_downstream_reconstruction_metrics",
    ),
    "kl_div_with_sae": MetricDefinition(
        definition="mean over non-special positions of KL(p_model || p_with_sae) of the next-token distributions",
        direction="lower",
        source=f"{_EVALS} _kl",
    ),
    "kl_div_with_ablation": MetricDefinition(
        definition="mean over non-special positions of KL(p_model || p_zero_ablation)",
        direction="none",
        source=f"{_EVALS} _kl",
    ),
    "kl_div_score": MetricDefinition(
        definition="(kl_div_with_ablation - kl_div_with_sae) / kl_div_with_ablation",
        direction="higher",
        source=f"{_EVALS} get_downstream_reconstruction_metrics",
    ),
}

CATEGORIES: dict[str, list[str]] = {
    "model_behavior_preservation": ["kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"],
    "model_performance_preservation": ["ce_loss_score", "ce_loss_with_ablation", "ce_loss_with_sae", "ce_loss_without_sae"],
    "reconstruction_quality": ["explained_variance", "mse", "cossim"],
    "sparsity": ["l0", "l1", "dead_fraction", "dense_fraction"],
}
HEADLINE = ["explained_variance", "mse", "l0", "dead_fraction", "ce_loss_score", "kl_div_score"]


@dataclass
class EvalRun:
    """Everything one pass over a token set produced (metrics and what the cards need)."""

    metrics: dict[str, float]
    stats: Any  # saekit.kernels.reference.EvalStats over non-special tokens
    mask: Any  # [n_rows, ctx] bool, True where the token is not special
    values: Any  # [n_rows * ctx, k] sparse code values (0 at special tokens)
    indices: Any  # [n_rows * ctx, k] sparse code indices
    ce_with_sae: Any | None = None  # [n_rows, ctx - 1] per-token loss with the SAE spliced in
    counts: dict[str, int] = field(default_factory=dict)

    def by_category(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for cat, names in CATEGORIES.items():
            got = {n: self.metrics[n] for n in names if n in self.metrics}
            if got:
                out[cat] = got
        return out


def log_probs(logits: Any) -> Any:
    """float32 log-softmax over the vocabulary (as sae-lens computes it)."""
    import torch

    return torch.log_softmax(logits.float(), dim=-1)


def per_token_ce(logits: Any, tokens: Any, *, logp: Any = None) -> Any:
    """-log p(token[t+1] | ..t) per position [b, ctx-1] (transformer_lens lm_cross_entropy_loss)."""
    logp = log_probs(logits) if logp is None else logp
    return -logp[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]


def per_token_kl(lp_clean: Any, lp_new: Any) -> Any:
    """KL(p_clean || p_new) per position [b, ctx] from log-probs (sae_lens evals._kl)."""
    return (lp_clean.exp() * (lp_clean - lp_new)).sum(-1)


def _to_cpu(stats: Any) -> Any:
    from dataclasses import fields, replace

    return replace(stats, **{f.name: getattr(stats, f.name).cpu() for f in fields(stats) if f.name != "n_tokens"})


def metrics_from_stats(stats: Any) -> dict[str, float]:
    """Reconstruction and sparsity metrics from summed EvalStats."""
    n = max(stats.n_tokens, 1)
    mse = float(stats.sse) / n
    total_var = float(stats.sum_x2.sum()) / n - float(((stats.sum_x / n) ** 2).sum())
    density = stats.fire_count.double() / n
    return {
        "explained_variance": (1.0 if mse < 1e-10 else 0.0) if total_var < 1e-10 else 1.0 - mse / total_var,
        "mse": mse,
        "cossim": float(stats.cos_sum) / n,
        "l0": float(stats.l0_sum) / n,
        "l1": float(stats.l1_sum) / n,
        "dead_fraction": float((density == 0).double().mean()),
        "dense_fraction": float((density > DENSE_THRESHOLD).double().mean()),
    }


def evaluate(
    sae: Any,
    model: Any,
    tokenizer: Any,
    tokens: TokenSet,
    *,
    hook_name: str,
    batch_size: int = 4,
    downstream: bool = True,
    batches: list[int] | None = None,
    keep_codes: bool = True,
) -> EvalRun:
    """SAELens' metrics of ``sae`` at ``hook_name`` over ``tokens`` (see DEFINITIONS).

    With ``downstream`` the model runs three times per batch (clean, reconstruction
    spliced in, zero ablation) for the CE and KL metrics; without, it stops at the hook.
    ``batches``: the batch indices to run (a torch.distributed rank's share, see
    saekit.harness.dist); the sums of all ranks are then added in batch order, so N ranks
    give the same metrics as one. ``keep_codes`` False keeps memory flat in the token count
    (EvalRun.values/indices/ce_with_sae are then None).
    """
    import torch

    from saekit.harness.activations import run_to_hook

    special = torch.tensor(special_token_ids(tokenizer), dtype=torch.long)
    toks_all = tokens.tokens
    mask_all = ~torch.isin(toks_all, special)
    stats = None
    values, indices, ce_sae_rows = [], [], []
    sums = {"ce_without": 0.0, "ce_with": 0.0, "ce_abl": 0.0, "kl_with": 0.0, "kl_abl": 0.0}
    n_ce = n_kl = 0
    d_in = sae.cfg.d_in
    dev = next(model.parameters()).device

    from saekit.harness.dist import rank_world

    n_batches = -(-toks_all.shape[0] // batch_size)
    todo = list(range(n_batches)) if batches is None else list(batches)
    distributed = rank_world()[1] > 1
    parts: list[tuple[int, Any, dict[str, float], int, int]] = []  # per batch, when distributed
    with torch.inference_mode(), Progress("eval batches", total=len(todo)) as bar:
        for b in todo:
            i = b * batch_size
            part: dict[str, float] = {}
            before = (n_ce, n_kl)
            toks = toks_all[i : i + batch_size].to(dev)
            mask = mask_all[i : i + batch_size].to(dev)
            if downstream:
                with captured(model, hook_name) as box:
                    clean_logits = model(toks).logits
                acts = box["acts"]
            else:
                acts = run_to_hook(model, toks, hook_name)
            flat = acts.reshape(-1, d_in)
            fmask = mask.reshape(-1)
            batch_stats = sae.eval_batch(flat[fmask])
            stats = batch_stats if stats is None else stats + batch_stats
            code = sae.encode(flat)
            if keep_codes:
                keep = fmask[:, None].to(code.values.dtype)
                values.append((code.values * keep).cpu())
                indices.append(code.indices.cpu())
            if downstream:
                x_hat = sae.decode(code).reshape(acts.shape).to(acts.dtype)
                recon = torch.where(mask[..., None], x_hat, acts)
                with spliced(model, hook_name, lambda a, r=recon: r):
                    sae_logits = model(toks).logits
                with spliced(model, hook_name, torch.zeros_like):
                    abl_logits = model(toks).logits
                m_ce = mask[:, :-1]  # CE at t predicts token t+1; masked by the input token t
                lp_clean, lp_sae, lp_abl = log_probs(clean_logits), log_probs(sae_logits), log_probs(abl_logits)
                del clean_logits, sae_logits, abl_logits
                ce_clean = per_token_ce(None, toks, logp=lp_clean)
                ce_sae = per_token_ce(None, toks, logp=lp_sae)
                ce_abl = per_token_ce(None, toks, logp=lp_abl)
                # per-token values in float32 (as sae-lens), sums over tokens in float64
                part = {
                    "ce_without": float(ce_clean[m_ce].double().sum()),
                    "ce_with": float(ce_sae[m_ce].double().sum()),
                    "ce_abl": float(ce_abl[m_ce].double().sum()),
                    "kl_with": float(per_token_kl(lp_clean, lp_sae)[mask].double().sum()),
                    "kl_abl": float(per_token_kl(lp_clean, lp_abl)[mask].double().sum()),
                }
                for k, v in part.items():
                    sums[k] += v
                n_ce += int(m_ce.sum())
                n_kl += int(mask.sum())
                if keep_codes:
                    ce_sae_rows.append(ce_sae.float().cpu())
            if distributed:
                parts.append((b, _light(_to_cpu(batch_stats)), part, n_ce - before[0], n_kl - before[1]))
            bar.update()

    if stats is None:  # a rank with no batches: zero sums of the right shapes
        stats = sae.eval_batch(torch.zeros(0, d_in, device=dev))
    stats = _to_cpu(stats)
    if distributed:
        stats, sums, n_ce, n_kl = _reduce_in_batch_order(parts, stats, sums)
    metrics = metrics_from_stats(stats)
    if downstream:
        ce_without, ce_with, ce_abl = (sums[k] / max(n_ce, 1) for k in ("ce_without", "ce_with", "ce_abl"))
        kl_with, kl_abl = sums["kl_with"] / max(n_kl, 1), sums["kl_abl"] / max(n_kl, 1)
        metrics.update(
            ce_loss_without_sae=ce_without,
            ce_loss_with_sae=ce_with,
            ce_loss_with_ablation=ce_abl,
            ce_loss_score=(ce_abl - ce_with) / (ce_abl - ce_without) if ce_abl != ce_without else float("nan"),
            kl_div_with_sae=kl_with,
            kl_div_with_ablation=kl_abl,
            kl_div_score=(kl_abl - kl_with) / kl_abl if kl_abl else float("nan"),
        )
    return EvalRun(
        metrics=metrics,
        stats=stats,
        mask=mask_all,
        values=torch.cat(values) if keep_codes else None,
        indices=torch.cat(indices) if keep_codes else None,
        ce_with_sae=torch.cat(ce_sae_rows) if downstream and keep_codes else None,
        counts={"tokens": int(mask_all.sum()), "ce_positions": n_ce, "kl_positions": n_kl},
    )


def _light(stats: Any) -> Any:
    """A batch's EvalStats without the per-latent vectors (reduced separately, exactly)."""
    from dataclasses import replace

    import torch

    return replace(stats, fire_count=torch.zeros(0, dtype=torch.int64), act_sum=torch.zeros(0, dtype=torch.float64),
                   act_max=torch.zeros(0))


def _reduce_in_batch_order(parts: list, local: Any, local_sums: dict[str, float]) -> tuple[Any, dict[str, float], int, int]:
    """Every rank's per-batch sums added in batch order, as one process adds them; the
    per-latent counts and maxima all-reduce (exact in any order)."""
    from dataclasses import replace

    import torch.distributed as dist

    from saekit.harness.dist import all_gather_objects

    got = sorted((p for ps in all_gather_objects(parts) for p in ps), key=lambda p: p[0])
    stats, n_ce, n_kl = None, 0, 0
    sums = dict.fromkeys(local_sums, 0.0)
    for _, st, s, nc, nk in got:
        stats = st if stats is None else stats + st
        for k, v in s.items():
            sums[k] += v
        n_ce, n_kl = n_ce + nc, n_kl + nk
    fire, act_sum, act_max = local.fire_count.clone(), local.act_sum.clone(), local.act_max.clone()
    dist.all_reduce(fire)
    dist.all_reduce(act_sum)  # float: order-dependent in the last bits; no metric reads it
    dist.all_reduce(act_max, op=dist.ReduceOp.MAX)
    return replace(stats, fire_count=fire, act_sum=act_sum, act_max=act_max), sums, n_ce, n_kl


def evaluate_activations(sae: Any, source: Any, *, exclude_token_ids: list[int] | None = None) -> tuple[dict[str, float], Any]:
    """Reconstruction and sparsity metrics over stored activations (no model: no CE/KL).

    Tokens whose id is in ``exclude_token_ids`` (default: what the shards' metadata names)
    are left out, as in ``evaluate``. Returns (metrics, summed EvalStats).
    """
    import torch

    exclude = exclude_token_ids if exclude_token_ids is not None else getattr(source, "exclude_token_ids", [])
    ex = torch.tensor(exclude, dtype=torch.long)
    stats = None
    for toks, acts in source:
        flat = acts.reshape(-1, sae.cfg.d_in).float()
        if toks is not None and len(exclude):
            flat = flat[~torch.isin(toks.reshape(-1), ex)]
        s = sae.eval_batch(flat)
        stats = s if stats is None else stats + s
    stats = _to_cpu(stats)
    return metrics_from_stats(stats), stats
