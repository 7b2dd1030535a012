"""Converting card files: read Neuronpedia / OpenAI sae-viewer / saekit documents from files,
turn them into FeatureCards, and write cards or Neuronpedia features (``saekit cards convert``).

The mappings themselves are saekit.schemas.convert; this module is the file handling around
them, so Python callers get exactly what the command does:

    from saekit.schemas.card_files import convert_files
    result = convert_files(["neuronpedia_650.json"], "feature_cards.jsonl")
"""

from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saekit.schemas import convert as cv
from saekit.schemas.card import FeatureCard, SAERef, consistency_errors
from saekit.schemas.errors import InputError
from saekit.schemas.safeio import DEFAULT_LIMITS, Limits, load_json
from saekit.schemas.validate import check_card_bytes, json_path, jsonl_lines, read_bounded

FROM_FORMATS = ("auto", "saekit", "neuronpedia", "openai")
TO_FORMATS = ("saekit", "neuronpedia")


@dataclass
class ConvertResult:
    """What a conversion wrote."""

    cards: list[FeatureCard]
    """The cards read (before rendering to the output format)."""
    out: str
    """Where they went (``-``: stdout)."""
    to: str
    """The output format: saekit or neuronpedia."""
    warnings: list[str] = field(default_factory=list)
    """Consistency problems of the cards (``card N: path: message``); written anyway."""


def first_error(err: Exception) -> str:
    """The first problem of a pydantic ValidationError (``json.path: message``), or the message."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        e = errors()[0]
        return f"{json_path(e['loc'])}: {e['msg']}"
    return str(err).splitlines()[0]


def read_documents(path: Path, limits: Limits = DEFAULT_LIMITS) -> Iterator[tuple[int, Any]]:
    """``(line, parsed document)`` for every document of a .json (object or list) or .jsonl
    (optionally gzipped) file, read within ``limits`` (saekit.schemas.safeio); NaN and
    Infinity are refused."""
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        for n, line in jsonl_lines(path, limits):
            yield n, load_json(line, where=f"{path}:{n}", limits=limits, allow_nan=False)
        return
    doc = load_json(read_bounded(path, limits), where=str(path), limits=limits, allow_nan=False)
    if isinstance(doc, list):
        for i, d in enumerate(doc):
            yield i + 1, d
    else:
        yield 1, doc


def _detect(doc: object, where: str) -> str:
    try:
        return cv.detect_format(doc)
    except InputError as err:
        raise InputError(err.message, where=where) from None


def to_card(doc: Any, fmt: str, *, where: str, path: Path, sae: SAERef | None = None, index: int | None = None) -> FeatureCard:
    """One document of format ``fmt`` (saekit, neuronpedia, openai; auto: detected) as a card."""
    fmt = fmt if fmt != "auto" else _detect(doc, where)
    try:
        if fmt == "saekit":
            card, errs = check_card_bytes(json.dumps(doc))
            if card is None:
                raise InputError(f"invalid card: {errs[0][0]}: {errs[0][1]}", where=where)
            return card
        if fmt == "neuronpedia":
            return cv.from_neuronpedia(doc, sae=sae)
        idx = index if index is not None else cv.index_from_filename(path.name)
        if idx is None:
            raise InputError("OpenAI FeatureInfo has no index: pass --index or name the file NNN.json", where=where)
        if sae is None:
            raise InputError("OpenAI FeatureInfo does not name its SAE: pass --sae", where=where)
        return cv.from_openai(doc, sae=sae, index=idx)
    except InputError as err:
        if err.where is None:
            raise InputError(err.message, where=where) from None
        raise
    except ValueError as err:  # pydantic: the source document breaks the card schema
        raise InputError(f"cannot convert: {first_error(err)}", where=where) from None


def read_cards(
    inputs: Sequence[Path | str], *, from_format: str = "auto", sae: SAERef | None = None, index: int | None = None
) -> list[FeatureCard]:
    """Every document of ``inputs`` as a FeatureCard (see ``to_card``)."""
    if from_format not in FROM_FORMATS:
        raise InputError(f"--from must be auto, saekit, neuronpedia or openai, not {from_format!r}")
    cards: list[FeatureCard] = []
    for path in map(Path, inputs):
        for n, doc in read_documents(path):
            cards.append(to_card(doc, from_format, where=f"{path}:{n}", path=path, sae=sae, index=index))
    return cards


def render(cards: Sequence[FeatureCard], to: str) -> list[str]:
    """One JSON line per card: saekit cards, or Neuronpedia features."""
    if to == "saekit":
        return [c.model_dump_json(exclude_none=True) for c in cards]
    return [json.dumps(cv.to_neuronpedia(c), ensure_ascii=False) for c in cards]


def write_lines(out: Path | str, lines: Sequence[str]) -> None:
    """JSON lines to ``out``: .jsonl (optionally .gz), .json (one document or a list), or ``-``."""
    out = Path(out)
    if out.name.endswith(".json") and str(out) != "-":
        docs = [json.loads(x) for x in lines]
        text = json.dumps(docs[0] if len(docs) == 1 else docs, indent=2, ensure_ascii=False) + "\n"
    else:
        text = "".join(x + "\n" for x in lines)
    if str(out) == "-":
        sys.stdout.write(text)
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.name.endswith(".gz"):
            out.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))
        else:
            out.write_text(text, encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot write: {err.strerror or err}", where=str(out)) from None


def convert_files(
    inputs: Sequence[Path | str],
    out: Path | str,
    *,
    to: str = "saekit",
    from_format: str = "auto",
    sae: SAERef | None = None,
    index: int | None = None,
) -> ConvertResult:
    """Read ``inputs`` (any of FROM_FORMATS), write them to ``out`` as ``to`` (TO_FORMATS)."""
    if to not in TO_FORMATS:
        raise InputError(f"--to must be saekit or neuronpedia, not {to!r}")
    cards = read_cards(inputs, from_format=from_format, sae=sae, index=index)
    warnings = [f"card {c.index}: {p}: {m}" for c in cards for p, m in consistency_errors(c)]
    write_lines(out, render(cards, to))
    return ConvertResult(cards=cards, out=str(out), to=to, warnings=warnings)
