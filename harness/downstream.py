"""Downstream effects of the latents: what removing a latent from the reconstruction does to
the next-token loss. Every card carries the attribution estimate (from the sweep's one
backward per batch, saekit.harness.latent_stats.attribution); the chosen latents are also
ablated exactly, from the hook on, in their strongest windows; the agreement of the two is
recorded in the check's record.
"""

from __future__ import annotations

from typing import Any

from saekit.harness.activations import spliced
from saekit.harness.text import TokenSet
from saekit.schemas import MetricDefinition
from saekit.schemas.console import Progress

ATTRIBUTION = "attribution"
ABLATION = "exact-ablation"
DOWNSTREAM_METRIC = "delta_ce_loss_per_firing_token"
ATTRIBUTION_DEFINITION = (
    "first-order estimate of removing the latent from the spliced SAE reconstruction: "
    "sum over the check tokens where it fires of -a_i(t) * W_dec[i] . dL/dx_hat(t), L the summed next-token "
    "loss of each window (one backward per batch covers every latent), divided by the number of firing tokens"
)
ABLATION_DEFINITION = (
    "exact: x_hat - a_i(t) * W_dec[i] at every position of the window where latent i fires, spliced in at the "
    "hook; change in the window's summed next-token loss against the unablated reconstruction, summed over the "
    "latent's strongest windows and divided by its firing tokens in them"
)
AGREEMENT_DEFINITIONS = {
    "attribution_vs_ablation_spearman": MetricDefinition(
        definition="Spearman rank correlation, over the exactly ablated latents, of the attribution estimate and "
        "the exact ablation of delta_ce_loss_per_firing_token on the same windows",
        direction="higher", source="saekit.harness.downstream.agreement"),
    "attribution_vs_ablation_mae": MetricDefinition(
        definition="mean over the exactly ablated latents of |attribution - exact ablation| (nats per firing token)",
        direction="lower", source="saekit.harness.downstream.agreement"),
    "attribution_vs_ablation_median_rel_error": MetricDefinition(
        definition="median over the exactly ablated latents of |attribution - exact| / |exact|",
        direction="lower", source="saekit.harness.downstream.agreement"),
    "attribution_vs_ablation_n_latents": MetricDefinition(
        definition="number of latents ablated exactly", direction="none", source="saekit.harness.downstream.agreement"),
}

def spliced_loss(
    sae: Any, model: Any, toks: Any, mask: Any, hook_name: str, *, grad: bool, ablate: Any = None,
) -> tuple[Any, Any, Any]:
    """One forward with the SAE reconstruction spliced in at the non-special positions
    (``ablate`` [b, ctx, d] subtracted from it), and with ``grad`` one backward of the summed
    next-token loss. Returns (sparse code [b*ctx, k], summed loss per window [b] float64,
    dL/dx_hat [b*ctx, d] or None)."""
    import torch
    import torch.nn.functional as F

    box: dict[str, Any] = {}

    def fn(a: Any) -> Any:
        code = sae.encode(a.reshape(-1, a.shape[-1]))
        x_hat = sae.decode(code).reshape(a.shape).to(a.dtype)
        if ablate is not None:
            x_hat = x_hat - ablate.to(x_hat.dtype)
        r = torch.where(mask[..., None], x_hat, a).detach()
        if grad:
            r.requires_grad_(True)
        box["code"], box["recon"] = code, r
        return r

    b, ctx = toks.shape
    with torch.set_grad_enabled(grad), spliced(model, hook_name, fn):
        logits = model(toks).logits
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), toks[:, 1:].reshape(-1),
                             reduction="none").view(b, ctx - 1)
        ce = ce * mask[:, :-1]  # CE at t predicts t+1; counted where the input token t is not special
        if grad:
            ce.sum().backward()
    g = box["recon"].grad.reshape(b * ctx, -1) if grad else None
    return box["code"], ce.detach().double().sum(1), g


def exact_ablations(
    sae: Any, model: Any, tokens: TokenSet, stats: Any, latents: list[int], *, hook_name: str, batch_size: int,
    special: Any, max_rows: int = 4, distributed: bool = False,
) -> dict[int, dict[str, Any]]:
    """Per latent: exact change of summed next-token loss when it is removed from the spliced
    reconstruction in its ``max_rows`` strongest windows, with the attribution estimate on
    the same windows (for the agreement the check records).

    The base (unablated loss, the latent's values and attribution in each window) comes from
    the pass when it captured them (``stats.captured``), else from one forward+backward of
    those windows; then one forward per (latent, window), ``batch_size`` at a time. With
    ``distributed`` every rank calls this and the batches of ablated forwards are dealt out
    among the ranks (each batch the same as one process runs, so the same numbers)."""
    import torch

    from saekit.harness.dist import all_gather_objects, rank_world

    rank, world = rank_world() if distributed else (0, 1)
    ctx = tokens.context_size
    rows_of = {L: [r for r, _ in stats.top(L)[:max_rows]] for L in latents}
    W = sae.W_dec
    dev = W.device
    from_pass = (stats.captured and max_rows <= stats.top_val.shape[1]
                 and not any(bool(stats.top_loss[L, : len(rows_of[L])].isnan().any()) for L in latents))
    jobs = [(L, r) for L in latents for r in rows_of[L]]
    groups = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    # per job: (the latent's value per token [ctx], base loss, attribution in the window, firing tokens)
    base: dict[tuple[int, int], tuple[Any, float, float, int]] = {}
    n_base = 0
    if from_pass:
        for L in latents:
            seqs = stats.top_seq[L, : len(rows_of[L])]
            for j, r in enumerate(rows_of[L]):
                a = seqs[j]
                base[(L, r)] = (a, float(stats.top_loss[L, j]), float(stats.top_attr[L, j]), int((a > 0).sum()))
    else:
        rows = sorted({r for rs in rows_of.values() for r in rs})
        n_base = -(-len(rows) // batch_size)
    with Progress("exact ablations", total=n_base + len(groups[rank::world])) as bar:
        if not from_pass:
            from saekit.harness.latent_stats import attribution

            want: dict[int, list[int]] = {}
            for L, r in jobs:
                want.setdefault(r, []).append(L)
            for i in range(0, len(rows), batch_size):
                group = rows[i : i + batch_size]
                toks = tokens.tokens[group].to(dev)
                mask = ~torch.isin(toks, special.to(dev))
                code, loss, g = spliced_loss(sae, model, toks, mask, hook_name, grad=True)
                kk = code.values.shape[1]
                vals = (code.values.float() * mask.reshape(-1, 1)).view(len(group), ctx, kk)
                idx = code.indices.view(len(group), ctx, kk)
                gg = g.view(len(group), ctx, -1)
                for j, r in enumerate(group):
                    v, ix = vals[j].detach(), idx[j]
                    contrib = attribution(v, ix, W, gg[j])
                    for L in want[r]:
                        sel = ix == L
                        base[(L, r)] = ((v * sel).sum(1), float(loss[j]), float((contrib * sel).double().sum()),
                                        int(((v > 0) & sel).sum()))
                bar.update()
        ablated: dict[int, list[float]] = {}
        for gi in range(rank, len(groups), world):
            group = groups[gi]
            toks = tokens.tokens[[r for _, r in group]].to(dev)
            mask = ~torch.isin(toks, special.to(dev))
            abl = torch.zeros(len(group), ctx, W.shape[1], device=dev)
            for j, (L, r) in enumerate(group):
                a = base[(L, r)][0].to(dev)
                abl[j] = a[:, None] * W[L].float()[None, :]
            with torch.no_grad():
                _, loss, _ = spliced_loss(sae, model, toks, mask, hook_name, grad=False, ablate=abl)
            ablated[gi] = loss.tolist()
            bar.update()
    if world > 1:
        for part in all_gather_objects(ablated):
            ablated.update(part)
    res: dict[int, dict[str, Any]] = {L: {"delta": 0.0, "attr": 0.0, "n": 0, "rows": len(rows_of[L]),
                                          "base": 0.0, "ablated": 0.0} for L in latents}
    for gi, group in enumerate(groups):
        for (L, r), l1 in zip(group, ablated[gi]):
            _, l0, attr, n = base[(L, r)]
            e = res[L]
            e["delta"] += l1 - l0
            e["attr"] += attr
            e["n"] += n
            e["base"] += l0
            e["ablated"] += l1
    return res


def agreement(exact: list[float], approx: list[float]) -> dict[str, float]:
    """Spearman rank correlation, mean absolute error and median relative error of the
    attribution estimates against exact ablation."""
    import torch

    if len(exact) < 2:
        return {}
    e, a = torch.tensor(exact, dtype=torch.float64), torch.tensor(approx, dtype=torch.float64)

    def ranks(x: Any) -> Any:  # average ranks of ties
        order = torch.argsort(x, stable=True)
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for v in torch.unique(x):
            sel = x == v
            if int(sel.sum()) > 1:
                r[sel] = r[sel].mean()
        return r

    re, ra = ranks(e), ranks(a)
    re, ra = re - re.mean(), ra - ra.mean()
    den = float((re.norm() * ra.norm()))
    rel = ((a - e).abs() / e.abs().clamp(min=1e-12)).median()
    return {
        "attribution_vs_ablation_spearman": float((re * ra).sum()) / den if den else float("nan"),
        "attribution_vs_ablation_mae": float((a - e).abs().mean()),
        "attribution_vs_ablation_median_rel_error": float(rel),
        "attribution_vs_ablation_n_latents": float(len(exact)),
    }


