"""The core metrics of an SAE on a hooked language model, computed in one pass per batch,
under SAEBench's names and definitions and SAELens' (where the two differ, both are kept).

Definitions come from two sources, cited per metric in DEFINITIONS:
- sae-lens 6.54.12 ``sae_lens/evals.py`` (``run_evals``); special tokens (BOS, EOS, PAD, ...)
  are left out of every metric, as ``run_evals`` does with ``exclude_special_tokens=True``;
  the reconstruction is spliced in only at the other positions (``get_recons_loss``'
  ``standard_replacement_hook``), zero ablation replaces every position
  (``standard_zero_ablate_hook``).
- sae-bench 0.6.0 ``sae_bench/evals/core/main.py`` (the "core" eval SAEBench's
  ``CoreEvalOutput`` holds). Where SAEBench's definition differs from SAELens', the metric
  under SAEBench's name is SAEBench's and the SAELens one carries a ``_saelens`` suffix
  (``mse``/``mse_saelens``, ``explained_variance``/``explained_variance_saelens``,
  ``l1``/``l1_saelens``); docs/metrics.md lists them.
Batch statistics are sums, reduced by addition; SAEBench's batch-weighted metrics keep one
number per batch. Encoding and per-latent statistics go through saekit.kernels.dispatch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from saekit.harness.activations import captured, spliced
from saekit.harness.text import TokenSet, special_token_ids
from saekit.schemas import MetricDefinition
from saekit.schemas.console import Progress

SAELENS_VERSION = "6.54.12"
SAEBENCH_VERSION = "0.6.0"
_EVALS = f"sae_lens {SAELENS_VERSION} sae_lens/evals.py"
_CORE = f"sae-bench {SAEBENCH_VERSION} sae_bench/evals/core/main.py"
DENSE_THRESHOLD = 0.1


def _d(definition: str, direction: str, source: str) -> MetricDefinition:
    return MetricDefinition(definition=definition, direction=direction, source=source)


DEFINITIONS: dict[str, MetricDefinition] = {
    # --- reconstruction_quality
    "explained_variance": _d(
        "SAEBench: 1 - R / (A - m^2), A = mean over batches of mean_t ||x_t||^2, m = A / d_in "
        "(the mean of the per-batch, per-dim mean of x^2), R = mean over batches of mean_t ||x_t - x_hat_t||^2",
        "higher", f"{_CORE} get_sparsity_and_variance_metrics (lines 580-591, 614-627)"),
    "explained_variance_saelens": _d(
        "SAELens: 1 - E[||x - x_hat||^2] / (E[||x||^2] - ||E[x]||^2), over all non-special tokens",
        "higher", f"{_EVALS} ExplainedVarianceCalculator"),
    "explained_variance_legacy": _d(
        "mean over tokens of 1 - ||x_t - x_hat_t||^2 / ||x_t - mean_batch(x)||^2 (SAELens and SAEBench alike)",
        "higher", f"{_EVALS} get_sparsity_and_variance_metrics; {_CORE} line 572-578"),
    "mse": _d(
        "SAEBench: mean over tokens of ||x_t - x_hat_t||^2 / n_batch (n_batch: non-special tokens of the token's batch)",
        "lower", f"{_CORE} get_sparsity_and_variance_metrics (line 570: resid_sum_of_squares / flattened_mask.sum())"),
    "mse_saelens": _d(
        "SAELens: mean over tokens of sum over dims of (x - x_hat)^2",
        "lower", f"{_EVALS} get_sparsity_and_variance_metrics (metric_dict['mse'])"),
    "cossim": _d("mean over tokens of (x / ||x||) . (x_hat / ||x_hat||) (SAELens and SAEBench alike)",
                 "higher", f"{_EVALS} get_sparsity_and_variance_metrics; {_CORE} line 592-598"),
    # --- shrinkage (SAELens and SAEBench alike)
    "l2_norm_in": _d("mean over tokens of ||x||", "none", f"{_EVALS} get_sparsity_and_variance_metrics"),
    "l2_norm_out": _d("mean over tokens of ||x_hat||", "none", f"{_EVALS} get_sparsity_and_variance_metrics"),
    "l2_ratio": _d("mean over tokens of ||x_hat|| / ||x|| (||x|| < 1e-4 counted as 1)", "none",
                   f"{_EVALS} get_sparsity_and_variance_metrics"),
    "relative_reconstruction_bias": _d(
        "mean over batches of mean_t ||x_hat_t||^2 / mean_t (x_t . x_hat_t) (arXiv 2404.16014 eq. 10)", "none",
        f"{_EVALS} get_sparsity_and_variance_metrics"),
    # --- sparsity
    "l0": _d("mean over tokens of the number of non-zero latents", "none",
             f"{_EVALS} get_sparsity_and_variance_metrics (metric_dict['l0']); {_CORE} line 561"),
    "l1": _d("SAEBench: mean over tokens of the sum of latent activations (no abs)", "none",
             f"{_CORE} get_sparsity_and_variance_metrics (line 562)"),
    "l1_saelens": _d("SAELens: mean over tokens of the sum of |latent activations|", "none",
                     f"{_EVALS} get_sparsity_and_variance_metrics (metric_dict['l1'])"),
    "dead_fraction": _d("fraction of latents with feature_density == 0 on the evaluated tokens", "lower",
                        f"saekit; feature_density as in {_EVALS} (total_feature_acts / total_tokens)"),
    "dense_fraction": _d(f"fraction of latents with feature_density > {DENSE_THRESHOLD} (fire on >10% of tokens)",
                         "lower", f"saekit; feature_density as in {_EVALS}"),
    # --- model_performance_preservation (SAELens and SAEBench alike)
    "ce_loss_without_sae": _d(
        "mean next-token cross-entropy of the unmodified model, over positions whose input token is not special",
        "none", f"{_EVALS} get_recons_loss / get_downstream_reconstruction_metrics"),
    "ce_loss_with_sae": _d(
        "mean next-token cross-entropy with the SAE reconstruction spliced in at the hook (non-special positions)",
        "lower", f"{_EVALS} get_recons_loss (standard_replacement_hook)"),
    "ce_loss_with_ablation": _d("mean next-token cross-entropy with the hook's output zeroed at every position",
                                "none", f"{_EVALS} get_recons_loss (standard_zero_ablate_hook)"),
    "ce_loss_score": _d(
        "(ce_loss_with_ablation - ce_loss_with_sae) / (ce_loss_with_ablation - ce_loss_without_sae)",
        "higher", f"{_EVALS} get_downstream_reconstruction_metrics"),
    # --- model_behavior_preservation
    "kl_div_with_sae": _d(
        "mean over non-special positions of KL(p_model || p_with_sae) of the next-token distributions "
        "(SAELens: kl_div of log_softmax; SAEBench: p * (log p - log q) of softmax; equal up to rounding)",
        "lower", f"{_EVALS} _kl; {_CORE} get_recons_loss.kl"),
    "kl_div_with_ablation": _d("mean over non-special positions of KL(p_model || p_zero_ablation)", "none",
                               f"{_EVALS} _kl; {_CORE} get_recons_loss.kl"),
    "kl_div_score": _d("(kl_div_with_ablation - kl_div_with_sae) / kl_div_with_ablation", "higher",
                       f"{_EVALS} get_downstream_reconstruction_metrics"),
    # --- token_stats
    "total_tokens_eval_reconstruction": _d(
        "context_size * n_eval_reconstruction_batches * batch_size_prompts (SAELens and SAEBench: counts "
        "special tokens and a partial last batch as full)", "none", f"{_EVALS} run_evals; {_CORE} run_evals"),
    "total_tokens_eval_sparsity_variance": _d(
        "context_size * n_eval_sparsity_variance_batches * batch_size_prompts (as above)", "none",
        f"{_EVALS} run_evals; {_CORE} run_evals"),
    "total_tokens_evaluated": _d("non-special tokens the metrics were computed on (saekit)", "none", "saekit"),
    # --- misc_metrics (SAEBench calculate_misc_metrics)
    "frac_alive": _d("fraction of latents with feature_density > 0", "higher", f"{_CORE} calculate_misc_metrics"),
    "freq_over_1_percent": _d("fraction of latents with feature_density > 0.01", "lower",
                              f"{_CORE} calculate_misc_metrics"),
    "freq_over_10_percent": _d("fraction of latents with feature_density > 0.1", "lower",
                               f"{_CORE} calculate_misc_metrics"),
    "normalized_freq_over_1_percent": _d(
        "sum of the densities > 0.01 / sum of all densities (0 when no latent fires)", "lower",
        f"{_CORE} calculate_misc_metrics"),
    "normalized_freq_over_10_percent": _d(
        "sum of the densities > 0.1 / sum of all densities (0 when no latent fires)", "lower",
        f"{_CORE} calculate_misc_metrics"),
    "average_max_encoder_cosine_sim": _d(
        "mean over latents of the largest cosine of W_enc[:, i] with another latent's encoder column", "lower",
        f"{_CORE} calculate_misc_metrics / calculate_max_cosine_sim"),
    "average_max_decoder_cosine_sim": _d(
        "mean over latents of the largest cosine of W_dec[i] with another latent's decoder row", "lower",
        f"{_CORE} calculate_misc_metrics / calculate_max_cosine_sim"),
}

# SAEBench's CoreMetricCategories (sae_bench/evals/core/eval_output.py), plus saekit's and
# SAELens' own metrics beside SAEBench's in the same categories (distinct names).
CATEGORIES: dict[str, list[str]] = {
    "model_behavior_preservation": ["kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"],
    "model_performance_preservation": ["ce_loss_score", "ce_loss_with_ablation", "ce_loss_with_sae", "ce_loss_without_sae"],
    "reconstruction_quality": ["explained_variance", "explained_variance_legacy", "mse", "cossim",
                               "explained_variance_saelens", "mse_saelens"],
    "shrinkage": ["l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias"],
    "sparsity": ["l0", "l1", "l1_saelens", "dead_fraction", "dense_fraction"],
    "token_stats": ["total_tokens_eval_reconstruction", "total_tokens_eval_sparsity_variance", "total_tokens_evaluated"],
    "misc_metrics": ["freq_over_1_percent", "freq_over_10_percent", "normalized_freq_over_1_percent",
                     "normalized_freq_over_10_percent", "average_max_encoder_cosine_sim",
                     "average_max_decoder_cosine_sim", "frac_alive"],
}
# SAEBench's own metric names per category (what CoreEvalOutput requires)
SAEBENCH_METRICS: dict[str, list[str]] = {
    cat: [n for n in names if not n.endswith("_saelens") and n not in ("dead_fraction", "dense_fraction",
                                                                      "total_tokens_evaluated")]
    for cat, names in CATEGORIES.items()
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
    latents: dict[str, list[float]] = field(default_factory=dict)
    """Per-latent lists over every latent (SAEBench's CoreFeatureMetric fields but index)."""
    weights_s: float = 0.0
    """Seconds of the weight metrics (their max cosines grow with d_sae squared, not the tokens)."""

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


class BatchMetrics:
    """The per-token and per-batch sums SAEBench's and SAELens' batch-weighted metrics need,
    from each batch's non-special x, x_hat [n_b, d_in] and sparse code (see DEFINITIONS)."""

    def __init__(self, d_sae: int):
        self.d_sae = d_sae
        self.n = 0
        self.sums = {"mse_bench": 0.0, "ev_legacy": 0.0, "l2_in": 0.0, "l2_out": 0.0, "l2_ratio": 0.0}
        self.per_batch: dict[str, list[float]] = {"R": [], "A": [], "M": [], "rrb": []}
        self.prompts = None  # [d_sae] prompts (rows) on which each latent fired

    def add(self, x: Any, x_hat: Any, *, row_codes: Any = None) -> None:
        """x, x_hat [n_b, d_in] of one batch's non-special tokens; ``row_codes``: (values, indices)
        [rows, m] of each prompt's sparse code (0-valued entries ignored), for the prompt counts."""
        import torch

        if row_codes is not None:
            vals, idx = row_codes
            hit = torch.zeros(vals.shape[0], self.d_sae, dtype=torch.int32, device=vals.device)
            hit.scatter_add_(1, idx, (vals > 0).to(torch.int32))
            per = (hit > 0).sum(0).long().cpu()
            self.prompts = per if self.prompts is None else self.prompts + per
        n_b = x.shape[0]
        if n_b == 0:
            return
        x, x_hat = x.float(), x_hat.float()
        self.n += n_b
        rss = (x - x_hat).pow(2).sum(-1)  # per-token, fp32 as both projects
        self.sums["mse_bench"] += float((rss / n_b).double().sum())  # core/main.py line 570
        var = (x - x.mean(0)).pow(2).sum(-1)
        self.sums["ev_legacy"] += float((1 - rss / var).double().sum())
        nin, nout = x.norm(dim=-1), x_hat.norm(dim=-1)
        self.sums["l2_in"] += float(nin.double().sum())
        self.sums["l2_out"] += float(nout.double().sum())
        div = torch.where(nin.abs() < 0.0001, torch.ones_like(nin), nin)
        self.sums["l2_ratio"] += float((nout / div).double().sum())
        self.per_batch["rrb"].append(float((nout.pow(2).mean() / (x * x_hat).sum(-1).mean()).double()))
        self.per_batch["R"].append(float(rss.double().mean()))
        self.per_batch["A"].append(float(x.pow(2).sum(-1).double().mean()))
        self.per_batch["M"].append(float(x.pow(2).mean(0).double().mean()))

    def merge(self, other: BatchMetrics) -> None:
        """Add a later batch's sums (in batch order, so 1 and N processes add alike)."""
        self.n += other.n
        for k, v in other.sums.items():
            self.sums[k] += v
        for k, v in other.per_batch.items():
            self.per_batch[k].extend(v)
        if other.prompts is not None:
            self.prompts = other.prompts.clone() if self.prompts is None else self.prompts + other.prompts

    def metrics(self) -> dict[str, float]:
        if not self.n:
            return {}
        nan = float("nan")
        mean = lambda v: sum(v) / len(v) if v else nan  # noqa: E731
        total_var = mean(self.per_batch["A"]) - mean(self.per_batch["M"]) ** 2
        return {
            "mse": self.sums["mse_bench"] / self.n,
            "explained_variance": 1 - mean(self.per_batch["R"]) / total_var if total_var else nan,
            "explained_variance_legacy": self.sums["ev_legacy"] / self.n,
            "l2_norm_in": self.sums["l2_in"] / self.n,
            "l2_norm_out": self.sums["l2_out"] / self.n,
            "l2_ratio": self.sums["l2_ratio"] / self.n,
            "relative_reconstruction_bias": mean(self.per_batch["rrb"]),
        }


def density_metrics(density: Any) -> dict[str, float]:
    """SAEBench's calculate_misc_metrics (density part) and saekit's dead/dense fractions."""
    d = density.double()
    total = float(d.sum())
    return {
        "dead_fraction": float((d == 0).double().mean()),
        "dense_fraction": float((d > DENSE_THRESHOLD).double().mean()),
        "frac_alive": float((d > 0).double().mean()),
        "freq_over_1_percent": float((d > 0.01).double().mean()),
        "freq_over_10_percent": float((d > 0.1).double().mean()),
        "normalized_freq_over_1_percent": float(d[d > 0.01].sum()) / total if total > 0 else 0.0,
        "normalized_freq_over_10_percent": float(d[d > 0.1].sum()) / total if total > 0 else 0.0,
    }


def metrics_from_stats(stats: Any) -> dict[str, float]:
    """SAELens' reconstruction and sparsity metrics, and the density ones, from summed EvalStats."""
    n = max(stats.n_tokens, 1)
    mse = float(stats.sse) / n
    total_var = float(stats.sum_x2.sum()) / n - float(((stats.sum_x / n) ** 2).sum())
    density = stats.fire_count.double() / n
    l1 = float(stats.l1_sum) / n
    return {
        "explained_variance_saelens": (1.0 if mse < 1e-10 else 0.0) if total_var < 1e-10 else 1.0 - mse / total_var,
        "mse_saelens": mse,
        "cossim": float(stats.cos_sum) / n,
        "l0": float(stats.l0_sum) / n,
        # codes of every supported architecture are >= 0, so SAEBench's sum and SAELens' sum of |.| agree
        "l1": l1,
        "l1_saelens": l1,
        **density_metrics(density),
    }


def _max_cosine(M: Any, chunk: int = 1024) -> Any:
    """core/main.py calculate_max_cosine_sim: per column of M [D, F], the largest cosine with
    any other column (self excluded)."""
    import torch

    unit = torch.nn.functional.normalize(M, p=2, dim=0)
    F = unit.shape[1]
    out = torch.empty(F, dtype=unit.dtype)
    for a in range(0, F, chunk):
        b = min(a + chunk, F)
        sims = unit[:, a:b].t() @ unit
        sims[torch.arange(b - a), torch.arange(a, b)] = float("-inf")
        out[a:b] = sims.max(dim=1).values.cpu()
    return out


def weight_metrics(sae: Any) -> dict[str, Any]:
    """core/main.py get_featurewise_weight_based_metrics: per-latent encoder bias (b_mag for
    gated SAEs), encoder norm, encoder/decoder cosine and the max cosines, on the SAE's weights
    as sae-lens holds them (fp32 here)."""
    import torch

    from saekit.kernels.architectures import architecture

    W_enc, W_dec = sae.W_enc.detach().float().cpu(), sae.W_dec.detach().float().cpu()
    if sae.cfg.normalize_activations == "expected_average_only_in":
        # the weights sae-lens holds for it: the scaling factor folded in
        # (sae.py SAE.fold_activation_norm_scaling_factor: W_enc *= s, W_dec /= s)
        W_enc, W_dec = W_enc * sae.cfg.norm_scaling_factor, W_dec / sae.cfg.norm_scaling_factor
    unit_enc = W_enc / W_enc.norm(dim=0, keepdim=True)
    unit_dec = W_dec.T / W_dec.T.norm(dim=0, keepdim=True)
    bias = sae.tensors[architecture(sae.cfg).encoder_bias].detach().float().cpu()
    return {
        "encoder_bias": bias,
        "encoder_norm": W_enc.norm(dim=-2),
        "encoder_decoder_cosine_sim": torch.nn.functional.cosine_similarity(unit_dec.T, unit_enc.T),
        "max_encoder_cosine_sim": _max_cosine(W_enc),
        "max_decoder_cosine_sim": _max_cosine(W_dec.T),
    }


def latent_details(sae: Any, fire_count: Any, n_tokens: int, prompts: Any | None) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per-latent lists for every latent (SAEBench's CoreFeatureMetric fields) and the
    weight-based averages of misc_metrics."""
    w = weight_metrics(sae)
    fc = fire_count.double().cpu()
    out: dict[str, list[float]] = {
        "feature_density": (fc / max(n_tokens, 1)).tolist(),
        # total_feature_acts / total_feature_prompts: NaN (0/0) for a latent that never fired
        "consistent_activation_heuristic": (fc / prompts.double()).tolist() if prompts is not None
        else [float("nan")] * len(fc),
    }
    out.update({k: v.double().tolist() for k, v in w.items()})
    averages = {
        "average_max_encoder_cosine_sim": float(w["max_encoder_cosine_sim"].double().mean()),
        "average_max_decoder_cosine_sim": float(w["max_decoder_cosine_sim"].double().mean()),
    }
    return out, averages


def _pad_cat(parts: list[Any], fill: int | float) -> Any:
    """Concatenate [n_i, k_i] codes of varying width k_i (ReLU/JumpReLU/gated batches), padding
    with ``fill`` on the right."""
    import torch

    width = max((p.shape[1] for p in parts), default=0)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=fill) for p in parts])


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
    """SAEBench's and SAELens' core metrics of ``sae`` at ``hook_name`` over ``tokens`` (see
    DEFINITIONS), and per-latent details for every latent.

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
    bm = BatchMetrics(sae.cfg.d_sae)

    from saekit.harness.dist import rank_world

    n_batches = -(-toks_all.shape[0] // batch_size)
    todo = list(range(n_batches)) if batches is None else list(batches)
    distributed = rank_world()[1] > 1
    parts: list[tuple[int, Any, dict[str, float], int, int, BatchMetrics]] = []  # per batch, when distributed
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
            keep = fmask[:, None].to(code.values.dtype)
            kept = code.values * keep
            if keep_codes:
                values.append(kept.cpu())
                indices.append(code.indices.cpu())
            x_hat = sae.decode(code)
            rows = toks.shape[0]
            bm_b = BatchMetrics(sae.cfg.d_sae)  # this batch's, merged in batch order (as ranks are)
            bm_b.add(flat[fmask], x_hat[fmask], row_codes=(kept.reshape(rows, -1), code.indices.reshape(rows, -1)))
            if not distributed:
                bm.merge(bm_b)
            if downstream:
                x_hat = x_hat.reshape(acts.shape).to(acts.dtype)
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
                parts.append((b, _light(_to_cpu(batch_stats)), part, n_ce - before[0], n_kl - before[1], bm_b))
            bar.update()

    if stats is None:  # a rank with no batches: zero sums of the right shapes
        stats = sae.eval_batch(torch.zeros(0, d_in, device=dev))
    stats = _to_cpu(stats)
    if distributed:
        stats, sums, n_ce, n_kl, bm = _reduce_in_batch_order(parts, stats, sums, sae.cfg.d_sae)
    metrics = metrics_from_stats(stats)
    metrics.update(bm.metrics())
    ctx = toks_all.shape[1]
    counts = {"tokens": int(mask_all.sum()), "ce_positions": n_ce, "kl_positions": n_kl,
              "batches": n_batches, "rows": int(toks_all.shape[0])}
    metrics["total_tokens_evaluated"] = float(counts["tokens"])
    # SAELens / SAEBench run_evals: context_size * n_batches * batch_size_prompts
    metrics["total_tokens_eval_sparsity_variance"] = float(ctx * n_batches * batch_size)
    if downstream:
        metrics["total_tokens_eval_reconstruction"] = float(ctx * n_batches * batch_size)
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
    t = time.perf_counter()
    latents, averages = latent_details(sae, stats.fire_count, stats.n_tokens, bm.prompts)
    weights_s = time.perf_counter() - t
    metrics.update(averages)
    return EvalRun(
        metrics=metrics,
        stats=stats,
        mask=mask_all,
        values=_pad_cat(values, 0.0) if keep_codes else None,
        indices=_pad_cat(indices, 0) if keep_codes else None,
        ce_with_sae=torch.cat(ce_sae_rows) if downstream and keep_codes else None,
        counts=counts,
        latents=latents,
        weights_s=weights_s,
    )


def _light(stats: Any) -> Any:
    """A batch's EvalStats without the per-latent vectors (reduced separately, exactly)."""
    from dataclasses import replace

    import torch

    return replace(stats, fire_count=torch.zeros(0, dtype=torch.int64), act_sum=torch.zeros(0, dtype=torch.float64),
                   act_max=torch.zeros(0))


def _reduce_in_batch_order(
    parts: list, local: Any, local_sums: dict[str, float], d_sae: int
) -> tuple[Any, dict[str, float], int, int, BatchMetrics]:
    """Every rank's per-batch sums added in batch order, as one process adds them; the
    per-latent counts and maxima all-reduce (exact in any order)."""
    from dataclasses import replace

    import torch.distributed as dist

    from saekit.harness.dist import all_gather_objects

    got = sorted((p for ps in all_gather_objects(parts) for p in ps), key=lambda p: p[0])
    stats, n_ce, n_kl = None, 0, 0
    bm = BatchMetrics(d_sae)
    sums = dict.fromkeys(local_sums, 0.0)
    for _, st, s, nc, nk, bm_b in got:
        bm.merge(bm_b)
        stats = st if stats is None else stats + st
        for k, v in s.items():
            sums[k] += v
        n_ce, n_kl = n_ce + nc, n_kl + nk
    fire, act_sum, act_max = local.fire_count.clone(), local.act_sum.clone(), local.act_max.clone()
    dist.all_reduce(fire)
    dist.all_reduce(act_sum)  # float: order-dependent in the last bits; no metric reads it
    dist.all_reduce(act_max, op=dist.ReduceOp.MAX)
    return replace(stats, fire_count=fire, act_sum=act_sum, act_max=act_max), sums, n_ce, n_kl, bm


def evaluate_activations(
    sae: Any, source: Any, *, exclude_token_ids: list[int] | None = None
) -> tuple[dict[str, float], Any, dict[str, list[float]]]:
    """Reconstruction and sparsity metrics over stored activations (no model: no CE/KL).

    Tokens whose id is in ``exclude_token_ids`` (default: what the shards' metadata names)
    are left out, as in ``evaluate``. Returns (metrics, summed EvalStats, per-latent lists).
    """
    import torch

    exclude = exclude_token_ids if exclude_token_ids is not None else getattr(source, "exclude_token_ids", [])
    ex = torch.tensor(exclude, dtype=torch.long)
    stats = None
    bm = BatchMetrics(sae.cfg.d_sae)
    n_batches = 0
    for toks, acts in source:
        flat = acts.reshape(-1, sae.cfg.d_in).float()
        keep = torch.ones(flat.shape[0], dtype=torch.bool)
        if toks is not None and len(exclude):
            keep = ~torch.isin(toks.reshape(-1), ex)
        s = sae.eval_batch(flat[keep])
        stats = s if stats is None else stats + s
        code = sae.encode(flat)
        kept = code.values * keep[:, None].to(code.values.device, code.values.dtype)
        rows = acts.shape[0] if acts.ndim == 3 else flat.shape[0]
        bm.add(flat[keep], sae.decode(code)[keep], row_codes=(kept.reshape(rows, -1), code.indices.reshape(rows, -1)))
        n_batches += 1
    stats = _to_cpu(stats)
    metrics = metrics_from_stats(stats)
    metrics.update(bm.metrics())
    metrics["total_tokens_evaluated"] = float(stats.n_tokens)
    latents, averages = latent_details(sae, stats.fire_count, stats.n_tokens, bm.prompts)
    metrics.update(averages)
    return metrics, stats, latents
