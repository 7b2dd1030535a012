"""Shared fixtures. Each test gets its own saekit home (registry + artifact cache); the
model-conversion and demo-SAE caches (SAEKIT_CACHE_DIR) are shared so the suite stays fast."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
