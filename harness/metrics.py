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

from contextlib import contextmanager
from typing import Any, Iterator

from saekit.schemas import MetricDefinition

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


def log_probs(logits: Any) -> Any:
    """float32 log-softmax over the vocabulary (as sae-lens computes it)."""
    import torch

    return torch.log_softmax(logits.float(), dim=-1)


def reused(work: dict, name: str, shape: tuple, device: Any, dtype: Any = None) -> Any:
    """A buffer (float32 unless ``dtype``) kept in ``work`` by the caller: vocabulary-sized
    arrays are written into the same memory each time, not fresh pages (which cost more than
    the arithmetic on them)."""
    import torch

    dtype = dtype or torch.float32
    b = work.get(name)
    if b is None or b.shape != shape or b.dtype != dtype or b.device != device:
        b = work[name] = torch.empty(shape, dtype=dtype, device=device)
    return b


@contextmanager
def logits_into(model: Any, work: dict, name: str) -> Iterator[None]:
    """Within the block (no autograd), the LM head writes its logits into the buffer ``name``
    of ``work`` (``reused``) instead of fresh memory each forward: a batch of four 128-token
    windows has 100 MB of logits for a 49,152-token vocabulary. Only a bias-free Linear head
    (the same product, matmul into a given tensor: the same bits); any other head runs as is."""
    import torch

    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None:
        yield
        return
    W = head.weight

    def forward(h: Any) -> Any:
        if torch.is_grad_enabled() and h.requires_grad:  # a product into a given tensor has no backward
            return torch.nn.functional.linear(h, W)
        return torch.matmul(h, W.t(), out=reused(work, name, (*h.shape[:-1], W.shape[0]), h.device, h.dtype))

    head.forward = forward
    try:
        yield
    finally:
        del head.forward


def per_token_ce(logits: Any, tokens: Any, *, logp: Any = None) -> Any:
    """-log p(token[t+1] | ..t) per position [b, ctx-1] (transformer_lens lm_cross_entropy_loss).
    The pick runs on the whole ``logp`` (the last position picks a dummy that is dropped), so
    a backward through it writes one vocabulary-sized gradient, not a second one for a slice."""
    import torch

    logp = log_probs(logits) if logp is None else logp
    return -logp.gather(-1, torch.roll(tokens, -1, 1)[..., None])[:, :-1, 0]


def per_token_kl(lp_clean: Any, lp_new: Any, *, p_clean: Any = None, out: Any = None) -> Any:
    """KL(p_clean || p_new) per position [b, ctx] from log-probs (sae_lens evals._kl);
    ``p_clean``: lp_clean.exp() when already computed; ``out``: a buffer for the terms."""
    import torch

    d = torch.sub(lp_clean, lp_new, out=out)
    return d.mul_(lp_clean.exp() if p_clean is None else p_clean).sum(-1)  # p * (lp_clean - lp_new), in place


# --- per-batch sums ----------------------------------------------------------------------
# One row of float64 sums per batch (SUMS, then sum_x and sum_x2 per dimension), each
# computed within its batch in an order that depends on neither the thread count nor the
# other batches, then added over batches in batch order: one process and N ranks (each
# owning whole batches) add the same numbers in the same order, so the record is the same.
SUMS = ("n", "mse_bench", "ev_legacy", "l2_in", "l2_out", "l2_ratio", "R", "A", "M", "rrb", "sse", "cos", "l1",
        "ce_without", "ce_with", "ce_abl", "kl_with", "kl_abl", "n_ce", "n_kl")
_COL = {k: i for i, k in enumerate(SUMS)}


def _ordered_sum(v: Any) -> Any:
    """float64 sum over dim 0 in index order (a cumulative sum runs sequentially, whatever
    the thread count: a plain sum over many elements splits among threads)."""
    v = v.double()
    return v.cumsum(0)[-1] if v.shape[0] else v.sum(0)


def batch_sums(x: Any, x_hat: Any, values: Any) -> Any:
    """The float64 row [len(SUMS) + 2 d_in] of one batch from its non-special x, x_hat
    [n_b, d_in] and their sparse code values [n_b, k] (see DEFINITIONS); the per-token values
    are float32, as both projects compute them."""
    import torch

    d_in = x.shape[1]
    row = torch.zeros(len(SUMS) + 2 * d_in, dtype=torch.float64)
    n_b = x.shape[0]
    if n_b == 0:
        return row
    x, x_hat = x.float(), x_hat.float()
    rss = (x - x_hat).pow(2).sum(-1)  # per token
    var = (x - x.mean(0)).pow(2).sum(-1)
    nin, nout = x.norm(dim=-1), x_hat.norm(dim=-1)
    div = torch.where(nin.abs() < 0.0001, torch.ones_like(nin), nin)
    vals = values.float()
    got = {
        "n": n_b,
        "mse_bench": float((rss / n_b).double().sum()),  # core/main.py line 570
        "ev_legacy": float((1 - rss / var).double().sum()),
        "l2_in": float(nin.double().sum()),
        "l2_out": float(nout.double().sum()),
        "l2_ratio": float((nout / div).double().sum()),
        "rrb": float((nout.pow(2).mean() / (x * x_hat).sum(-1).mean()).double()),
        "R": float(rss.double().mean()),
        "A": float(x.pow(2).sum(-1).double().mean()),
        "M": float(x.pow(2).mean(0).double().mean()),
        # SAELens' sums over tokens (evals.py), per token then in token order
        "sse": float(_ordered_sum(rss)),
        "cos": float(_ordered_sum(torch.nn.functional.cosine_similarity(x, x_hat, dim=1))),
        "l1": float(_ordered_sum(torch.where(vals > 0, vals, 0.0).double().sum(1))),
    }
    for k, v in got.items():
        row[_COL[k]] = v
    row[len(SUMS) :] = torch.cat([_ordered_sum(x), _ordered_sum(x.double().pow(2))]).cpu()
    return row


def downstream_sums(row: Any, toks: Any, mask: Any, clean_logits: Any, lp_sae: Any, abl_logits: Any,
                    work: dict | None = None) -> None:
    """Add a batch's CE and KL sums to its row, from the logits of its clean and zero-ablated
    runs and the log-probs of its spliced run. One window at a time, in buffers kept in
    ``work`` (the caller's, across batches): a window's log-probs and KL terms are 25 MB
    each for a 49,152-token vocabulary, and fresh pages for them cost more than the
    arithmetic. The per-token values are the same bits, summed in the same order."""
    import torch

    work = {} if work is None else work
    buf = lambda name, like: reused(work, name, like.shape, like.device)  # noqa: E731
    ce = {"clean": [], "sae": [], "abl": []}
    kl = {"sae": [], "abl": []}
    for j in range(toks.shape[0]):
        t = toks[j : j + 1]
        c, a = clean_logits[j : j + 1], abl_logits[j : j + 1]
        # log_probs into the buffers (the same float32 log-softmax)
        lp_clean = torch.log_softmax(c.float(), dim=-1, out=buf("lp_clean", c))
        lp_abl = torch.log_softmax(a.float(), dim=-1, out=buf("lp_abl", a))
        for name, lp in (("clean", lp_clean), ("sae", lp_sae[j : j + 1]), ("abl", lp_abl)):
            ce[name].append(per_token_ce(None, t, logp=lp))
        p_clean = torch.exp(lp_clean, out=buf("p_clean", c))
        kl["sae"].append(per_token_kl(lp_clean, lp_sae[j : j + 1], p_clean=p_clean, out=buf("terms", c)))
        kl["abl"].append(per_token_kl(lp_clean, lp_abl, p_clean=p_clean, out=buf("terms", c)))
    m_ce = mask[:, :-1]  # CE at t predicts token t+1; masked by the input token t
    # per-token values in float32 (as sae-lens), sums over tokens in float64
    got = {
        "ce_without": float(torch.cat(ce["clean"])[m_ce].double().sum()),
        "ce_with": float(torch.cat(ce["sae"])[m_ce].double().sum()),
        "ce_abl": float(torch.cat(ce["abl"])[m_ce].double().sum()),
        "kl_with": float(torch.cat(kl["sae"])[mask].double().sum()),
        "kl_abl": float(torch.cat(kl["abl"])[mask].double().sum()),
        "n_ce": int(m_ce.sum()),
        "n_kl": int(mask.sum()),
    }
    for k, v in got.items():
        row[_COL[k]] = v


class MetricSums:
    """The metrics' state over a sweep: a row of sums per batch (``batch_sums``), and per
    latent the fire counts, maxima, prompts fired on (integers and maxima: exact in any
    order)."""

    def __init__(self, d_sae: int):
        import torch

        self.rows: dict[int, Any] = {}  # batch index -> its row (batch_sums)
        self.fire_count = torch.zeros(d_sae, dtype=torch.int64)
        self.act_max = torch.zeros(d_sae, dtype=torch.float32)
        self.l0 = torch.zeros(1, dtype=torch.int64)
        self.prompts = torch.zeros(d_sae, dtype=torch.int64)

    def add(self, b: int, row: Any, stats: Any, code_rows: tuple[Any, Any]) -> None:
        """Batch ``b``'s row, its EvalStats (per-latent counts and maxima of its non-special
        tokens) and its code per prompt (values, indices) [rows, m] for the prompt counts."""
        import torch

        self.rows[b] = row
        self.fire_count += stats.fire_count.cpu()
        self.act_max = torch.maximum(self.act_max, stats.act_max.cpu().float())
        self.l0 += int(stats.l0_sum)
        vals, idx = code_rows
        hit = torch.zeros(vals.shape[0], self.fire_count.shape[0], dtype=torch.int32, device=vals.device)
        hit.scatter_add_(1, idx, (vals > 0).to(torch.int32))
        self.prompts += (hit > 0).sum(0).long().cpu()

    def all_reduce(self, n_batches: int, width: int) -> None:
        """Every rank's batches: a table of ``n_batches`` rows of ``width``, each row with one
        owner, so the sum with the other ranks' zeros is exact."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        table = torch.zeros(n_batches, width, dtype=torch.float64)
        owned = torch.zeros(n_batches, dtype=torch.int64)
        for b, row in self.rows.items():
            table[b], owned[b] = row, 1
        for t in (table, owned, self.fire_count, self.l0, self.prompts):
            dist.all_reduce(t)
        dist.all_reduce(self.act_max, op=dist.ReduceOp.MAX)
        self.rows = {b: table[b] for b in range(n_batches) if owned[b]}

    @property
    def n_tokens(self) -> int:
        return sum(int(r[_COL["n"]]) for r in self.rows.values())

    def metrics(self, *, downstream: bool) -> dict[str, float]:
        """SAEBench's and SAELens' metrics (DEFINITIONS) from the batches' sums, added in
        batch order."""
        import torch

        if not self.rows:
            return {}
        rows = torch.stack([self.rows[b] for b in sorted(self.rows)])
        d_in = (rows.shape[1] - len(SUMS)) // 2
        total = [sum(col) for col in zip(*rows[:, : len(SUMS)].tolist())] or [0.0] * len(SUMS)
        t = dict(zip(SUMS, total))
        sum_x = _ordered_sum(rows[:, len(SUMS) : len(SUMS) + d_in])
        sum_x2 = _ordered_sum(rows[:, len(SUMS) + d_in :])
        n = int(t["n"])
        out = saelens_metrics(n, t["sse"], sum_x, sum_x2, t["cos"], int(self.l0), t["l1"], self.fire_count)
        if n:
            nan = float("nan")
            per = {k: [r[_COL[k]] for r in rows.tolist() if r[_COL["n"]] > 0] for k in ("R", "A", "M", "rrb")}
            mean = lambda v: sum(v) / len(v) if v else nan  # noqa: E731
            total_var = mean(per["A"]) - mean(per["M"]) ** 2
            out.update({
                "mse": t["mse_bench"] / n,
                "explained_variance": 1 - mean(per["R"]) / total_var if total_var else nan,
                "explained_variance_legacy": t["ev_legacy"] / n,
                "l2_norm_in": t["l2_in"] / n,
                "l2_norm_out": t["l2_out"] / n,
                "l2_ratio": t["l2_ratio"] / n,
                "relative_reconstruction_bias": mean(per["rrb"]),
            })
        if downstream:
            n_ce, n_kl = max(int(t["n_ce"]), 1), max(int(t["n_kl"]), 1)
            ce_without, ce_with, ce_abl = (t[k] / n_ce for k in ("ce_without", "ce_with", "ce_abl"))
            kl_with, kl_abl = t["kl_with"] / n_kl, t["kl_abl"] / n_kl
            out.update(
                ce_loss_without_sae=ce_without,
                ce_loss_with_sae=ce_with,
                ce_loss_with_ablation=ce_abl,
                ce_loss_score=(ce_abl - ce_with) / (ce_abl - ce_without) if ce_abl != ce_without else float("nan"),
                kl_div_with_sae=kl_with,
                kl_div_with_ablation=kl_abl,
                kl_div_score=(kl_abl - kl_with) / kl_abl if kl_abl else float("nan"),
            )
        return out


def token_counts(n_counted: int, context_size: int, n_batches: int, batch_size: int,
                 downstream: bool) -> dict[str, float]:
    """token_stats: the non-special tokens counted, and SAELens' / SAEBench's run_evals
    count, context_size * n_batches * batch_size_prompts."""
    full = float(context_size * n_batches * batch_size)
    out = {"total_tokens_evaluated": float(n_counted), "total_tokens_eval_sparsity_variance": full}
    if downstream:
        out["total_tokens_eval_reconstruction"] = full
    return out


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


def saelens_metrics(n_tokens: int, sse: float, sum_x: Any, sum_x2: Any, cos_sum: float, l0_sum: int,
                    l1_sum: float, fire_count: Any) -> dict[str, float]:
    """SAELens' reconstruction and sparsity metrics, and the density ones, from sums over tokens."""
    n = max(n_tokens, 1)
    mse = float(sse) / n
    total_var = float(sum_x2.sum()) / n - float(((sum_x / n) ** 2).sum())
    density = fire_count.double() / n
    l1 = float(l1_sum) / n
    return {
        "explained_variance_saelens": (1.0 if mse < 1e-10 else 0.0) if total_var < 1e-10 else 1.0 - mse / total_var,
        "mse_saelens": mse,
        "cossim": float(cos_sum) / n,
        "l0": float(l0_sum) / n,
        # codes of every supported architecture are >= 0, so SAEBench's sum and SAELens' sum of |.| agree
        "l1": l1,
        "l1_saelens": l1,
        **density_metrics(density),
    }


def metrics_from_stats(stats: Any) -> dict[str, float]:
    """``saelens_metrics`` of summed EvalStats."""
    return saelens_metrics(stats.n_tokens, stats.sse, stats.sum_x, stats.sum_x2, stats.cos_sum, stats.l0_sum,
                           stats.l1_sum, stats.fire_count)


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


def evaluate_activations(
    sae: Any, source: Any, *, exclude_token_ids: list[int] | None = None
) -> tuple[dict[str, float], Any, dict[str, list[float]]]:
    """Reconstruction and sparsity metrics over stored activations (no model: no CE/KL).

    Tokens whose id is in ``exclude_token_ids`` (default: what the shards' metadata names)
    are left out, as in the sweep. Returns (metrics, tokens counted, per-latent lists).
    """
    import torch

    exclude = exclude_token_ids if exclude_token_ids is not None else getattr(source, "exclude_token_ids", [])
    ex = torch.tensor(exclude, dtype=torch.long)
    sums = MetricSums(sae.cfg.d_sae)
    for b, (toks, acts) in enumerate(source):
        flat = acts.reshape(-1, sae.cfg.d_in).float()
        keep = torch.ones(flat.shape[0], dtype=torch.bool)
        if toks is not None and len(exclude):
            keep = ~torch.isin(toks.reshape(-1), ex)
        code = sae.encode(flat)
        kept = code.values * keep[:, None].to(code.values.device, code.values.dtype)
        rows = acts.shape[0] if acts.ndim == 3 else flat.shape[0]
        sums.add(b, batch_sums(flat[keep], sae.decode(code)[keep], code.values[keep]), sae.eval_batch(flat[keep]),
                 (kept.reshape(rows, -1), code.indices.reshape(rows, -1)))
    metrics = sums.metrics(downstream=False)
    n = sums.n_tokens
    metrics["total_tokens_evaluated"] = float(n)
    latents, averages = latent_details(sae, sums.fire_count, n, sums.prompts)
    metrics.update(averages)
    return metrics, n, latents
