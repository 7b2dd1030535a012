"""Shared fixtures. Each test gets its own saekit home (registry + artifact cache); the
model-conversion and demo-SAE caches (SAEKIT_CACHE_DIR) are shared so the suite stays fast."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


def _import_triton_interpreted() -> None:
    """Without CUDA the Triton kernels run in Triton's interpreter (tests/kernels). triton 3.9
    reads TRITON_INTERPRET when a ``@triton.jit`` function is defined: saekit's kernels and
    triton.language's own jit functions (tl.sort, tl.max, ...), defined when triton is first
    imported. Peers import triton at collection (sae_bench -> sae_lens), so this, the first
    conftest, imports both with the variable set, then restores the environment: the other
    tests see the process as it was."""
    import torch

    if torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        return
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import saekit.kernels.triton_kernels  # noqa: F401  (imports triton, defines the kernels)
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved


_import_triton_interpreted()


@pytest.fixture(autouse=True)
def saekit_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "saekit-home"
    monkeypatch.setenv("SAEKIT_HOME", str(home))
    monkeypatch.delenv("SAEKIT_REGISTRY_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("SAEKIT_QUIET", "1")
    return home


@pytest.fixture(scope="session")
def real_sae_dir() -> Path:
    """A small TopK SAE trained on real SmolLM2-135M activations (cached across runs)."""
    from saekit.harness.train import ensure_demo_sae

    return ensure_demo_sae(size="test")


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The loopback Hub has no Xet endpoints, and huggingface_hub reads this once, at its import:
# set it before any test module imports huggingface_hub.
os.environ["HF_HUB_DISABLE_XET"] = "1"
