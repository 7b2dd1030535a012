"""The SAE in memory: its data (saekit.kernels.data) and its compute, which goes through one
dispatch point (saekit.kernels.dispatch)."""

from __future__ import annotations

import torch

from saekit.kernels import dispatch, reference
from saekit.kernels.data import SAEData, SparseCode
from saekit.schemas import InputError


class SAE(SAEData):
    """An SAE's weights (SAELens names and shapes), config and identity, and its compute."""

    def __init__(self, cfg, tensors, *, ref=None):
        if cfg.is_transcoder:
            raise InputError(f"{cfg.architecture} is a transcoder (use saekit.kernels.transcoder.Transcoder)", where="cfg")
        super().__init__(cfg, tensors, ref=ref)

    def encode(self, x: torch.Tensor, *, max_k: int | None = None) -> SparseCode:
        """Sparse code of x [..., d_in] flattened to [n, d_in]. ``max_k`` bounds the code of
        ReLU/JumpReLU/gated SAEs (see saekit.kernels.dispatch)."""
        return dispatch.encode(x.reshape(-1, self.cfg.d_in), self, max_k=max_k)

    def decode(self, code: SparseCode) -> torch.Tensor:
        """Reconstruction [n, d_in] from a sparse code."""
        return dispatch.decode(code.values, code.indices, self, out_scale=code.out_scale, out_shift=code.out_shift)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of x, same shape as x."""
        return self.decode(self.encode(x)).reshape(x.shape)

    def encode_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Dense latents [n, d_sae] (reference path; for comparisons with other libraries)."""
        return reference.encode_dense(x.reshape(-1, self.cfg.d_in), self)

    def eval_batch(self, x: torch.Tensor) -> reference.EvalStats:
        """One-pass statistics of x [n, d_in] (see saekit.kernels.reference.EvalStats)."""
        return dispatch.eval_batch(x.reshape(-1, self.cfg.d_in), self)


__all__ = ["SAE", "SparseCode"]
