"""saekit.kernels: the SAE in memory and its compute (Triton on CUDA, torch reference elsewhere)."""

from saekit.kernels.sae import SAE, SparseCode

__all__ = ["SAE", "SparseCode"]
