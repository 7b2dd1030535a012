"""The ``saekit`` command. Exit codes: 0 ok, 1 a check failed, 2 usage or input error.

Commands signal a failed check with ``raise typer.Exit(1)``; user errors are SaekitError
subclasses, printed as one line on stderr, never a traceback. Every line printed here is
escaped by saekit.schemas.console.printable (a path or name may hold a newline or ESC).
"""

from __future__ import annotations

import importlib
import sys

from saekit.schemas import SaekitError
from saekit.schemas.console import printable

# Command modules register themselves on the apps in saekit.cli.app.
_MODULES = ("schema_cmds", "cards_cmds", "registry_cmds", "check_cmds", "release_cmds", "diff_cmds",
            "ecosystem_cmds", "annot_cmds", "transcoder_cmds", "graph_cmds")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: user and usage errors print one line on stderr (exit 1 or 2)."""
    from saekit.cli.app import app

    for mod in _MODULES:
        importlib.import_module(f"saekit.cli.{mod}")
    try:
        rv = app(args=argv, prog_name="saekit", standalone_mode=False)
    except SaekitError as err:
        print(f"error: {printable(err)}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        # click's usage errors (typer vendors click, so matched by shape): one line, exit 2.
        if hasattr(err, "format_message") and hasattr(err, "exit_code"):
            message = err.format_message()
            if message:
                print(f"error: {printable(message)} (see 'saekit --help')", file=sys.stderr)
            else:  # a group called with no arguments: its help
                err.show()
            sys.exit(err.exit_code)
        if type(err).__name__ == "Abort":
            print("aborted", file=sys.stderr)
            sys.exit(130)
        if _debug():
            raise
        # Last line of defence: one line, secrets masked, never a traceback. A file-system
        # or resource error is the user's environment (exit 2); anything else is a saekit
        # bug (exit 70, EX_SOFTWARE), which SAEKIT_DEBUG=1 shows with its traceback.
        from saekit.schemas.masking import mask

        line = printable(mask((str(err).splitlines() or [""])[0])[:300])
        if isinstance(err, (OSError, RecursionError, MemoryError, UnicodeError)):
            print(f"error: {type(err).__name__}: {line}", file=sys.stderr)
            sys.exit(2)
        print(f"error: internal error ({type(err).__name__}: {line}); SAEKIT_DEBUG=1 shows the traceback",
              file=sys.stderr)
        sys.exit(70)
    sys.exit(rv if isinstance(rv, int) else 0)


def _debug() -> bool:
    """SAEKIT_DEBUG, read through the settings (an unreadable value counts as off)."""
    from saekit.schemas.settings import Settings

    try:
        return Settings.from_env().debug
    except SaekitError:
        return False
