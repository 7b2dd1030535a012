"""The package layout: every subpackage imports, from the repo root too, and stays light."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ["saekit", "saekit.schemas", "saekit.kernels", "saekit.registry", "saekit.harness", "saekit.matching", "saekit.releases", "saekit.cli"]


@pytest.mark.parametrize("cwd", [ROOT, ROOT / "tests"])
def test_every_subpackage_imports(cwd):
    # The repo root holds a saekit/ folder: an installed (editable) package must still win.
    code = "import importlib; [importlib.import_module(m) for m in %r]" % SUBPACKAGES
    subprocess.run([sys.executable, "-c", code], cwd=cwd, check=True)


def test_import_saekit_is_light():
    code = (
        "import sys, saekit, saekit.schemas;"
        "heavy = [m for m in ('mlflow', 'transformers', 'triton', 'torch') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_cli_usage_error_exits_2():
    r = subprocess.run([sys.executable, "-m", "saekit", "no-such-command"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: No such command 'no-such-command'. (see 'saekit --help')"]


def test_import_layers_contract():
    # The design's layer order (pyproject's [tool.importlinter]), as CI checks it.
    pytest.importorskip("importlinter")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "lint_imports.py")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
