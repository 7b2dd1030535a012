"""Fixtures of the schema tests."""

from __future__ import annotations

import pytest

from saekit.cli import main


@pytest.fixture
def cli(capsys):
    """Run ``saekit ARGS`` in-process: ``(exit code, stdout, stderr)``."""

    def run(*args: str):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
