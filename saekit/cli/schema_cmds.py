"""saekit schema export | check."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from saekit.cli.app import JSON_OPTION, emit, schema_app


@schema_app.command("export")
def export(
    out: Optional[Path] = typer.Option(None, "--out", help="Folder (default: the package's schemas/json)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Regenerate the JSON Schema files from the pydantic models."""
    from saekit.schemas import export as ex

    paths = ex.export(out or ex.JSON_DIR)
    emit([str(p) for p in paths], json_out, [f"wrote {p}" for p in paths])


@schema_app.command("check")
def check(json_out: bool = JSON_OPTION) -> None:
    """Exit 1 if the committed JSON Schema files differ from the models."""
    from saekit.schemas import export as ex

    stale = ex.stale()
    emit({"stale": stale}, json_out, [f"stale: {s}.json" for s in stale] or "schemas up to date")
    if stale:
        raise typer.Exit(1)
