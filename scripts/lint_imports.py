"""Check saekit's import layers: ``lint-imports`` with the contracts in pyproject.toml.

    python3 scripts/lint_imports.py [lint-imports options]

saekit is one import name over several top-level folders (pyproject's package-dir maps
``saekit.registry`` to ``registry/``, ...), but grimp, import-linter's graph builder, reads a
package from the one folder holding its ``__init__.py``. So this stages that mapping as a
tree of symlinks (``build/import-graph/saekit/``) and runs lint-imports there (it puts its
working folder first on the path, so the repository root's ``saekit/`` must not be it) with
the contracts of pyproject.toml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "build" / "import-graph"


def stage() -> Path:
    """A folder in which ``saekit`` and every mapped subpackage sit where Python expects them."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(STAGE, ignore_errors=True)
    pkg = STAGE / "saekit"
    pkg.mkdir(parents=True)
    for child in (ROOT / mapping["saekit"]).iterdir():
        if child.name != "__pycache__":
            (pkg / child.name).symlink_to(child)
    for name, folder in mapping.items():
        if name != "saekit":
            (pkg / name.split(".", 1)[1]).symlink_to(ROOT / folder)
    return STAGE


def main(argv: list[str]) -> int:
    staged = stage()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(staged), os.environ.get("PYTHONPATH")]))}
    lint = shutil.which("lint-imports") or "lint-imports"
    cmd = [lint, str(ROOT / "pyproject.toml"), "--no-cache", *argv]
    return subprocess.run(cmd, cwd=staged, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
