"""The static feature browser: one self-contained HTML file with the cards' data inlined.

No network, no server: it opens from the file. Search by label or token, sort by density
or max activation, and a latent's card shows its top examples highlighted by activation.
State lives in the URL hash (``index.html#q=code&sort=max&latent=SAE_ID:17``), so a link
opens a given view (and the headless-Chromium test drives it that way).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from importlib import resources
from typing import Any

MAX_EXAMPLES = 5
WINDOW = 24  # tokens of each example kept around its maximum
MAX_LOGITS = 6
MAX_FIRING = 12  # tokens a latent fires on, kept for search


def _round(x: Any, digits: int = 5) -> float | None:
    return None if x is None else float(f"{float(x):.{digits}g}")


def _example(ex: dict[str, Any]) -> dict[str, Any]:
    tokens, values = list(ex.get("tokens") or []), [float(v) for v in ex.get("values") or []]
    n = min(len(tokens), len(values))
    tokens, values = tokens[:n], values[:n]
    if n > WINDOW:
        at = ex.get("max_position")
        if at is None or not 0 <= at < n:
            at = max(range(n), key=values.__getitem__)
        start = max(0, min(at - WINDOW // 2, n - WINDOW))
        tokens, values = tokens[start : start + WINDOW], values[start : start + WINDOW]
    return {"tokens": [str(t) for t in tokens], "values": [_round(v, 4) for v in values]}


def firing_tokens(examples: list[dict[str, Any]], n: int = MAX_FIRING) -> list[str]:
    """The distinct tokens the latent fires on in its examples, strongest first (what a
    token search matches)."""
    best: dict[str, float] = {}
    for ex in examples:
        for tok, v in zip(ex.get("tokens") or [], ex.get("values") or []):
            if v is not None and v > 0 and v > best.get(str(tok), 0.0):
                best[str(tok)] = float(v)
    return [t for t, _ in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def latent_entry(card: dict[str, Any]) -> dict[str, Any]:
    """What the browser needs of one FeatureCard (a parsed JSON line)."""
    ann = (card.get("annotations") or [{}])[0] if card.get("annotations") else {}
    stats = card.get("stats") or {}
    logits = card.get("logit_effects") or {}
    return {
        "index": int(card["index"]),
        "label": ann.get("label"),
        "description": ann.get("description"),
        "density": _round(stats.get("density")),
        "max": _round(stats.get("max")),
        "mean": _round(stats.get("mean")),
        "examples": [_example(e) for e in (card.get("top_examples") or [])[:MAX_EXAMPLES]],
        "fires_on": firing_tokens(card.get("top_examples") or []),
        "pos": [[e["token"], _round(e["value"], 3)] for e in (logits.get("positive") or [])[:MAX_LOGITS]],
        "neg": [[e["token"], _round(e["value"], 3)] for e in (logits.get("negative") or [])[:MAX_LOGITS]],
    }


def render(title: str, saes: Iterable[tuple[str, int | None, Iterable[dict[str, Any]]]]) -> str:
    """index.html for ``(sae_id, d_sae, cards)`` triples; deterministic for the same input."""
    data = {
        "title": title,
        "saes": [
            {"sae_id": sae_id, "d_sae": d_sae, "latents": sorted((latent_entry(c) for c in cards), key=lambda e: e["index"])}
            for sae_id, d_sae, cards in saes
        ],
    }
    # Inline JSON inside <script>: "</" and "<!--" must not appear literally.
    blob = json.dumps(data, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    template = resources.files("saekit.releases").joinpath("templates/browser.html").read_text()
    return template.replace("{{title}}", html.escape(title)).replace("{{data}}", blob)
