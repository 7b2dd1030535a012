"""What ``saekit cards verify`` and ``saekit cards annotate`` do, as functions a Python user
calls: card files in (through saekit.schemas.card_files), a report or a written file out.

    from saekit.harness.card_ops import annotate_file, verify_file
    report = verify_file("feature_cards.jsonl", saekit.load("smollm2-res-l6/3"))
    result = annotate_file("feature_cards.jsonl", "labels.jsonl", out="annotated.jsonl")

torch and transformers load only when a function that needs them runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from saekit.harness.annotations import merge_annotations, read_annotations
from saekit.harness.verify import VerifyReport, verify_cards
from saekit.schemas import FeatureCard
from saekit.schemas.card_files import read_cards, write_cards

def cards_of(cards: Any) -> list[FeatureCard]:
    """FeatureCards as given, or read from a cards file, a folder of shards, or a list of paths."""
    if isinstance(cards, (list, tuple)) and cards and all(isinstance(c, FeatureCard) for c in cards):
        return list(cards)
    return read_cards(cards)


def verify_file(
    cards: str | os.PathLike | Sequence[Any],
    sae: Any,
    *,
    density_tol: float = 2e-3,
    value_tol: float = 1e-3,
    model: Any = None,
    tokenizer: Any = None,
) -> VerifyReport:
    """Re-check every number ``cards`` state (a cards file, a folder of shards, paths, or
    FeatureCards) against ``sae`` (a loaded SAE, as ``saekit.load`` returns it). The language
    model is the SAE's own (``cfg.model_name``; the harness' default model when it names none),
    unless ``model`` and ``tokenizer`` are given."""
    card_list = cards_of(cards)
    if model is None or tokenizer is None:
        from saekit.harness.model import DEFAULT_MODEL_ID, load_lm

        name = sae.cfg.model_name
        model, tokenizer = load_lm(name if name not in (None, DEFAULT_MODEL_ID) else None)
    return verify_cards(card_list, sae, model, tokenizer, density_atol=density_tol, value_atol=value_tol,
                        value_rtol=value_tol)


@dataclass
class AnnotateResult:
    """What :func:`annotate_file` wrote."""

    path: Path
    """The cards file written."""
    cards: int
    """Cards in it."""
    annotated: int
    """Annotations added."""


def annotate_file(
    cards_file: str | os.PathLike, annotations: str | os.PathLike, *, out: str | os.PathLike | None = None
) -> AnnotateResult:
    """Merge a user's annotations (JSONL ``{index, label, description}`` rows, cards, or
    Neuronpedia features) into the cards of ``cards_file`` without touching their computed
    fields; written to ``out`` (default: ``cards_file`` itself)."""
    cards, n = merge_annotations(read_cards(cards_file), read_annotations(Path(annotations)))
    path = write_cards(cards, out if out is not None else cards_file)
    return AnnotateResult(path=path, cards=len(cards), annotated=n)
