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


def test_transformers_model_code_runs_from_the_repo_root():
    # From the checkout root (notebooks, `python -m`, `torchrun -m`) the top-level kernels/
    # folder is on sys.path and would shadow Hugging Face's `kernels`, which transformers imports.
    code = (
        "import torch, saekit, saekit.kernels, kernels, transformers.activations\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "assert 'site-packages' in kernels.__file__ or 'dist-packages' in kernels.__file__, kernels.__file__\n"
        "cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,\n"
        "                  num_attention_heads=2, num_key_value_heads=1)\n"
        "out = LlamaForCausalLM(cfg)(torch.tensor([[1, 2, 3]]))\n"
        "assert out.logits.shape == (1, 3, 64)\n"
        "from saekit.harness import activations\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "saekit", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "check" in r.stdout, r.stderr[-3000:]
