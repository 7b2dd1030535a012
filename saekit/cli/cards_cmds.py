"""saekit cards validate | convert: options and printing; the work is saekit.schemas.validate
and saekit.schemas.convert (files through saekit.schemas.card_files).

Other ``saekit cards`` commands (build, verify, carry) are added by their owners' modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from saekit.cli.app import JSON_OPTION, cards_app, emit
from saekit.schemas.console import printable
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
            typer.echo(printable(err))
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
    from saekit.schemas.card import SAERef
    from saekit.schemas.convert import convert_files, first_error
    from saekit.schemas.errors import InputError

    sae_ref = None
    if sae is not None:
        try:
            sae_ref = SAERef(name=sae, version=sae_version, sha256=sae_sha256, d_sae=d_sae)
        except ValueError as err:
            raise InputError(f"bad --sae options: {first_error(err)}") from None
    result = convert_files(inputs, out, to=to, from_format=from_, sae=sae_ref, index=index)
    for w in result.warnings:
        typer.echo(printable(f"warning: {w}"), err=True)
    n = len(result.cards)
    emit(
        {"cards": n, "out": str(out), "to": to, "warnings": result.warnings},
        json_out,
        None if str(out) == "-" else f"wrote {n} {'card' if to == 'saekit' else 'feature'}{'s' * (n != 1)} to {out}",
    )
