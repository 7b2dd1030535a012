"""The static feature browser: one self-contained HTML page with the cards' data inlined.

No network, no server, no fetch: it opens from the file (``file://``) and from the Hub alike.
Built for every latent of wide SAEs (tens of thousands): the page carries

- an index (``<script id="saekit-data">``): one compact row per latent (label, density, max,
  mean, downstream effect, the tokens it fires on as ids into one shared vocabulary, the
  explanation's score and, when a label names it otherwise, its explanation), parsed
  at load, so the list paints at once and search/sort run over every latent in memory;
- detail blocks (``<script class="saekit-detail">``), one per shard of ``SHARD`` latents:
  top and quantile examples, histogram, logit effects, downstream effects, the explanation
  and its scores against their controls, parsed only when a card of that shard opens.

Labels, explanations and scores are read as saekit.releases.annotations reads them (an
explained latent is listed by its explanation).

State lives in the URL hash (``index.html#q=code&sort=max&latent=SAE_ID:17``), so a link
opens a given view (and the headless-Chromium tests drive it that way).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from importlib import resources
from typing import Any

from saekit.releases import annotations

MAX_EXAMPLES = 5
MAX_QUANTILE = 4
WINDOW = 20  # tokens of each example kept around its maximum
MAX_LOGITS = 6
MAX_FIRING = 8  # tokens a latent fires on, kept for search
SHARD = 512  # latents per detail block


def _round(x: Any, digits: int = 4) -> float | None:
    return None if x is None else float(f"{float(x):.{digits}g}")


class _Vocab:
    """Token strings stored once; rows refer to them by position."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.strings: list[str] = []

    def __call__(self, tok: Any) -> int:
        tok = str(tok)
        i = self.ids.get(tok)
        if i is None:
            i = self.ids[tok] = len(self.strings)
            self.strings.append(tok)
        return i


def _window(ex: dict[str, Any]) -> tuple[list[str], list[float], int]:
    tokens, values = list(ex.get("tokens") or []), [float(v) for v in ex.get("values") or []]
    n = min(len(tokens), len(values))
    tokens, values = tokens[:n], values[:n]
    at = ex.get("max_position")
    if at is None or not 0 <= at < n:
        at = max(range(n), key=values.__getitem__) if n else 0
    if n > WINDOW:
        start = max(0, min(at - WINDOW // 2, n - WINDOW))
        tokens, values, at = tokens[start : start + WINDOW], values[start : start + WINDOW], at - start
    return tokens, values, at


def firing_tokens(examples: list[dict[str, Any]], n: int = MAX_FIRING) -> list[str]:
    """The distinct tokens the latent fires on in its examples, strongest first (what a
    token search matches)."""
    best: dict[str, float] = {}
    for ex in examples:
        for tok, v in zip(ex.get("tokens") or [], ex.get("values") or []):
            if v is not None and v > 0 and v > best.get(str(tok), 0.0):
                best[str(tok)] = float(v)
    return [t for t, _ in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def _effect(card: dict[str, Any]) -> tuple[float | None, str | None]:
    """The card's headline downstream effect: exact ablation when measured, else attribution."""
    down = card.get("downstream") or []
    for method in ("exact-ablation", "attribution"):
        for d in down:
            if d.get("method") == method:
                return _round(d.get("value")), method
    if down:
        return _round(down[0].get("value")), down[0].get("method")
    return None, None


def latent_row(card: dict[str, Any], vocab: _Vocab) -> list[Any]:
    """The index row of one FeatureCard: [index, label, density, max, mean, effect,
    effect method, fires-on token ids, score, explanation when the label is not it]."""
    stats = card.get("stats") or {}
    effect, method = _effect(card)
    name = annotations.label(card)
    ann = annotations.explanation(card)
    text = ann["description"] if ann and ann["description"] != name else None
    return [int(card["index"]), name, _round(stats.get("density")), _round(stats.get("max")),
            _round(stats.get("mean")), effect, method,
            [vocab(t) for t in firing_tokens((card.get("top_examples") or []) + (card.get("quantile_examples") or []))],
            _round(annotations.headline_score(card)), text]


def latent_detail(card: dict[str, Any], vocab: _Vocab) -> dict[str, Any]:
    """What a latent's card shows beyond its index row."""
    ann = annotations.explanation(card) or {}
    logits = card.get("logit_effects") or {}
    hist = (card.get("stats") or {}).get("histogram")
    exs = [("top", e) for e in (card.get("top_examples") or [])[:MAX_EXAMPLES]]
    exs += [(e.get("bin") or "quantile", e) for e in (card.get("quantile_examples") or [])[:MAX_QUANTILE]]
    out: dict[str, Any] = {"ex": []}
    for b, e in exs:
        toks, vals, at = _window(e)
        out["ex"].append([b, [vocab(t) for t in toks], [_round(v, 3) for v in vals], at])
    if ann.get("description"):
        out["d"] = ann["description"]
        if ann.get("explainer_model"):
            out["dm"] = ann["explainer_model"]
    sc = annotations.scores(card)
    if sc:  # [scorer, metric, value, control value, chance, n_pos, n_neg, n_failed]
        out["sc"] = [[s["scorer"], s["metric"], _round(s["value"]), _round(s["control"]), s["chance"], s["n_pos"],
                      s["n_neg"], s["n_failed"]] for s in sc]
    if hist:
        out["h"] = [[_round(x) for x in hist.get("bin_edges") or []], list(hist.get("counts") or [])]
    out["pos"] = [[vocab(e["token"]), _round(e["value"], 3)] for e in (logits.get("positive") or [])[:MAX_LOGITS]]
    out["neg"] = [[vocab(e["token"]), _round(e["value"], 3)] for e in (logits.get("negative") or [])[:MAX_LOGITS]]
    out["down"] = [[d.get("method"), _round(d.get("value")), d.get("n_tokens"), d.get("metric")]
                   for d in card.get("downstream") or []]
    return out


def _blob(obj: Any) -> str:
    # Inline JSON inside <script>: "</" and "<!--" must not appear literally.
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(title: str, saes: Iterable[tuple[str, int | None, Iterable[dict[str, Any]]]]) -> str:
    """index.html for ``(sae_id, d_sae, cards)`` triples; deterministic for the same input."""
    vocab = _Vocab()
    index: list[dict[str, Any]] = []
    shards: list[dict[str, Any]] = []
    for sae_id, d_sae, cards in saes:
        rows: list[list[Any]] = []
        for c in sorted(cards, key=lambda c: int(c["index"])):
            rows.append(latent_row(c, vocab))
            if not shards or len(shards[-1]) == SHARD:
                shards.append({})
            shards[-1][f"{sae_id}:{int(c['index'])}"] = latent_detail(c, vocab)
        index.append({"sae_id": sae_id, "d_sae": d_sae, "latents": rows})
    data = {"title": title, "saes": index, "vocab": vocab.strings,
            "columns": ["index", "label", "density", "max", "mean", "effect", "effect_method", "fires_on", "score",
                        "explanation"],
            # latent n (counting through the SAEs in order) has its details in block n // shard
            "shard": SHARD}
    blocks = "\n".join(f'<script class="saekit-detail" data-shard="{i}" type="application/json">{_blob(s)}</script>'
                       for i, s in enumerate(shards))
    template = resources.files("saekit.releases").joinpath("templates/browser.html").read_text()
    return (template.replace("{{title}}", html.escape(title)).replace("{{data}}", _blob(data))
            .replace("{{details}}", blocks))
