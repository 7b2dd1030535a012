"""The typer apps every command module attaches to, and the one output helper."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import typer

from saekit.schemas.console import printable
from saekit.schemas.settings import Settings, use_settings

app = typer.Typer(
    name="saekit",
    help="Register, check, document and release sparse autoencoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cards_app = typer.Typer(help="Feature cards: validate, convert, build, verify, carry.", no_args_is_help=True)
schema_app = typer.Typer(help="The JSON Schemas of saekit's formats.", no_args_is_help=True)
alias_app = typer.Typer(help="Move registry aliases (production, candidate, ...).", no_args_is_help=True)
release_app = typer.Typer(help="Build and publish releases to the Hugging Face Hub.", no_args_is_help=True)
app.add_typer(cards_app, name="cards")
app.add_typer(schema_app, name="schema")
app.add_typer(alias_app, name="alias")
app.add_typer(release_app, name="release")

JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


@app.callback()
def _root(
    ctx: typer.Context,
    home: Optional[Path] = typer.Option(
        None, "--home", help="saekit home folder: registry, cache (default $SAEKIT_HOME or ~/.saekit)."
    ),
    registry_uri: Optional[str] = typer.Option(
        None, "--registry-uri", help="MLflow tracking URI (default $SAEKIT_REGISTRY_URI or the embedded SQLite)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output (or SAEKIT_QUIET=1)."),
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=lambda v: _print_version(v), help="Print saekit's version and exit."
    ),
) -> None:
    # One Settings for the whole command: the environment read once, then these options.
    # The command runs under it (use_settings) and finds it as ctx.obj; os.environ is not touched.
    settings = Settings.from_env(home=home, registry_uri=registry_uri or None, quiet=quiet or None)
    ctx.obj = ctx.with_resource(use_settings(settings))


def _print_version(value: bool) -> None:
    if value:
        from saekit.schemas.version import __version__

        typer.echo(f"saekit {__version__}")
        raise typer.Exit(0)


def settings_of(ctx: typer.Context) -> Settings:
    """The command's Settings (set by the root callback)."""
    return ctx.find_root().obj


def emit(data: Any, json_out: bool, text: str | Sequence[str] | None = None) -> None:
    """Print ``data`` as JSON (``--json``) or ``text`` for people: one line (a str) or a list
    of lines, each escaped (console.printable), so a newline inside a value shows as ``\\n``
    and never starts a line of its own."""
    if json_out:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    elif text is not None:
        for line in [text] if isinstance(text, str) else text:
            typer.echo(printable(line))
