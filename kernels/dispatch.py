"""The one place that chooses Triton (CUDA tensors, triton importable) or the torch reference.

``SAEKIT_KERNELS=triton|torch`` forces either (tests use it).
"""

from __future__ import annotations

import os

import torch

from saekit.kernels import reference
from saekit.kernels.sae import SAE, SparseCode


def backend(x: torch.Tensor) -> str:
    """'triton' or 'torch' for this input."""
    forced = os.environ.get("SAEKIT_KERNELS")
    if forced in ("triton", "torch"):
        return forced
    if x.is_cuda:
        try:
            import triton  # noqa: F401
        except ImportError:
            return "torch"
        return "triton"
    return "torch"


def encode(x: torch.Tensor, sae: SAE) -> SparseCode:
    return reference.encode(x, sae)


def decode(values: torch.Tensor, indices: torch.Tensor, sae: SAE) -> torch.Tensor:
    return reference.decode(values, indices, sae)


def eval_batch(x: torch.Tensor, sae: SAE) -> reference.EvalStats:
    return reference.eval_batch(x, sae)
