"""The SAE's data in memory: its tensors, SAEConfig and identity, and the sparse-code type.

No compute here: the torch reference and the dispatch point read this data, and
saekit.kernels.sae adds the methods (``sae.encode(x)``, ...) that call the dispatch point.
"""

from __future__ import annotations

from typing import NamedTuple, TypeVar

import torch

from saekit.schemas import InputError, SAEConfig, SAERef

# Tensor names and shapes of the canonical artifact (SAELens layout).
_SHAPES = {
    "W_enc": ("d_in", "d_sae"),
    "b_enc": ("d_sae",),
    "W_dec": ("d_sae", "d_in"),
    "b_dec": ("d_in",),
    "threshold": ("d_sae",),  # jumprelu
    # gated (SAELens GatedSAE names): b_gate replaces b_enc
    "b_gate": ("d_sae",),
    "r_mag": ("d_sae",),
    "b_mag": ("d_sae",),
}
_EXTRA = {"jumprelu": ["threshold"], "gated": ["b_gate", "r_mag", "b_mag"]}


class SparseCode(NamedTuple):
    """The active latents of each token."""

    values: torch.Tensor
    """[n, k] activations of the kept latents (>= 0; 0 marks padding for non-TopK SAEs)."""
    indices: torch.Tensor
    """[n, k] int64 latent ids, ordered by value descending, ties by lower index."""


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
        dims = {"d_in": cfg.d_in, "d_sae": cfg.d_sae}
        needed = ["W_enc", "W_dec", "b_dec"] + _EXTRA.get(cfg.architecture, [])
        if cfg.architecture != "gated":
            needed.append("b_enc")
        for name in needed:
            if name not in tensors:
                raise InputError(f"missing tensor {name!r}", where="sae_weights")
        for name, t in tensors.items():
            want = tuple(dims[d] for d in _SHAPES.get(name, ()))
            if name in _SHAPES and tuple(t.shape) != want:
                raise InputError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {want}", where="sae_weights")
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
