"""Feature cards from a check, annotations merged from a user's file, and card verification.

A card's top examples are exact model inputs: each starts at its context window's first
token (BOS) and ends a few tokens after the maximum, so ``saekit cards verify`` can re-run
the example's ``token_ids`` through the model and the SAE and reproduce every value
without the corpus. ``extra["saekit"]["token_set"]`` holds the token-set config the stats
came from, so the density can be recomputed on the same tokens.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from saekit.harness.activations import spliced
from saekit.harness.text import TokenSet
from saekit.schemas import (
    ActivationExample,
    ActivationStats,
    Annotation,
    CardProvenance,
    DownstreamEval,
    ExampleSource,
    FeatureCard,
    Histogram,
    InputError,
    LogitEffect,
    LogitEffects,
    MetricDefinition,
    NotFoundError,
    SAERef,
)
from saekit.schemas.card import citation_errors
from saekit.schemas.card_files import read_documents
from saekit.schemas.console import Progress
from saekit.schemas.version import __version__

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
        direction="higher", source="saekit.harness.cards.agreement"),
    "attribution_vs_ablation_mae": MetricDefinition(
        definition="mean over the exactly ablated latents of |attribution - exact ablation| (nats per firing token)",
        direction="lower", source="saekit.harness.cards.agreement"),
    "attribution_vs_ablation_median_rel_error": MetricDefinition(
        definition="median over the exactly ablated latents of |attribution - exact| / |exact|",
        direction="lower", source="saekit.harness.cards.agreement"),
    "attribution_vs_ablation_n_latents": MetricDefinition(
        definition="number of latents ablated exactly", direction="none", source="saekit.harness.cards.agreement"),
}
QUANTILE_EXAMPLES = 15
# With 5 top examples: 20 activating examples per card, enough for an explainer to see 10
# and a scorer to hold out the rest (issue 21); and this many windows where the latent is zero
NEGATIVE_EXAMPLES = 20
NEGATIVE_CANDIDATES = 4  # candidate windows tracked in the pass per non-activating window wanted
NEGATIVE_TOKENS = 32  # tokens of each non-activating window (SAEBench's are 2 x buffer + 1 = 21)
SAMPLES = 32  # windows sampled per latent (bottom-k sketch) for the quantile examples
# the pass captures the kept windows' values while they take at most this much memory
# (d_sae x (k + SAMPLES) x context float32: 87 MB for the demo SAE); beyond it card assembly
# re-runs the example windows instead
CAPTURE_BYTES = 1 << 30
CARD_BLOCK = 64  # latents per logit-effect product; ranks take whole blocks


def now_iso() -> str:
    """UTC now, or SOURCE_DATE_EPOCH when set (the reproducible-builds convention), so
    repeated checks can write byte-identical cards."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch and epoch.isdigit() else datetime.now(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def select_latents(fire_count: Any, n: int | str) -> list[int]:
    """The ``n`` most frequently firing latents (ties by lower index), or every latent for 'all'."""
    import torch

    d_sae = fire_count.shape[0]
    if n == "all" or (isinstance(n, int) and n >= d_sae) or n == -1:
        return list(range(d_sae))
    n = int(n)
    order = torch.sort(-fire_count.double(), stable=True).indices
    return [int(i) for i in order[:n] if fire_count[i] > 0]


def _decoder(tokenizer: Any, ids: Iterable[int]):
    """Token id -> its text: ``ids`` decoded in one call when the tokenizer is fast (a card
    set names far fewer ids than the vocabulary holds), any other id one at a time."""
    ids = sorted(set(ids))
    try:
        table = dict(zip(ids, tokenizer.batch_decode([[i] for i in ids])))
    except Exception:  # a tokenizer without batch_decode: one id at a time
        table = {}

    @lru_cache(maxsize=None)
    def tok_str(tid: int) -> str:
        text = table.get(tid)
        return text if text is not None else tokenizer.decode([tid])

    return tok_str


# --- the pass ---------------------------------------------------------------------------


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


def stream_latents(
    sae: Any, model: Any, tokens: TokenSet, *, hook_name: str, batch_size: int, special: Any,
    batches: Iterable[int] | None = None, grad: bool = True, k: int = 5, samples: int = SAMPLES,
    desc: str = "feature stats", windows: bool = True, negatives: int = NEGATIVE_EXAMPLES,
) -> Any:
    """LatentStats of every latent over the token set's windows (``batches``: the batch
    indices this rank runs; all by default), reduced across torch.distributed ranks. With
    ``grad`` each batch also runs one backward for every latent's attribution. With
    ``windows`` the per-token values of every kept example window (and each top window's
    loss and attribution) are captured as the window enters its latent's top or sample
    set, so build_cards and exact_ablations run no second pass over them (while that takes
    at most CAPTURE_BYTES). ``negatives``: non-activating windows wanted per latent
    (NEGATIVE_CANDIDATES times as many candidate windows are tracked; see LatentStats)."""
    import torch

    from saekit.harness.activations import run_to_hook
    from saekit.harness.latent_stats import LatentStats, attribution

    ctx = tokens.context_size
    n_rows = tokens.tokens.shape[0]
    todo = list(range(-(-n_rows // batch_size))) if batches is None else list(batches)
    capture = windows and sae.cfg.d_sae * (k + samples) * ctx * 4 <= CAPTURE_BYTES
    stats = LatentStats.empty(sae.cfg.d_sae, k=k, samples=samples, ctx=ctx if capture else None,
                              negatives=negatives * NEGATIVE_CANDIDATES, n_rows=n_rows)
    dev = sae.W_dec.device
    with Progress(desc, total=len(todo)) as bar:
        for b in todo:
            r0 = b * batch_size
            toks = tokens.tokens[r0 : r0 + batch_size].to(dev)
            mask = ~torch.isin(toks, special.to(dev))
            contrib = loss = None
            if grad:
                code, loss, g = spliced_loss(sae, model, toks, mask, hook_name, grad=True)
                contrib = attribution(code.values, code.indices, sae.W_dec, g)
            else:
                code = sae.encode(run_to_hook(model, toks, hook_name))
            stats.update(code.values, code.indices, row0=r0, ctx=ctx, mask=mask.reshape(-1), contrib=contrib,
                         loss=loss)
            bar.update()
    return stats.all_reduce()


def _window_values(sae: Any, model: Any, tokens: TokenSet, want: dict[int, set[int]], *, hook_name: str,
                   batch_size: int, special: Any) -> dict[tuple[int, int], list[float]]:
    """Per (window, latent) in ``want``: the latent's value at every token of the window,
    re-run in the window's own batch of the pass (same shapes, so the same values)."""
    import torch

    from saekit.harness.activations import run_to_hook

    out: dict[tuple[int, int], list[float]] = {}
    by_batch: dict[int, list[int]] = {}
    for r in sorted(want):
        by_batch.setdefault(r // batch_size, []).append(r)
    ctx = tokens.context_size
    dev = sae.W_dec.device
    with torch.inference_mode(), Progress("example windows", total=len(by_batch)) as bar:
        for b, rows in sorted(by_batch.items()):
            r0 = b * batch_size
            toks = tokens.tokens[r0 : r0 + batch_size].to(dev)
            keep = ~torch.isin(toks, special.to(dev)).reshape(-1, 1)
            code = sae.encode(run_to_hook(model, toks, hook_name))
            vals = (code.values.float() * keep).cpu().view(-1, ctx, code.values.shape[1])
            idx = code.indices.cpu().view(-1, ctx, code.indices.shape[1])
            for r in rows:
                for latent in sorted(want[r]):
                    v = (vals[r - r0] * (idx[r - r0] == latent)).sum(1).clamp(min=0)
                    out[(r, latent)] = v.tolist()
            bar.update()
    return out


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


def _example(tokens: TokenSet, tok_str: Any, r: int, values: list[float], *, right_context: int, bin: str,
             row_ids: Any = None) -> Any:
    ctx = tokens.context_size
    t = values.index(max(values[:ctx]))  # first maximum
    end = min(ctx, t + 1 + right_context)
    ids = (row_ids(r) if row_ids is not None else tokens.tokens[r].tolist())[:end]
    return ActivationExample(
        tokens=[tok_str(i) for i in ids],
        values=[float(v) for v in values[:end]],
        token_ids=ids,
        max_value=float(values[t]),
        max_position=t,
        source=ExampleSource(
            dataset=tokens.source,
            document=tokens.documents[r] if tokens.documents else None,
            position=tokens.positions[r] if tokens.positions else None,
        ),
        bin=bin,
    )


def _negative(tokens: TokenSet, row_strs: Any, r: int, latent: int, n_tokens: int, row_ids: Any) -> Any:
    """``n_tokens`` of window ``r``, where ``latent`` is zero throughout, at an offset drawn
    from (window, latent), with its zero values (bin 'negative'). ``row_strs(r)``: the
    window's token texts (latents share the few candidate windows, so they are made once)."""
    ctx = tokens.context_size
    n = min(n_tokens, ctx)
    start = (r * 7919 + latent * 104729) % (ctx - n + 1)
    ids = row_ids(r)[start : start + n]
    pos = tokens.positions[r] + start if tokens.positions else None
    return ActivationExample(
        tokens=row_strs(r)[start : start + n], values=[0.0] * len(ids), token_ids=ids, max_value=0.0,
        source=ExampleSource(dataset=tokens.source, document=tokens.documents[r] if tokens.documents else None,
                             position=pos),
        bin="negative",
    )


def build_cards(
    sae: Any,
    model: Any,
    tokenizer: Any,
    stats: Any,
    tokens: TokenSet,
    *,
    sae_ref: SAERef,
    hook_name: str,
    latents: list[int],
    batch_size: int,
    downstream_latents: Iterable[int] = (),
    attribution: bool = True,
    n_examples: int = 5,
    n_quantile_examples: int = QUANTILE_EXAMPLES,
    n_negative_examples: int = NEGATIVE_EXAMPLES,
    negative_tokens: int = NEGATIVE_TOKENS,
    right_context: int = 8,
    n_logits: int = 10,
    n_bins: int = 16,
    downstream_rows: int = 4,
    distributed: bool = False,
) -> tuple[list[FeatureCard], dict[str, float]]:
    """One FeatureCard per latent in ``latents`` from the pass's LatentStats, and the
    agreement of attribution with exact ablation on ``downstream_latents``.

    With ``distributed`` every torch.distributed rank calls this with the same (all-reduced)
    stats: each builds and returns the cards of every world-th block of CARD_BLOCK latents
    and runs its share of the exact ablations; each card is built as one process builds it,
    so the bytes are the same (the caller gathers the serialized cards on rank 0)."""
    import torch

    from saekit.harness.dist import broadcast_object, rank_world
    from saekit.harness.latent_stats import coarsen, quantile_picks
    from saekit.harness.model import unembedding
    from saekit.harness.text import special_token_ids

    rank, world = rank_world() if distributed else (0, 1)

    special = torch.tensor(special_token_ids(tokenizer), dtype=torch.long)
    n_tok = stats.n_tokens
    fp = tokens.fingerprint
    info = getattr(model, "saekit_info", None)
    prov = CardProvenance(
        tool="saekit", tool_version=__version__, created_at=broadcast_object(now_iso()) if world > 1 else now_iso(),
        model=info.id if info else None, model_revision=info.revision if info else None,
        hook_name=hook_name, dataset=tokens.source,
    )
    extra = {"saekit": {"token_set": tokens.config(), "hook_name": hook_name, "batch_size": batch_size,
                        "histogram": "log grid: 16 bins per decade from 1e-4 (saekit.harness.latent_stats.GRID)"}}
    task = f"next-token prediction ({tokens.source}, {tokens.split} split)"

    # this rank's latents: every world-th block of CARD_BLOCK, so each block's logit-effect
    # product has the same rows as in one process (a product's last bits depend on its shape)
    blocks = [latents[i : i + CARD_BLOCK] for i in range(0, len(latents), CARD_BLOCK)][rank::world]
    mine = [L for block in blocks for L in block]
    # the windows every example needs: captured by the pass, else one re-run of their batches
    picks: dict[int, list[tuple[int, float, str]]] = {}
    for L in mine:
        top = [(r, v, "top") for r, v in stats.top(L)[:n_examples]]
        picks[L] = top + quantile_picks(stats.sample(L), {r for r, _, _ in top}, n_quantile_examples)
    if stats.captured and n_examples <= stats.top_val.shape[1]:
        values = {}
        for L in mine:
            rows = [r for r, _, _ in picks[L]]
            values.update(zip([(r, L) for r in rows], stats.window_values(L, rows)))
    else:
        want: dict[int, set[int]] = {}
        for L in mine:
            for r, _, _ in picks[L]:
                want.setdefault(r, set()).add(L)
        values = _window_values(sae, model, tokens, want, hook_name=hook_name, batch_size=batch_size,
                                special=special)

    down = [L for L in downstream_latents if int(stats.fire_count[L]) > 0]
    exact = exact_ablations(sae, model, tokens, stats, down, hook_name=hook_name, batch_size=batch_size,
                            special=special, max_rows=downstream_rows, distributed=distributed) if down else {}
    agree = agreement([exact[L]["delta"] / max(exact[L]["n"], 1) for L in down],
                      [exact[L]["attr"] / max(exact[L]["n"], 1) for L in down]) if down else {}

    # logit effects of every latent here: W_dec @ W_U (final norm gain folded), a block at a time
    W_U = unembedding(model).float()
    tv: list[list[float]] = []
    ti: list[list[int]] = []
    bv: list[list[float]] = []
    bi: list[list[int]] = []
    for block in blocks:
        with torch.no_grad():
            effects = (sae.W_dec[block].float() @ W_U).cpu()  # [block, vocab]
        top, bot = torch.topk(effects, n_logits, dim=1), torch.topk(-effects, n_logits, dim=1)
        tv += top.values.tolist()
        ti += top.indices.tolist()
        bv += bot.values.tolist()
        bi += bot.indices.tolist()
    del W_U
    # the text of every token the cards show, decoded at once
    negs = {L: stats.negatives(L, n_negative_examples) for L in mine}
    rows = sorted({r for L in mine for r, _, _ in picks[L]} | {r for L in mine for r in negs[L]})
    shown = {t for ids in ti + bi for t in ids}
    shown.update(torch.unique(tokens.tokens[rows]).tolist() if rows else [])
    tok_str = _decoder(tokenizer, shown)

    row_ids = lru_cache(maxsize=None)(lambda r: tokens.tokens[r].tolist())  # a window's ids, listed once
    row_strs = lru_cache(maxsize=None)(lambda r: [tok_str(i) for i in row_ids(r)])
    attr, attr_n = stats.attribution().tolist(), stats.attr_count.tolist()
    mean, mx, fire = stats.mean().tolist(), stats.act_max.tolist(), stats.fire_count.tolist()
    cards: list[FeatureCard] = []
    with Progress("feature cards", total=len(mine)) as bar:
        j = 0  # position in mine
        for block in blocks:
            hist_rows = stats.hist[block].tolist()
            for i, L in enumerate(block):
                fires = fire[L]
                hist = coarsen(hist_rows[i], n_bins) if fires else None
                st = ActivationStats(
                    density=fires / max(n_tok, 1),
                    mean=mean[L] if fires else None,
                    max=mx[L] if fires else None,
                    n_tokens=n_tok,
                    histogram=Histogram(bin_edges=hist[0], counts=hist[1]) if hist else None,
                    data_fingerprint=fp,
                )
                exs = [_example(tokens, tok_str, r, values[(r, L)], right_context=right_context, bin=b,
                                row_ids=row_ids) for r, _, b in picks[L]]
                downstream: list[DownstreamEval] = []
                if attribution and fires and attr_n[L]:
                    downstream.append(DownstreamEval(
                        task=task, metric=DOWNSTREAM_METRIC, value=attr[L], method=ATTRIBUTION,
                        n_tokens=attr_n[L],
                        details={"definition": ATTRIBUTION_DEFINITION, "hook_name": hook_name},
                    ))
                if L in exact and exact[L]["n"]:
                    e = exact[L]
                    downstream.append(DownstreamEval(
                        task=task, metric=DOWNSTREAM_METRIC, value=e["delta"] / e["n"], method=ABLATION,
                        n_tokens=e["n"],
                        details={"definition": ABLATION_DEFINITION, "hook_name": hook_name, "windows": e["rows"],
                                 "loss_sum_with_sae": e["base"], "loss_sum_latent_ablated": e["ablated"],
                                 "attribution_same_windows": e["attr"] / e["n"]},
                    ))
                cards.append(FeatureCard(
                    sae=sae_ref, index=L, stats=st,
                    top_examples=[x for x in exs if x.bin == "top"],
                    quantile_examples=[x for x in exs if x.bin != "top"],
                    negative_examples=[_negative(tokens, row_strs, r, L, negative_tokens, row_ids) for r in negs[L]],
                    logit_effects=LogitEffects(
                        positive=[LogitEffect(token=tok_str(t), token_id=t, value=v) for v, t in zip(tv[j], ti[j])],
                        negative=[LogitEffect(token=tok_str(t), token_id=t, value=-v) for v, t in zip(bv[j], bi[j])],
                    ),
                    downstream=downstream, tags=["dead"] if not fires else [], provenance=prov, extra=extra,
                ))
                j += 1
                bar.update()
    return cards, agree


# --- files -----------------------------------------------------------------------------


def read_annotations(path: Path) -> dict[int, list[Annotation]]:
    """Annotations by latent index from a user's file (.jsonl, .jsonl.gz or .json: a list) of
    ``{index, label, description}`` rows, saekit cards, or Neuronpedia features."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError("no such annotation file", where=str(path))
    rows = list(read_documents(path))  # bounded, as every card file (saekit.schemas.card_files)
    out: dict[int, list[Annotation]] = {}
    for n, doc in rows:
        where = f"{path}:{n}"
        if not isinstance(doc, dict) or not isinstance(doc.get("index"), (int, str)):
            raise InputError("expected an object with an integer 'index'", where=where)
        try:
            if "schema_version" in doc and "sae" in doc:
                anns = FeatureCard.model_validate(doc).annotations
            elif "explanations" in doc or "pos_str" in doc or "modelId" in doc:
                from saekit.schemas.convert import from_neuronpedia

                anns = from_neuronpedia(doc).annotations
            else:
                anns = [
                    Annotation(
                        label=doc.get("label"),
                        description=doc.get("description"),
                        source=doc.get("source", "human"),
                        author=doc.get("author"),
                        explainer_model=doc.get("explainer_model"),
                    )
                ]
            index = int(doc["index"])
        except InputError as err:
            raise InputError(err.message, where=where) from None
        except Exception as err:
            raise InputError(f"bad annotation: {str(err).splitlines()[0]}", where=where) from None
        out.setdefault(index, []).extend(anns)
    return out


def merge_annotations(cards: list[FeatureCard], annotations: dict[int, list[Annotation]]) -> tuple[list[FeatureCard], int]:
    """Cards with the user's annotations added (computed fields untouched; an annotation
    already on the card is not added twice). Returns (cards, number of cards annotated)."""
    out, n = [], 0
    for card in cards:
        new = [a for a in annotations.get(card.index, []) if a not in card.annotations]
        if new:
            card = card.model_copy(update={"annotations": [*card.annotations, *new]})
            n += 1
        out.append(card)
    return out, n


# --- verification ----------------------------------------------------------------------


@dataclass
class CardCheck:
    index: int
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    results: list[CardCheck]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def lying(self) -> list[CardCheck]:
        return [r for r in self.results if not r.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "n_cards": len(self.results),
            "n_lying": len(self.lying),
            "lying": [{"index": r.index, "problems": r.problems} for r in self.lying],
        }


def verify_cards(
    cards: list[FeatureCard],
    sae: Any,
    model: Any,
    tokenizer: Any,
    *,
    density_atol: float = 2e-3,
    density_rtol: float = 0.05,
    value_atol: float = 1e-3,
    value_rtol: float = 1e-3,
    count_tol: float = 0.01,
    attribution_tol: float = 0.05,
    ablation_tol: float = 0.1,
    hook_name: str | None = None,
) -> VerifyReport:
    """Re-check every number each card states against the SAE and model, and name the
    field that disagrees: stats (density, mean, max, n_tokens, histogram) and the downstream
    effects, recomputed in one streaming pass over the token set the card names; every top
    and quantile example (re-run from its token_ids, and the best top example must reach the
    recomputed max); logit effects (W_dec[i] @ W_U: each listed value, and that no unlisted
    token beats the listed ones). Tolerances: values ``value_atol + value_rtol * |v|``,
    histogram counts ``count_tol`` of the latent's firing tokens (at least 1), attribution
    ``attribution_tol`` relative (it is recomputed by the same pass), exact ablation
    ``ablation_tol`` relative (windows are re-run in other batches)."""
    import torch

    from saekit.harness.activations import run_to_hook
    from saekit.harness.latent_stats import GRID, N_GRID
    from saekit.harness.model import unembedding
    from saekit.harness.datasets import token_set
    from saekit.harness.text import special_token_ids

    special = torch.tensor(special_token_ids(tokenizer), dtype=torch.long)
    sha = sae.ref.sha256 if sae.ref else None
    results = {c.index: CardCheck(c.index) for c in cards}
    d_sae = sae.cfg.d_sae

    def close(claimed: float, got: float, atol: float = value_atol, rtol: float = value_rtol) -> bool:
        return abs(claimed - got) <= atol + rtol * max(abs(claimed), abs(got))

    def latent_values(ids: Any, hook: str, latent: int) -> tuple[Any, Any, Any]:
        """(its values [ctx], its pre-activation [ctx], the k-th largest value per token [ctx])."""
        acts = run_to_hook(model, ids, hook)
        flat = acts.reshape(-1, sae.cfg.d_in)
        code = sae.encode(flat)
        vals = (code.values.float() * (code.indices == latent)).sum(1).clamp(min=0)
        vals[torch.isin(ids.reshape(-1), special)] = 0.0
        from saekit.kernels.reference import pre_activations

        pre = torch.relu(pre_activations(flat, sae)[:, latent])
        return vals, pre, code.values[:, -1].float()

    for c in cards:
        r = results[c.index]
        if c.index >= d_sae:
            r.problems.append(f"index: {c.index} >= d_sae {d_sae}")
        if sha and c.sae.sha256 and c.sae.sha256 != sha:
            r.problems.append(f"sae.sha256: card is for {c.sae.sha256[:12]}, checked against {sha[:12]}")
        r.problems += [f"{path}: {msg}" for path, msg in citation_errors(c)]  # what an annotation says it showed
    valid = [c for c in cards if c.index < d_sae]

    # stats and downstream effects: one pass per token set the cards name
    groups: dict[str, list[FeatureCard]] = {}
    for c in valid:
        cfg = (c.extra.get("saekit") or {}).get("token_set")
        if cfg and (c.stats is not None or c.downstream):
            key = json.dumps({"ts": cfg, "hook": (c.extra.get("saekit") or {}).get("hook_name"),
                              "bs": (c.extra.get("saekit") or {}).get("batch_size", 4)}, sort_keys=True)
            groups.setdefault(key, []).append(c)
        elif c.stats is not None or c.downstream:
            r = results[c.index]
            r.problems.append("extra.saekit.token_set: the card names no token set; its stats cannot be re-run")
    for key, group in groups.items():
        spec = json.loads(key)
        hook = hook_name or spec["hook"] or sae.cfg.hook_name
        ts_cfg = dict(spec["ts"])  # TokenSet.config(): its corpus is the dataset (a Hub one pinned)
        ts = token_set(tokenizer, dataset=ts_cfg.pop("corpus", "pydoc"), **ts_cfg)
        bs = int(spec["bs"])
        grad = any(d.method == ATTRIBUTION for c in group for d in c.downstream)
        st = stream_latents(sae, model, ts, hook_name=hook, batch_size=bs, special=special, grad=grad,
                            desc="verify: feature stats")
        mean, attr = st.mean().tolist(), st.attribution().tolist()
        ablate = sorted({c.index for c in group for d in c.downstream if d.method == ABLATION})
        exact = exact_ablations(sae, model, ts, st, ablate, hook_name=hook, batch_size=bs, special=special,
                                max_rows=max([int(d.details.get("windows", 4)) for c in group for d in c.downstream
                                              if d.method == ABLATION] or [4])) if ablate else {}
        for c in group:
            r = results[c.index]
            L = c.index
            fires = int(st.fire_count[L])
            s = c.stats
            if s is not None:
                if s.data_fingerprint and s.data_fingerprint != ts.fingerprint:
                    r.problems.append(f"stats.data_fingerprint: token set {ts.fingerprint[:12]} differs from the card's "
                                      f"{s.data_fingerprint[:12]}")
                    continue
                r.checked.append("stats")
                got = fires / max(st.n_tokens, 1)
                tol = max(density_atol, density_rtol * s.density)
                if abs(got - s.density) > tol:
                    r.problems.append(f"stats.density: {s.density:.6g} claimed, {got:.6g} measured (tolerance {tol:.2g})")
                if s.n_tokens is not None and s.n_tokens != st.n_tokens:
                    r.problems.append(f"stats.n_tokens: {s.n_tokens} claimed, {st.n_tokens} counted")
                for name, got_v in (("mean", mean[L] if fires else None), ("max", float(st.act_max[L]) if fires else None)):
                    claimed = getattr(s, name)
                    if claimed is None and got_v is None:
                        continue
                    if claimed is None or got_v is None or not close(claimed, got_v):
                        r.problems.append(f"stats.{name}: {claimed} claimed, {got_v} measured")
                h = s.histogram
                if h is not None:
                    grid = GRID.tolist()
                    pos = [grid.index(e) if e in grid else None for e in h.bin_edges]
                    if None in pos or len(h.bin_edges) != len(h.counts) + 1:
                        r.problems.append("stats.histogram.bin_edges: not on saekit's histogram grid; cannot be verified")
                    else:
                        row = st.hist[L].tolist()
                        tol_c = max(1.0, count_tol * fires)
                        for j, (a, b) in enumerate(zip(pos, pos[1:])):
                            got_c = float(sum(row[a:b]))
                            if abs(got_c - h.counts[j]) > tol_c:
                                r.problems.append(f"stats.histogram.counts[{j}]: {h.counts[j]:g} claimed, {got_c:g} measured")
                                break
                        outside = sum(row[: pos[0]]) + sum(row[pos[-1] : N_GRID])
                        if outside > tol_c:
                            r.problems.append(f"stats.histogram: {outside} activations fall outside its bins")
            for j, d in enumerate(c.downstream):
                where = f"downstream[{j}]"
                if d.method == ATTRIBUTION:
                    r.checked.append(where)
                    if not close(d.value, attr[L], atol=1e-6, rtol=attribution_tol):
                        r.problems.append(f"{where}.value ({ATTRIBUTION}): {d.value:.6g} claimed, {attr[L]:.6g} recomputed")
                    if d.n_tokens is not None and d.n_tokens != int(st.attr_count[L]):
                        r.problems.append(f"{where}.n_tokens: {d.n_tokens} claimed, {int(st.attr_count[L])} counted")
                elif d.method == ABLATION and L in exact and exact[L]["n"]:
                    r.checked.append(where)
                    got = exact[L]["delta"] / exact[L]["n"]
                    if not close(d.value, got, atol=1e-4, rtol=ablation_tol):
                        r.problems.append(f"{where}.value ({ABLATION}): {d.value:.6g} claimed, {got:.6g} re-measured")
                elif d.method in (ATTRIBUTION, ABLATION):
                    r.problems.append(f"{where}: {d.method} claimed but the latent does not fire on the token set")

    # examples: re-run each example's token ids
    todo = [(c, f"{field}[{j}]", ex) for c in valid for field in ("top_examples", "quantile_examples")
            for j, ex in enumerate(getattr(c, field))]
    with torch.inference_mode(), Progress("verify: examples", total=len(todo)) as bar:
        for c, where, ex in todo:
            r = results[c.index]
            bar.update()
            if not ex.token_ids:
                r.problems.append(f"{where}: no token_ids, cannot be reproduced")
                continue
            hook = hook_name or (c.extra.get("saekit") or {}).get("hook_name") or sae.cfg.hook_name
            vals, pre, kth = latent_values(torch.tensor([ex.token_ids]), hook, c.index)
            claimed = torch.tensor(ex.values, dtype=torch.float32)
            if claimed.shape != vals.shape:
                r.problems.append(f"{where}.values: {len(ex.values)} values for {len(ex.token_ids)} tokens")
                continue
            tol = value_atol + value_rtol * float(claimed.abs().max())
            diff = (vals - claimed).abs()
            if sae.cfg.architecture in ("topk", "batchtopk"):
                # a latent within tolerance of the k-th largest value may fall in or out of
                # the top k with float noise: either 0 or its pre-activation is then right
                tie = ((pre - kth).abs() <= tol) & ((claimed == 0) | ((claimed - pre).abs() <= tol))
                diff = torch.where(tie, torch.zeros_like(diff), diff)
            r.checked.append(where)
            if float(diff.max()) > tol:
                at = int(diff.argmax())
                r.problems.append(f"{where}.values: {float(claimed[at]):.5g} at token {at} claimed, "
                                  f"{float(vals[at]):.5g} reproduced")
            elif ex.max_value is not None and ex.max_position is not None:
                got = float(vals[ex.max_position])
                if abs(got - ex.max_value) > tol:
                    r.problems.append(f"{where}.max_value: {ex.max_value:.5g} claimed, {got:.5g} reproduced")
    for c in valid:  # the top example is the top: it reaches the measured max
        r = results[c.index]
        if c.top_examples and c.stats is not None and c.stats.max is not None and c.top_examples[0].max_value is not None:
            if not close(c.top_examples[0].max_value, c.stats.max) and not any(p.startswith("stats.max") for p in r.problems):
                r.problems.append(f"top_examples[0].max_value: {c.top_examples[0].max_value:.5g}, below the latent's "
                                  f"max {c.stats.max:.5g}")

    # logit effects: W_dec[i] @ W_U, the listed tokens and that none unlisted beats them
    with_logits = [c for c in valid if c.logit_effects is not None]
    if with_logits:
        W_U = unembedding(model).float()
        for i in range(0, len(with_logits), 512):
            chunk = with_logits[i : i + 512]
            with torch.no_grad():
                eff = (sae.W_dec[[c.index for c in chunk]].float() @ W_U).cpu()
            for row, c in zip(eff, chunk):
                r = results[c.index]
                r.checked.append("logit_effects")
                for side, sign in (("positive", 1.0), ("negative", -1.0)):
                    listed = getattr(c.logit_effects, side)
                    for j, e in enumerate(listed):
                        if e.token_id is None or not 0 <= e.token_id < row.numel():
                            r.problems.append(f"logit_effects.{side}[{j}].token_id: missing or outside the vocabulary")
                            break
                        got = float(row[e.token_id])
                        if not close(e.value, got):
                            r.problems.append(f"logit_effects.{side}[{j}].value: {e.value:.5g} claimed for "
                                              f"{e.token!r}, {got:.5g} computed")
                            break
                    else:
                        if listed:
                            ids = torch.tensor([e.token_id for e in listed])
                            others = sign * row.clone()
                            others[ids] = -float("inf")
                            weakest = min(sign * e.value for e in listed)
                            best = float(others.max())
                            if best > weakest + value_atol + value_rtol * abs(weakest):
                                r.problems.append(f"logit_effects.{side}: token id {int(others.argmax())} "
                                                  f"({sign * best:.5g}) is missing from the listed top tokens")
    return VerifyReport([results[c.index] for c in cards])
