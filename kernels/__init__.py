"""saekit.kernels: the SAE in memory and its compute (Triton on CUDA, torch reference elsewhere).

``saekit.kernels.architectures`` (the table of architectures, tensors and normalisations)
imports no torch, so the registry can validate artifacts without it; ``SAE`` and
``SparseCode`` (which need torch) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from saekit.kernels.sae import SAE, SparseCode

__all__ = ["SAE", "SparseCode"]


def __getattr__(name: str) -> Any:
    if name in __all__:  # import cost: torch loads only when an SAE is built
        from saekit.kernels import sae

        return getattr(sae, name)
    raise AttributeError(f"module 'saekit.kernels' has no attribute {name!r}")
