"""What a release shows of a card's annotations (issue 21): its label, its explanation, its
scores and their controls. One reading of a card, shared by the browser, the model card and
the Neuronpedia export, on card dicts as release files hold them.

- The explanation is the last annotation with a description: the one ``cards score``
  scores (saekit.harness.score).
- The label is the first annotation's label when one has a label, else the explanation's
  description: ``cards explain`` writes a description only, and Neuronpedia's Explanation
  has a description only, so an explained latent is listed by its explanation.
- Its scores are the explanation's ``score_records``; a control record (scored with
  another latent's explanation) pairs with the real one of the same scorer, metric and
  scorer model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

HEADLINE_METRIC = "balanced_accuracy"


def explanation(card: dict[str, Any]) -> dict[str, Any] | None:
    """The annotation whose description is the latent's explanation (None if none has one)."""
    return next((a for a in reversed(card.get("annotations") or []) if a.get("description")), None)


def label(card: dict[str, Any]) -> str | None:
    """The name a latent is listed by: a label, else its explanation."""
    anns = card.get("annotations") or []
    named = next((a["label"] for a in anns if a.get("label")), None)
    if named:
        return named
    ann = explanation(card)
    return ann["description"] if ann else None


def scores(card: dict[str, Any]) -> list[dict[str, Any]]:
    """The explanation's scores, one per (scorer, metric, scorer model): ``value`` with the
    ``control`` value beside it, ``chance``, ``n_pos``, ``n_neg``, ``n_failed``."""
    ann = explanation(card)
    out: dict[tuple, dict[str, Any]] = {}
    controls: dict[tuple, Any] = {}
    for r in (ann or {}).get("score_records") or []:
        key = (r.get("scorer"), r.get("metric"), r.get("scorer_model"))
        if r.get("control"):
            controls[key] = r.get("value")
        else:
            out[key] = {k: r.get(k) for k in ("scorer", "metric", "value", "chance", "n_pos", "n_neg", "n_failed",
                                               "scorer_model")}
    for key, row in out.items():
        row["control"] = controls.get(key)
    return list(out.values())


def headline_score(card: dict[str, Any]) -> float | None:
    """The mean balanced accuracy of the explanation over its scorers (what the browser sorts
    by); None when nothing was scored."""
    values = [s["value"] for s in scores(card) if s["metric"] == HEADLINE_METRIC and s["value"] is not None]
    return sum(values) / len(values) if values else None


def score_means(cards: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scorer and metric over an SAE's cards: the mean value and mean control value,
    latents scored (a value) and failed (a record without one), and the chance level."""
    acc: dict[tuple[str, str], dict[str, Any]] = {}
    for card in cards:
        for s in scores(card):
            a = acc.setdefault((s["scorer"], s["metric"]), {"values": [], "controls": [], "failed": 0, "chance": s["chance"]})
            if s["value"] is None:
                a["failed"] += 1
            else:
                a["values"].append(s["value"])
            if s["control"] is not None:
                a["controls"].append(s["control"])
    return [{"scorer": scorer, "metric": metric, "chance": a["chance"],
             "mean": sum(a["values"]) / len(a["values"]) if a["values"] else None,
             "mean_control": sum(a["controls"]) / len(a["controls"]) if a["controls"] else None,
             "n_scored": len(a["values"]), "n_failed": a["failed"]}
            for (scorer, metric), a in sorted(acc.items())]


def explained_counts(cards: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """(latents with an explanation, latents whose explanation request failed)."""
    explained = failed = 0
    for card in cards:
        if explanation(card) is not None:
            explained += 1
        elif any((a.get("provenance") or {}).get("error") for a in card.get("annotations") or []):
            failed += 1
    return explained, failed
