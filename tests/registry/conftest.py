"""Fixtures of the registry tests: tiny SAEs and artifact folders (real shapes, tiny sizes)."""

from __future__ import annotations

from pathlib import Path

import pytest


def make_sae(seed: int = 0, *, d_in: int = 8, d_sae: int = 32, k: int | None = 4, arch: str = "topk", **cfg):
    import torch

    from saekit.kernels import SAE
    from saekit.schemas import SAEConfig

    g = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }
    if arch == "jumprelu":
        tensors["threshold"] = torch.rand(d_sae, generator=g) * 0.5
    config = SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, k=k if arch in ("topk", "batchtopk") else None,
                       model_name=cfg.pop("model_name", "HuggingFaceTB/SmolLM2-135M-Instruct"),
                       hook_name=cfg.pop("hook_name", "model.layers.6"), **cfg)
    return SAE(config, tensors)


def make_artifact(folder: Path, seed: int = 0, **kw) -> Path:
    from saekit.registry.artifact import save_artifact

    save_artifact(make_sae(seed, **kw), folder)
    return folder


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return make_artifact(tmp_path / "art", seed=0)
