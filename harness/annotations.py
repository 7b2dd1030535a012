"""Annotations from a user's file, merged into cards (computed fields untouched)."""

from __future__ import annotations

from pathlib import Path

from saekit.schemas import Annotation, FeatureCard, InputError, NotFoundError
from saekit.schemas.card_files import read_documents


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
