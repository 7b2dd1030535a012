"""Downstream effects of the latents: what removing a latent from the reconstruction does to
the next-token loss. Every card carries the attribution estimate (from the sweep's one
backward per batch, saekit.harness.latent_stats.attribution); the chosen latents are also
ablated exactly, from the hook on, in their strongest windows; the agreement of the two is
recorded in the check's record.
"""

from __future__ import annotations

from typing import Any

from saekit.harness.activations import spliced
from saekit.harness.metrics import logits_into
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
    sae: Any, model: Any, toks: Any, mask: Any, hook_name: str, *, grad: bool,
) -> tuple[Any, Any, Any]:
    """One forward with the SAE reconstruction spliced in at the non-special positions, and
    with ``grad`` one backward of the summed next-token loss. Returns (sparse code [b*ctx, k],
    summed loss per window [b] float64, dL/dx_hat [b*ctx, d] or None)."""
    import torch

    box: dict[str, Any] = {}

    def fn(a: Any) -> Any:
        code = sae.encode(a.reshape(-1, a.shape[-1]))
        x_hat = sae.decode(code).reshape(a.shape).to(a.dtype)
        r = torch.where(mask[..., None], x_hat, a).detach()
        if grad:
            r.requires_grad_(True)
        box["code"], box["recon"] = code, r
        return r

    with torch.set_grad_enabled(grad), spliced(model, hook_name, fn):
        loss = _summed_loss(model(toks).logits, toks, mask)
        if grad:
            loss.sum().backward()
    g = box["recon"].grad.reshape(-1, box["recon"].shape[-1]) if grad else None
    return box["code"], loss.detach(), g


def exact_ablations(
    sae: Any, model: Any, tokens: TokenSet, stats: Any, latents: list[int], *, hook_name: str, batch_size: int,
    special: Any, max_rows: int, distributed: bool = False,
) -> dict[int, dict[str, Any]]:
    """Per latent: exact change of summed next-token loss when it is removed from the spliced
    reconstruction in its ``max_rows`` strongest windows, with the attribution estimate on
    the same windows (for the agreement the check records).

    The base (unablated loss, the latent's values and attribution in each window) comes from
    the sweep when it captured them (``stats.captured``), else from one forward+backward of
    those windows. Then one run from the hook per (latent, window), ``batch_size`` at a time:
    the layers below the hook and the SAE run once per window (``_AtHook``). With
    ``distributed`` every rank calls this and the batches of ablated runs are dealt out among
    the ranks (each batch the same as one process runs, so the same numbers)."""
    from saekit.harness.dist import all_gather_objects, rank_world

    rank, world = rank_world() if distributed else (0, 1)
    rows_of = {L: [r for r, _ in stats.top(L)[:max_rows]] for L in latents}
    jobs = [(L, r) for L in latents for r in rows_of[L]]
    groups = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    from_pass = (stats.captured and max_rows <= stats.top_val.shape[1]
                 and not any(bool(stats.top_loss[L, : len(rows_of[L])].isnan().any()) for L in latents))
    n_base = 0 if from_pass else -(-len({r for _, r in jobs}) // batch_size)
    mine = list(range(rank, len(groups), world))
    at_hook = _AtHook(sae, model, tokens, hook_name, batch_size, special, [groups[gi] for gi in mine])
    with Progress("exact ablations", total=n_base + len(mine)) as bar:
        base = _base_from_sweep(stats, rows_of) if from_pass else _base_by_forward(
            sae, model, tokens, jobs, hook_name, batch_size, special, bar)
        ablated: dict[tuple[int, int], float] = {}
        for gi in mine:
            ablated.update(zip(groups[gi], at_hook.ablated_losses(groups[gi], base)))
            bar.update()
    if world > 1:
        for part in all_gather_objects(ablated):
            ablated.update(part)
    res: dict[int, dict[str, Any]] = {}
    for L in latents:  # summed in the order of the latent's windows, whoever ran them
        e = res[L] = {"delta": 0.0, "attr": 0.0, "n": 0, "rows": len(rows_of[L]), "base": 0.0, "ablated": 0.0}
        for r in rows_of[L]:
            _, l0, attr, n = base[(L, r)]
            l1 = ablated[(L, r)]
            e["delta"] += l1 - l0
            e["attr"] += attr
            e["n"] += n
            e["base"] += l0
            e["ablated"] += l1
    return res


# per (latent, window): the latent's value per token [ctx], the window's unablated loss, the
# attribution estimate in the window, the firing tokens
Base = dict[tuple[int, int], tuple[Any, float, float, int]]


def _base_from_sweep(stats: Any, rows_of: dict[int, list[int]]) -> Base:
    """The base of every job from the windows the sweep captured."""
    base: Base = {}
    for L, rows in rows_of.items():
        seqs = stats.top_seq[L, : len(rows)]
        for j, r in enumerate(rows):
            a = seqs[j]
            base[(L, r)] = (a, float(stats.top_loss[L, j]), float(stats.top_attr[L, j]), int((a > 0).sum()))
    return base


def _base_by_forward(sae: Any, model: Any, tokens: TokenSet, jobs: list[tuple[int, int]], hook_name: str,
                     batch_size: int, special: Any, bar: Any) -> Base:
    """The base of every job from one forward+backward of its windows (when the sweep did not
    capture them)."""
    import torch

    from saekit.harness.latent_stats import attribution

    ctx, W = tokens.context_size, sae.W_dec
    dev = W.device
    want: dict[int, list[int]] = {}
    for L, r in jobs:
        want.setdefault(r, []).append(L)
    rows = sorted(want)
    base: Base = {}
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
    return base


class _AtHook:
    """What the ablated runs start from, per window: the output of the layers below the hook
    (saekit.harness.sweep.Prefix) and the spliced reconstruction at the hook, computed once
    per window and kept until this rank's last batch that ablates in it (while they take at
    most KEEP_BYTES; beyond, a window is computed again where needed). The runs from the hook
    get the same inputs as full forwards would (the sweep's replay)."""

    KEEP_BYTES = 1 << 30

    def __init__(self, sae: Any, model: Any, tokens: TokenSet, hook_name: str, batch_size: int, special: Any,
                 groups: list[list[tuple[int, int]]]):
        from saekit.harness.sweep import Prefix

        self.sae, self.model, self.tokens, self.hook_name = sae, model, tokens, hook_name
        self.batch_size, self.special = batch_size, special
        self.prefix = Prefix(model, hook_name)
        self.dev = sae.W_dec.device
        self.uses: dict[int, int] = {}  # window -> this rank's batches still to ablate in it
        for g in groups:
            for r in {r for _, r in g}:
                self.uses[r] = self.uses.get(r, 0) + 1
        self.kept: dict[int, tuple[Any, Any]] = {}  # window -> (prefix output or None, reconstruction)
        self.kept_bytes = 0
        self.work: dict = {}  # the loss's buffers, reused by every batch

    def _compute(self, rows: list[int]) -> dict[int, tuple[Any, Any]]:
        import torch

        got = {}
        for i in range(0, len(rows), self.batch_size):
            group = rows[i : i + self.batch_size]
            toks = self.tokens.tokens[group].to(self.dev)
            mask = ~torch.isin(toks, self.special.to(self.dev))
            with torch.no_grad():
                acts = self.prefix.run_to_hook(toks, self.hook_name)
                x_hat = self.sae.decode(self.sae.encode(acts.reshape(-1, acts.shape[-1])))
                recon = torch.where(mask[..., None], x_hat.reshape(acts.shape).to(acts.dtype), acts)
            out = self.prefix.out if self.prefix.layers else None
            for j, r in enumerate(group):
                got[r] = (None if out is None else out[j : j + 1].clone(), recon[j : j + 1].clone())
        return got

    def _inputs(self, rows: list[int]) -> dict[int, tuple[Any, Any]]:
        """The inputs of ``rows``' windows (kept or computed now); keeps those used again."""
        new = self._compute(sorted(set(rows) - set(self.kept)))
        have = {**self.kept, **new}
        for r in set(rows):
            self.uses[r] -= 1
            if self.uses[r] == 0 and r in self.kept:
                self.kept_bytes -= _nbytes(self.kept.pop(r))
            elif self.uses[r] > 0 and r in new and self.kept_bytes + _nbytes(new[r]) <= self.KEEP_BYTES:
                self.kept[r] = new[r]
                self.kept_bytes += _nbytes(new[r])
        return have

    def ablated_losses(self, group: list[tuple[int, int]], base: Base) -> list[float]:
        """Each job's summed next-token loss with its latent removed where it fires, one batched
        run from the hook."""
        import torch

        rows = [r for _, r in group]
        have = self._inputs(rows)
        toks = self.tokens.tokens[rows].to(self.dev)
        mask = ~torch.isin(toks, self.special.to(self.dev))
        W = self.sae.W_dec
        abl = torch.zeros(len(group), toks.shape[1], W.shape[1], device=self.dev)
        for j, (L, r) in enumerate(group):
            abl[j] = base[(L, r)][0].to(self.dev)[:, None] * W[L].float()[None, :]
        recon = torch.cat([have[r][1] for r in rows])
        new = torch.where(mask[..., None], recon - abl.to(recon.dtype), recon)
        if self.prefix.layers:
            self.prefix.out = torch.cat([have[r][0] for r in rows])
        with (torch.no_grad(), self.prefix.replay(), spliced(self.model, self.hook_name, lambda a: new),
              logits_into(self.model, self.work, "logits")):
            logits = self.model(toks).logits
        return _summed_loss(logits, toks, mask, self.work).tolist()


def _nbytes(kept: tuple[Any, Any]) -> int:
    """Bytes of a window's kept tensors (the prefix output may be None)."""
    return sum(t.numel() * t.element_size() for t in kept if t is not None)


def _summed_loss(logits: Any, toks: Any, mask: Any, work: dict | None = None) -> Any:
    """Each window's summed next-token loss (float64 [b]) at the positions whose input token
    is not special. ``work``: buffers kept by the caller (no autograd), so each window's
    log-probs go into the same memory (saekit.harness.metrics.reused)."""
    import torch

    from saekit.harness.metrics import per_token_ce, reused

    if work is None:
        ce = per_token_ce(logits, toks)
    else:
        ce = torch.cat([per_token_ce(None, toks[j : j + 1], logp=torch.log_softmax(
            logits[j : j + 1].float(), dim=-1, out=reused(work, "log_probs", logits[j : j + 1].shape, logits.device)))
            for j in range(toks.shape[0])])
    return (ce * mask[:, :-1]).double().sum(1)


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


