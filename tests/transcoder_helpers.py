"""Random transcoders for the tests (kernels, registry): every architecture of the table,
odd widths, with weights large enough that activations are neither all zero nor all on."""

from __future__ import annotations

import torch

from saekit.kernels import architectures as archs
from saekit.kernels.transcoder import Transcoder
from saekit.schemas import SAEConfig

TRANSCODER_ARCHS = [a.name for a in archs.ARCHITECTURES.values() if a.transcoder]
SAELENS_TRANSCODERS = [a.name for a in archs.ARCHITECTURES.values() if a.transcoder and a.saelens_name]


def make_transcoder(arch: str, *, d_in: int = 13, d_sae: int = 37, d_out: int | None = 11, k: int = 5,
                    seed: int = 0, dtype: torch.dtype = torch.float32, hook: str = "model.layers.3.mlp",
                    hook_out: str | None = None, model: str = "org/model", layer: int | None = None) -> Transcoder:
    g = torch.Generator().manual_seed(seed)
    d_out = d_in if d_out is None else d_out
    a = archs.ARCHITECTURES[arch]
    t = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "b_enc": torch.randn(d_sae, generator=g) * 0.3,
        "W_dec": torch.randn(d_sae, d_out, generator=g) / d_sae**0.5,
        "b_dec": torch.randn(d_out, generator=g) * 0.1,
    }
    if "threshold" in a.tensors:
        t["threshold"] = torch.rand(d_sae, generator=g) * 0.5
    if a.skip:
        t["W_skip"] = torch.randn(d_out, d_in, generator=g) / d_in**0.5
    cfg = SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, d_out=d_out, k=k if a.topk else None,
                    dtype=str(dtype).removeprefix("torch."), model_name=model, hook_name=hook,
                    hook_name_out=hook_out)
    return Transcoder(cfg, {n: v.to(dtype) for n, v in t.items()})


def by_hand(tc: Transcoder, x: torch.Tensor) -> torch.Tensor:
    """The transcoder's output written out from the definitions, in fp64."""
    t = {n: v.double() for n, v in tc.tensors.items()}
    x = x.double()
    pre = x @ t["W_enc"] + t["b_enc"]
    act = archs.ARCHITECTURES[tc.architecture].activation
    if act == "jumprelu":
        acts = pre.clamp_min(0) * (pre > t["threshold"])
    elif act == "topk":
        r = pre.clamp_min(0)
        kth = r.topk(tc.cfg.k, dim=-1).values[..., -1:]
        acts = r * (r >= kth)
    else:
        acts = pre.clamp_min(0)
    y = acts @ t["W_dec"] + t["b_dec"]
    if "W_skip" in t:
        y = y + x @ t["W_skip"].T
    return y
