"""Card assembly: one FeatureCard per latent from the sweep's LatentStats.

A card's top examples are exact model inputs: each starts at its context window's first
token (BOS) and ends a few tokens after the maximum, so ``saekit cards verify`` can re-run
the example's ``token_ids`` through the model and the SAE and reproduce every value
without the corpus. ``extra["saekit"]["token_set"]`` holds the token-set config the stats
came from, so the density can be recomputed on the same tokens.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Iterable, Iterator

from saekit.harness.downstream import (
    ABLATION,
    ABLATION_DEFINITION,
    ATTRIBUTION,
    ATTRIBUTION_DEFINITION,
    DOWNSTREAM_METRIC,
)
from saekit.harness.text import TokenSet
from saekit.schemas import CardProvenance, DownstreamEval, FeatureCard, SAERef
from saekit.schemas.benchmark import DEFAULT_NEGATIVE_EXAMPLES, DEFAULT_QUANTILE_EXAMPLES
from saekit.schemas.console import Progress
from saekit.schemas.version import __version__

NEGATIVE_TOKENS = 32  # tokens of each non-activating window (SAEBench's are 2 x buffer + 1 = 21)
# latents per logit-effect product; ranks take whole blocks. 256 rows amortize the BLAS's
# packing of W_U (~25% less time than 64 on one CPU thread; the same bits there at any rows)
CARD_BLOCK = 256


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


def _example(ctx: int, r: int, values: list[float], row_ids: Any, row_strs: Any, source: Any, *,
             right_context: int, bin: str) -> dict[str, Any]:
    """An ActivationExample's fields: window ``r`` from its first token to ``right_context``
    tokens past the (first) maximum. Plain data: the card's validator checks it (in one call
    per card, far cheaper than a model per example)."""
    t = values.index(max(values[:ctx]))  # first maximum
    end = min(ctx, t + 1 + right_context)
    return {"tokens": row_strs(r)[:end], "values": values[:end], "token_ids": row_ids(r)[:end],
            "max_value": values[t], "max_position": t, "source": source(r), "bin": bin}


def _negative(tokens: TokenSet, row_strs: Any, r: int, latent: int, n_tokens: int, row_ids: Any) -> dict[str, Any]:
    """``n_tokens`` of window ``r``, where ``latent`` is zero throughout, at an offset drawn
    from (window, latent), with its zero values (bin 'negative'), as an ActivationExample's
    fields. ``row_strs(r)``: the window's token texts (latents share the few candidate
    windows, so they are made once)."""
    ctx = tokens.context_size
    n = min(n_tokens, ctx)
    start = (r * 7919 + latent * 104729) % (ctx - n + 1)
    ids = row_ids(r)[start : start + n]
    pos = tokens.positions[r] + start if tokens.positions else None
    return {"tokens": row_strs(r)[start : start + n], "values": [0.0] * len(ids), "token_ids": ids, "max_value": 0.0,
            "source": {"dataset": tokens.source, "document": tokens.documents[r] if tokens.documents else None,
                       "position": pos},
            "bin": "negative"}


def _example_values(sae: Any, model: Any, tokens: TokenSet, stats: Any, mine: list[int], *, n_examples: int,
                    n_quantile: int, hook_name: str, batch_size: int, special: Any) -> tuple[dict, dict]:
    """Per latent its example windows (window, activation, bin), and per (window, latent) the
    latent's value at every token: captured by the sweep, else one re-run of their batches."""
    from saekit.harness.latent_stats import quantile_picks

    picks: dict[int, list[tuple[int, float, str]]] = {}
    for L in mine:
        top = [(r, v, "top") for r, v in stats.top(L)[:n_examples]]
        picks[L] = top + quantile_picks(stats.sample(L), {r for r, _, _ in top}, n_quantile)
    if stats.captured and n_examples <= stats.top_val.shape[1]:
        return picks, stats.windows_values({L: [r for r, _, _ in picks[L]] for L in mine})
    want: dict[int, set[int]] = {}
    for L in mine:
        for r, _, _ in picks[L]:
            want.setdefault(r, set()).add(L)
    return picks, _window_values(sae, model, tokens, want, hook_name=hook_name, batch_size=batch_size,
                                 special=special)


def _logit_effects(sae: Any, model: Any, blocks: list[list[int]], n_logits: int) -> list[tuple[list, list, list, list]]:
    """Per latent of ``blocks`` (in order): (top values, top ids, bottom values, bottom ids) of
    W_dec[i] @ W_U (final norm gain folded), one product per block."""
    import torch

    from saekit.harness.model import unembedding

    W_U = unembedding(model).float()
    out = []
    for block in blocks:
        with torch.no_grad():
            effects = (sae.W_dec[block].float() @ W_U).cpu()  # [block, vocab]
        top = torch.topk(effects, n_logits, dim=1)
        bot = torch.topk(effects.neg_(), n_logits, dim=1)  # -effects (exact) without a second block in memory
        out += zip(top.values.tolist(), top.indices.tolist(), bot.values.tolist(), bot.indices.tolist())
    return out


def _downstream(L: int, fires: int, attr: float, attr_n: int, exact: dict[int, dict[str, Any]], *, task: str,
                hook_name: str, attribution: bool) -> list[DownstreamEval]:
    """A card's downstream effects: the attribution estimate, and exact ablation when run."""
    out: list[DownstreamEval] = []
    if attribution and fires and attr_n:
        out.append(DownstreamEval(
            task=task, metric=DOWNSTREAM_METRIC, value=attr, method=ATTRIBUTION, n_tokens=attr_n,
            details={"definition": ATTRIBUTION_DEFINITION, "hook_name": hook_name},
        ))
    if L in exact and exact[L]["n"]:
        e = exact[L]
        out.append(DownstreamEval(
            task=task, metric=DOWNSTREAM_METRIC, value=e["delta"] / e["n"], method=ABLATION, n_tokens=e["n"],
            details={"definition": ABLATION_DEFINITION, "hook_name": hook_name, "windows": e["rows"],
                     "loss_sum_with_sae": e["base"], "loss_sum_latent_ablated": e["ablated"],
                     "attribution_same_windows": e["attr"] / e["n"]},
        ))
    return out


def card_blocks(latents: list[int], *, distributed: bool = False) -> list[list[int]]:
    """This rank's latents: every world-th block of CARD_BLOCK, so each block's logit-effect
    product has the same rows as in one process (a product's last bits depend on its shape)."""
    from saekit.harness.dist import rank_world

    rank, world = rank_world() if distributed else (0, 1)
    return [latents[i : i + CARD_BLOCK] for i in range(0, len(latents), CARD_BLOCK)][rank::world]


def build_cards(*args: Any, **kwargs: Any) -> list[FeatureCard]:
    """Every card of ``iter_cards`` (same arguments), as a list."""
    return list(iter_cards(*args, **kwargs))


def iter_cards(
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
    exact: dict[int, dict[str, Any]] | None = None,
    attribution: bool = True,
    n_examples: int = 5,
    n_quantile_examples: int = DEFAULT_QUANTILE_EXAMPLES,
    n_negative_examples: int = DEFAULT_NEGATIVE_EXAMPLES,
    negative_tokens: int = NEGATIVE_TOKENS,
    right_context: int = 8,
    n_logits: int = 10,
    n_bins: int = 16,
    distributed: bool = False,
) -> Iterator[FeatureCard]:
    """One FeatureCard per latent in ``latents`` from the sweep's LatentStats, with the exact
    ablations ``exact`` (saekit.harness.downstream.exact_ablations) where run. Yielded one at a
    time, so a caller that writes each card as it comes never holds the set's ~250 Python
    objects per card at once (whose garbage-collector passes cost as much as building them).

    With ``distributed`` every torch.distributed rank calls this with the same (all-reduced)
    stats and builds the cards of its blocks (``card_blocks``); each card is built as one
    process builds it, so the bytes are the same (the caller gathers them on rank 0)."""
    import torch

    from saekit.harness.dist import broadcast_object, rank_world
    from saekit.harness.latent_stats import coarsen_rows
    from saekit.harness.text import special_token_ids

    world = rank_world()[1] if distributed else 1
    exact = exact or {}
    info = getattr(model, "saekit_info", None)
    prov = CardProvenance(
        tool="saekit", tool_version=__version__, created_at=broadcast_object(now_iso()) if world > 1 else now_iso(),
        model=info.id if info else None, model_revision=info.revision if info else None,
        hook_name=hook_name, dataset=tokens.source,
    )
    extra = {"saekit": {"token_set": tokens.config(), "hook_name": hook_name, "batch_size": batch_size,
                        "histogram": "log grid: 16 bins per decade from 1e-4 (saekit.harness.latent_stats.GRID)"}}
    task = f"next-token prediction ({tokens.source}, {tokens.split} split)"
    blocks = card_blocks(latents, distributed=distributed)
    mine = [L for block in blocks for L in block]
    special = torch.tensor(special_token_ids(tokenizer), dtype=torch.long)
    picks, values = _example_values(sae, model, tokens, stats, mine, n_examples=n_examples,
                                    n_quantile=n_quantile_examples, hook_name=hook_name, batch_size=batch_size,
                                    special=special)
    logits = _logit_effects(sae, model, blocks, n_logits)
    # the text of every token the cards show, decoded at once
    negs = stats.negatives_of(mine, n_negative_examples)
    rows = sorted({r for L in mine for r, _, _ in picks[L]} | {r for L in mine for r in negs[L]})
    shown = {t for _, ti, _, bi in logits for t in ti + bi}
    shown.update(torch.unique(tokens.tokens[rows]).tolist() if rows else [])
    tok_str = _decoder(tokenizer, shown)
    row_ids = lru_cache(maxsize=None)(lambda r: tokens.tokens[r].tolist())  # a window's ids, listed once
    row_strs = lru_cache(maxsize=None)(lambda r: [tok_str(i) for i in row_ids(r)])
    source = lru_cache(maxsize=None)(lambda r: {  # an example's ExampleSource fields, shared by its window
        "dataset": tokens.source, "document": tokens.documents[r] if tokens.documents else None,
        "position": tokens.positions[r] if tokens.positions else None})
    attr, attr_n = stats.attribution().tolist(), stats.attr_count.tolist()
    mean, mx, fire = stats.mean().tolist(), stats.act_max.tolist(), stats.fire_count.tolist()
    hists = coarsen_rows(stats.hist[mine], n_bins) if mine else []
    n_tok, ctx = stats.n_tokens, tokens.context_size
    data_fp = tokens.fingerprint  # a hash of every token id: once, not per card
    # sub-objects go in as plain dicts: FeatureCard validates the whole card (strict, as a model
    # per field would) in one call instead of ~60 Python model constructions per card
    with Progress("feature cards", total=len(mine)) as bar:
        for L, hist, (tv, ti, bv, bi) in zip(mine, hists, logits):
            fires = fire[L]
            exs = [_example(ctx, r, values[(r, L)], row_ids, row_strs, source, right_context=right_context, bin=b)
                   for r, _, b in picks[L]]
            yield FeatureCard(
                sae=sae_ref, index=L,
                stats={"density": fires / max(n_tok, 1), "mean": mean[L] if fires else None,
                       "max": mx[L] if fires else None, "n_tokens": n_tok,
                       "histogram": {"bin_edges": hist[0], "counts": hist[1]} if fires and hist else None,
                       "data_fingerprint": data_fp},
                top_examples=[x for x in exs if x["bin"] == "top"],
                quantile_examples=[x for x in exs if x["bin"] != "top"],
                negative_examples=[_negative(tokens, row_strs, r, L, negative_tokens, row_ids) for r in negs[L]],
                logit_effects={
                    "positive": [{"token": tok_str(t), "token_id": t, "value": v} for v, t in zip(tv, ti)],
                    "negative": [{"token": tok_str(t), "token_id": t, "value": -v} for v, t in zip(bv, bi)],
                },
                downstream=_downstream(L, fires, attr[L], attr_n[L], exact, task=task, hook_name=hook_name,
                                       attribution=attribution),
                tags=["dead"] if not fires else [], provenance=prov, extra=extra,
            )
            bar.update()
