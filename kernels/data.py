"""The SAE's data in memory: its tensors, SAEConfig and identity, and the sparse-code type.

No compute here: the torch reference and the dispatch point read this data, and
saekit.kernels.sae adds the methods (``sae.encode(x)``, ...) that call the dispatch point.
"""

from __future__ import annotations

from typing import NamedTuple, TypeVar

import torch

from saekit.kernels import architectures as archs
from saekit.schemas import InputError, SAEConfig, SAERef

class SparseCode(NamedTuple):
    """The active latents of each token."""

    values: torch.Tensor
    """[n, k] activations of the kept latents (>= 0; 0 marks padding for non-TopK SAEs)."""
    indices: torch.Tensor
    """[n, k] int64 latent ids, ordered by value descending, ties by lower index."""
    out_scale: torch.Tensor | None = None
    """[n, 1] input normalisation undone at decode: x_hat = y * out_scale + out_shift
    (layer_norm: std; constant_norm_rescale: ||x|| / sqrt(d_in); None: no normalisation)."""
    out_shift: torch.Tensor | None = None
    """[n, 1] (layer_norm: the mean of x) or None."""

    def rows(self, sel) -> SparseCode:
        """The code of some tokens (a boolean mask or index over rows)."""
        pick = lambda t: None if t is None else t[sel]  # noqa: E731
        return SparseCode(self.values[sel], self.indices[sel], pick(self.out_scale), pick(self.out_shift))


_S = TypeVar("_S", bound="SAEData")


class SAEData:
    """An SAE's weights (SAELens names and shapes) plus its config and identity."""

    def __init__(
        self,
        cfg: SAEConfig,
        tensors: dict[str, torch.Tensor],
        *,
        ref: SAERef | None = None,
    ):
        self.cfg = cfg
        self.ref = ref
        archs.check_supported(cfg, where="cfg")
        shapes = archs.shapes(cfg)
        for name in archs.architecture(cfg).tensors:
            if name not in tensors:
                raise InputError(f"missing tensor {name!r}", where="sae_weights")
        for name, t in tensors.items():
            if name in shapes and tuple(t.shape) != shapes[name]:
                raise InputError(
                    f"tensor {name!r} has shape {tuple(t.shape)}, expected {shapes[name]}", where="sae_weights"
                )
        self.tensors = dict(tensors)

    # -- weights ---------------------------------------------------------------------------
    W_enc = property(lambda self: self.tensors["W_enc"])
    b_enc = property(lambda self: self.tensors["b_enc"])
    W_dec = property(lambda self: self.tensors["W_dec"])
    b_dec = property(lambda self: self.tensors["b_dec"])
    threshold = property(lambda self: self.tensors.get("threshold"))

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def to(self: _S, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> _S:
        """A copy on another device or dtype (same config and identity)."""
        moved = {k: v.to(device=device, dtype=dtype) for k, v in self.tensors.items()}
        return type(self)(self.cfg, moved, ref=self.ref)

    def __repr__(self) -> str:
        name = f"{self.ref.name}/{self.ref.version}" if self.ref else "unregistered"
        c = self.cfg
        return f"SAE({name}, {c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}, k={c.k}, {self.dtype})"
