"""saekit cards validate | convert.

Other ``saekit cards`` commands (build, verify, carry) are added by their owners' modules.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from saekit.cli.app import JSON_OPTION, cards_app, emit
from saekit.schemas.safeio import DEFAULT_LIMITS


@cards_app.command("validate")
def validate(
    paths: List[Path] = typer.Argument(
        ..., help="Card files: .json (a card or a list), .jsonl, .jsonl.gz; a folder means the card files under it."
    ),
    d_sae: Optional[int] = typer.Option(None, "--d-sae", min=1, help="SAE width: every index must be below it."),
    max_errors: int = typer.Option(50, "--max-errors", min=1, help="Print at most this many errors."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Processes for big files (default: CPUs)."),
    max_file_bytes: int = typer.Option(
        DEFAULT_LIMITS.max_file_bytes, "--max-file-bytes", min=1, help="Bytes per file, after decompression."
    ),
    max_line_bytes: int = typer.Option(
        DEFAULT_LIMITS.max_line_bytes, "--max-line-bytes", min=1, help="Bytes per line (per card of a .json list)."
    ),
    max_depth: int = typer.Option(DEFAULT_LIMITS.max_depth, "--max-depth", min=1, help="JSON nesting per card."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Validate feature cards: schema, consistency, duplicate indices, one SAE per file.

    Prints each problem as file:line: json.path: message.

    Exit 0: all valid. 1: invalid cards (a card nested deeper than --max-depth included).
    2: a path that is not card input (missing, not JSON, broken or fake gzip, a line or
    file over --max-line-bytes / --max-file-bytes).
    """
    from saekit.schemas.errors import SaekitError
    from saekit.schemas.safeio import Limits
    from saekit.schemas.validate import validate_paths

    limits = Limits(max_file_bytes=max_file_bytes, max_line_bytes=max_line_bytes, max_depth=max_depth)
    try:
        report = validate_paths(paths, d_sae=d_sae, max_errors=max_errors, workers=workers, limits=limits)
    except SaekitError as err:
        if json_out:
            emit({"ok": False, "error": str(err), "exit_code": err.exit_code}, True)
        raise
    if json_out:
        emit(report.to_dict(), True)
    else:
        for err in report.errors:
            typer.echo(str(err))
        n_files = len(report.files)
        scope = f"{report.n_cards} card{'s' * (report.n_cards != 1)} in {n_files} file{'s' * (n_files != 1)}"
        if report.ok:
            typer.echo(f"ok: {scope}")
        else:
            shown = f" (first {len(report.errors)} shown)" if report.n_errors > len(report.errors) else ""
            typer.echo(f"invalid: {report.n_errors} error{'s' * (report.n_errors != 1)} in {scope}{shown}", err=True)
    if not report.ok:
        raise typer.Exit(1)


@cards_app.command("convert")
def convert(
    inputs: List[Path] = typer.Argument(..., help="Neuronpedia feature JSON, OpenAI FeatureInfo JSON, or saekit cards."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file (.jsonl, .jsonl.gz or .json), or - for stdout."),
    to: str = typer.Option("saekit", "--to", help="saekit | neuronpedia"),
    from_: str = typer.Option("auto", "--from", help="auto | saekit | neuronpedia | openai"),
    sae: Optional[str] = typer.Option(None, "--sae", help="SAE name the cards describe (default: Neuronpedia's layer)."),
    sae_version: Optional[str] = typer.Option(None, "--sae-version", help="SAE version."),
    sae_sha256: Optional[str] = typer.Option(None, "--sae-sha256", help="sha256 of the SAE artifact."),
    d_sae: Optional[int] = typer.Option(None, "--d-sae", min=1, help="SAE width."),
    index: Optional[int] = typer.Option(
        None, "--index", min=0, help="Latent index of an OpenAI FeatureInfo (default: from a NNN.json file name)."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Convert between saekit feature cards and Neuronpedia / OpenAI sae-viewer JSON."""
    from saekit.schemas import convert as cv
    from saekit.schemas.card import FeatureCard, SAERef, consistency_errors
    from saekit.schemas.errors import InputError
    from saekit.schemas.validate import check_card_bytes

    if to not in ("saekit", "neuronpedia"):
        raise InputError(f"--to must be saekit or neuronpedia, not {to!r}")
    if from_ not in ("auto", "saekit", "neuronpedia", "openai"):
        raise InputError(f"--from must be auto, saekit, neuronpedia or openai, not {from_!r}")
    sae_ref = None
    if sae is not None:
        try:
            sae_ref = SAERef(name=sae, version=sae_version, sha256=sae_sha256, d_sae=d_sae)
        except ValueError as err:
            raise InputError(f"bad --sae options: {_first_error(err)}") from None

    cards: list[FeatureCard] = []
    for path in inputs:
        for n, doc in _documents(path):
            where = f"{path}:{n}"
            fmt = from_ if from_ != "auto" else _detect(doc, where)
            try:
                if fmt == "saekit":
                    card, errs = check_card_bytes(json.dumps(doc))
                    if card is None:
                        raise InputError(f"invalid card: {errs[0][0]}: {errs[0][1]}", where=where)
                elif fmt == "neuronpedia":
                    card = cv.from_neuronpedia(doc, sae=sae_ref)
                else:
                    idx = index if index is not None else cv.index_from_filename(path.name)
                    if idx is None:
                        raise InputError("OpenAI FeatureInfo has no index: pass --index or name the file NNN.json", where=where)
                    if sae_ref is None:
                        raise InputError("OpenAI FeatureInfo does not name its SAE: pass --sae", where=where)
                    card = cv.from_openai(doc, sae=sae_ref, index=idx)
            except InputError as err:
                if err.where is None:
                    raise InputError(err.message, where=where) from None
                raise
            except ValueError as err:  # pydantic: the source document breaks the card schema
                raise InputError(f"cannot convert: {_first_error(err)}", where=where) from None
            cards.append(card)

    warnings = [f"card {c.index}: {p}: {m}" for c in cards for p, m in consistency_errors(c)]
    for w in warnings:
        typer.echo(f"warning: {w}", err=True)
    if to == "saekit":
        lines = [c.model_dump_json(exclude_none=True) for c in cards]
    else:
        lines = [json.dumps(cv.to_neuronpedia(c), ensure_ascii=False) for c in cards]
    _write(out, lines)
    emit(
        {"cards": len(cards), "out": str(out), "to": to, "warnings": warnings},
        json_out,
        None if str(out) == "-" else f"wrote {len(cards)} {'card' if to == 'saekit' else 'feature'}"
        f"{'s' * (len(cards) != 1)} to {out}",
    )


def _first_error(err: Exception) -> str:
    errors = getattr(err, "errors", None)
    if callable(errors):
        from saekit.schemas.validate import json_path

        e = errors()[0]
        return f"{json_path(e['loc'])}: {e['msg']}"
    return str(err).splitlines()[0]


def _detect(doc: object, where: str) -> str:
    from saekit.schemas.convert import detect_format
    from saekit.schemas.errors import InputError

    try:
        return detect_format(doc)
    except InputError as err:
        raise InputError(err.message, where=where) from None


def _documents(path: Path):
    """``(line, parsed document)`` for every document of a .json (object or list) or .jsonl file."""
    from saekit.schemas.safeio import load_json
    from saekit.schemas.validate import _read, jsonl_lines

    if path.name.endswith((".jsonl", ".jsonl.gz")):
        for n, line in jsonl_lines(path, DEFAULT_LIMITS):
            yield n, load_json(line, where=f"{path}:{n}", limits=DEFAULT_LIMITS, allow_nan=False)
        return
    doc = load_json(_read(path, DEFAULT_LIMITS), where=str(path), limits=DEFAULT_LIMITS, allow_nan=False)
    if isinstance(doc, list):
        for i, d in enumerate(doc):
            yield i + 1, d
    else:
        yield 1, doc


def _write(out: Path, lines: list[str]) -> None:
    from saekit.schemas.errors import InputError

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
