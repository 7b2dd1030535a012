"""Transcoders in memory: one layer (``Transcoder``) and a whole model's set (``TranscoderSet``).

A transcoder reads a module's input x [..., d_in] and predicts its output y [..., d_out]:

    acts  = act(x @ W_enc + b_enc)                   relu | jumprelu | top k of relu
    y_hat = acts @ W_dec + b_dec  (+ x @ W_skip.T)   skip variants

Tensors follow SAELens' convention (W_enc [d_in, d_sae], W_dec [d_sae, d_out], b_dec [d_out],
threshold [d_sae], W_skip [d_out, d_in]). The maths are sae-lens 6.54.12's
(``saes/transcoder.py``: Transcoder, SkipTranscoder, JumpReLUTranscoder, JumpReLUSkipTranscoder)
and sparsify 1.3.3's with ``transcode=True`` (``sparse_coder.py`` SparseCoder.encode never
subtracts b_dec when transcoding; ``fused_encoder.py`` takes the top k of relu(pre)); the
architecture table (saekit.kernels.architectures) says which applies. Computation is in the
transcoder's dtype and differentiable (the attribution graphs take gradients through it);
outputs are returned as fp32, as the SAE reference returns them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from saekit.kernels import architectures as archs
from saekit.kernels import reference
from saekit.kernels.data import SAEData, SparseCode
from saekit.schemas import InputError, SAEConfig, SAERef


class Transcoder(SAEData):
    """One layer's transcoder: weights (SAELens names and shapes), SAEConfig and identity."""

    def __init__(self, cfg: SAEConfig, tensors: dict[str, torch.Tensor], *, ref: SAERef | None = None):
        if not archs.architecture(cfg).transcoder:
            raise InputError(f"{cfg.architecture} is an SAE, not a transcoder (use saekit.kernels.SAE)", where="cfg")
        super().__init__(cfg, tensors, ref=ref)

    # -- description -----------------------------------------------------------------------
    @property
    def architecture(self) -> str:
        return self.cfg.architecture

    d_in = property(lambda self: self.cfg.d_in)
    d_sae = property(lambda self: self.cfg.d_sae)
    d_out = property(lambda self: self.cfg.d_out)
    W_skip = property(lambda self: self.tensors.get("W_skip"))

    @property
    def hook_in(self) -> str | None:
        """Module (or TransformerLens hook) whose input the transcoder reads."""
        return self.cfg.hook_name

    @property
    def hook_out(self) -> str | None:
        """Module (or hook) whose output it predicts; the same module as hook_in unless set."""
        return self.cfg.hook_name_out or self.cfg.hook_name

    # -- maths -----------------------------------------------------------------------------
    def _pre(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d_in:
            raise InputError(f"input has width {x.shape[-1]}, transcoder expects d_in={self.d_in}", where="transcoder")
        return x.to(self.dtype) @ self.W_enc + self.b_enc

    def encode_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations [..., d_sae] (fp32) of x [..., d_in]."""
        pre = self._pre(x)
        act = archs.architecture(self.cfg).activation
        if act == "jumprelu":  # transcoder.py JumpReLUTranscoder.encode: relu(pre) * (pre > threshold)
            return (torch.relu(pre) * (pre > self.threshold).to(pre.dtype)).float()
        if act == "topk":  # sparsify fused_encoder: topk of relu(pre); ties by lower index (reference._topk)
            flat = torch.relu(pre).float().reshape(-1, self.d_sae)
            code = reference._topk(flat, self.cfg.k)
            return torch.zeros_like(flat).scatter(1, code.indices, code.values).reshape(pre.shape)
        return torch.relu(pre).float()

    def encode(self, x: torch.Tensor, *, max_k: int | None = None) -> SparseCode:
        """Sparse code of x [..., d_in] flattened to [n, d_in], as SAE.encode: TopK exactly k
        latents, ReLU/JumpReLU k = the batch's largest L0 (at most ``max_k``), zero-padded."""
        dense = self.encode_dense(x).reshape(-1, self.d_sae)
        if self.cfg.k is not None:
            k = self.cfg.k
        else:
            k = int((dense > 0).sum(1).max().item()) if dense.numel() else 0
            k = max(1, min(k, max_k or self.d_sae))
        return reference._topk(dense, k)

    def decode(self, code: SparseCode) -> torch.Tensor:
        """Predicted output [n, d_out] (fp32) from a sparse code, without the skip term (it
        needs x; see ``forward``)."""
        n = code.values.shape[0]
        if n == 0 or code.values.shape[1] == 0:
            y = torch.zeros(n, self.d_out, device=self.device, dtype=self.dtype)
        else:
            acc = torch.promote_types(self.dtype, torch.float32)
            y = torch.nn.functional.embedding_bag(
                code.indices, self.W_dec.to(acc), per_sample_weights=code.values.to(acc), mode="sum"
            ).to(self.dtype)
        return (y + self.b_dec).float()

    def decode_dense(self, acts: torch.Tensor) -> torch.Tensor:
        """acts [..., d_sae] @ W_dec + b_dec -> [..., d_out] (fp32), no skip term."""
        return (acts.to(self.dtype) @ self.W_dec + self.b_dec).float()

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W_skip.T [..., d_out] (fp32) for skip transcoders, else 0."""
        if self.W_skip is None:
            return torch.zeros((), device=x.device)
        return (x.to(self.dtype) @ self.W_skip.T).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted output [..., d_out] of x [..., d_in], skip term included (fp32)."""
        return self.decode_dense(self.encode_dense(x)) + self.skip(x)

    __call__ = forward

    def __repr__(self) -> str:
        name = f"{self.ref.name}/{self.ref.version}" if self.ref else "unregistered"
        c = self.cfg
        return (f"Transcoder({name}, {c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}, d_out={c.d_out}, "
                f"k={c.k}, {self.hook_in} -> {self.hook_out}, {self.dtype})")


class TranscoderSet(Mapping[int, Transcoder]):
    """A model's transcoders by layer: ``tset[layer]``, ``len``, iteration over sorted layers."""

    def __init__(
        self,
        transcoders: Mapping[int, Transcoder],
        *,
        model_name: str | None = None,
        model_revision: str | None = None,
        ref: SAERef | None = None,
    ):
        if not transcoders:
            raise InputError("a transcoder set needs at least one layer", where="transcoder set")
        for layer, tc in transcoders.items():
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise InputError(f"layer {layer!r} is not a non-negative integer", where="transcoder set")
            if not isinstance(tc, Transcoder):
                raise InputError(f"layer {layer} is a {type(tc).__name__}, not a Transcoder", where="transcoder set")
        self._by_layer = dict(sorted(transcoders.items()))
        first = next(iter(self._by_layer.values())).cfg
        self.model_name = model_name if model_name is not None else first.model_name
        self.model_revision = model_revision if model_revision is not None else first.model_revision
        self.ref = ref

    @property
    def layers(self) -> list[int]:
        return list(self._by_layer)

    def __getitem__(self, layer: int) -> Transcoder:
        try:
            return self._by_layer[layer]
        except KeyError:
            raise KeyError(f"no transcoder for layer {layer} (layers: {self.layers})") from None

    def __len__(self) -> int:
        return len(self._by_layer)

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_layer)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> TranscoderSet:
        """A copy on another device or dtype."""
        return TranscoderSet({i: t.to(device, dtype) for i, t in self._by_layer.items()},
                             model_name=self.model_name, model_revision=self.model_revision, ref=self.ref)

    def __repr__(self) -> str:
        name = f"{self.ref.name}/{self.ref.version}" if self.ref else "unregistered"
        return f"TranscoderSet({name}, {self.model_name}, layers={self.layers})"


__all__ = ["Transcoder", "TranscoderSet"]
