"""Random SAEs and their edited copies (permuted, split, pruned) for the matching tests."""

from __future__ import annotations

import torch

from saekit.kernels import SAE
from saekit.schemas import SAEConfig


def random_sae(d_in: int = 64, d_sae: int = 512, *, k: int = 8, seed: int = 0) -> SAE:
    """A TopK SAE with unit decoder rows and W_enc = W_dec.T (the usual initialisation)."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    tensors = {
        "W_enc": W_dec.T.clone().contiguous(),
        "b_enc": 0.01 * torch.randn(d_sae, generator=g),
        "W_dec": W_dec,
        "b_dec": torch.zeros(d_in),
    }
    return SAE(SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k), tensors)


def with_latents(sae: SAE, W_dec: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor) -> SAE:
    cfg = sae.cfg.model_copy(update={"d_sae": W_dec.shape[0]})
    tensors = {"W_enc": W_enc.contiguous(), "b_enc": b_enc.contiguous(), "W_dec": W_dec.contiguous(), "b_dec": sae.b_dec}
    return SAE(cfg, tensors)


def permuted(sae: SAE, perm: torch.Tensor) -> SAE:
    """Latent j of the copy is latent perm[j] of ``sae``."""
    return with_latents(sae, sae.W_dec[perm], sae.W_enc[:, perm], sae.b_enc[perm])


def split_copy(sae: SAE, split: list[int], *, noise: float = 0.0, seed: int = 1) -> SAE:
    """Latent i in ``split`` becomes two latents: i (scaled by 0.6) and a new one appended at
    the end (scaled by 0.4), each with its own small rotation when ``noise`` > 0."""
    g = torch.Generator().manual_seed(seed)
    W_dec, W_enc, b_enc = sae.W_dec.clone(), sae.W_enc.clone(), sae.b_enc.clone()
    extra_dec, extra_enc, extra_b = [], [], []
    for i in split:
        d = sae.W_dec[i]
        d1 = d + noise * torch.randn(d.shape, generator=g) / d.numel() ** 0.5
        d2 = d + noise * torch.randn(d.shape, generator=g) / d.numel() ** 0.5
        W_dec[i] = 0.6 * d1
        W_enc[:, i] = d1
        extra_dec.append(0.4 * d2)
        extra_enc.append(d2)
        extra_b.append(b_enc[i])
    return with_latents(
        sae,
        torch.cat([W_dec, torch.stack(extra_dec)]),
        torch.cat([W_enc, torch.stack(extra_enc, dim=1)], dim=1),
        torch.cat([b_enc, torch.stack(extra_b)]),
    )
