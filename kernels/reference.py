"""The torch reference: defines correctness for every kernel, and runs wherever Triton does not.

Accumulation is fp32 (fp64 for the eval sums). Top-k ties are broken by lower index,
like the Triton path, so both agree exactly on ties.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from saekit.kernels.data import SAEData as SAE  # the data; kernels.sae adds the methods that call here
from saekit.kernels.data import SparseCode


def _sae_in(x: torch.Tensor, sae: SAE) -> torch.Tensor:
    x = x.float()
    if sae.cfg.apply_b_dec_to_input:
        x = x - sae.b_dec.float()
    return x


def pre_activations(x: torch.Tensor, sae: SAE) -> torch.Tensor:
    """(x - b_dec if configured) @ W_enc + b_enc, in fp32: [n, d_sae].

    Gated SAEs: the gate's pre-activations (b_gate in place of b_enc)."""
    bias = sae.tensors["b_gate"] if sae.cfg.architecture == "gated" else sae.b_enc
    return _sae_in(x, sae) @ sae.W_enc.float() + bias.float()


def encode_dense(x: torch.Tensor, sae: SAE) -> torch.Tensor:
    """Dense latents [n, d_sae] in fp32, per the SAE's architecture."""
    pre = pre_activations(x, sae)
    arch = sae.cfg.architecture
    if arch in ("topk", "batchtopk"):
        code = _topk(torch.relu(pre), sae.cfg.k)
        return torch.zeros_like(pre).scatter_(1, code.indices, code.values)
    if arch == "jumprelu":
        # SAELens jumprelu_sae.py: relu(pre) * (pre > threshold)
        return torch.relu(pre) * (pre > sae.threshold.float())
    if arch == "relu":
        return torch.relu(pre)
    if arch == "gated":
        # SAELens gated_sae.py GatedSAE.encode: (gate pre > 0) * relu(magnitude pre), where
        # magnitude pre = sae_in @ (W_enc * exp(r_mag)) + b_mag
        W = sae.W_enc.float() * sae.tensors["r_mag"].float().exp()
        mag = _sae_in(x, sae) @ W + sae.tensors["b_mag"].float()
        return (pre > 0) * torch.relu(mag)
    raise NotImplementedError(f"encode for {arch} SAEs")


def _topk(acts: torch.Tensor, k: int) -> SparseCode:
    """Top k per row, values descending, ties by lower index: the first k of a stable
    descending sort of each row.

    A full sort of [n, d_sae] is slow, so torch.topk picks the k values and they are put in
    (value descending, index ascending) order; topk leaves the choice among equal values
    unspecified, so rows where the k-th value is tied with a latent left out, or that hold
    NaN, are redone with the full stable sort."""
    values, indices = acts.topk(k, dim=1, sorted=False)
    order = indices.argsort(dim=1)
    values, indices = values.gather(1, order), indices.gather(1, order)
    order = values.sort(dim=1, descending=True, stable=True).indices
    values, indices = values.gather(1, order), indices.gather(1, order)
    if values.shape[0] and k:
        kth = values[:, -1:]
        redo = ((acts == kth).sum(1) != (values == kth).sum(1)) | values.isnan().any(1)
        rows = redo.nonzero().squeeze(1)
        if rows.numel():
            v, i = torch.sort(acts[rows], dim=1, descending=True, stable=True)
            values[rows], indices[rows] = v[:, :k], i[:, :k]
    return SparseCode(values.contiguous(), indices.contiguous())


def encode(x: torch.Tensor, sae: SAE, *, max_k: int | None = None) -> SparseCode:
    """Sparse code [n, k]. TopK: exactly k. ReLU/JumpReLU: k = the batch's largest L0
    (at most ``max_k``), zero-padded; values beyond max_k are dropped."""
    if sae.cfg.architecture in ("topk", "batchtopk"):
        return _topk(torch.relu(pre_activations(x, sae)), sae.cfg.k)
    dense = encode_dense(x, sae)
    k = int((dense > 0).sum(1).max().item()) if dense.numel() else 0
    k = max(1, min(k, max_k or sae.cfg.d_sae))
    return _topk(dense, k)


def decode(values: torch.Tensor, indices: torch.Tensor, sae: SAE) -> torch.Tensor:
    """sum_j values[:, j] * W_dec[indices[:, j]] + b_dec, in fp32: [n, d_in].

    embedding_bag sums the k gathered rows without an [n, k, d_in] intermediate."""
    W = sae.W_dec.float()
    if values.shape[1] == 0 or values.shape[0] == 0:
        return sae.b_dec.float().expand(values.shape[0], -1).clone()
    out = torch.nn.functional.embedding_bag(
        indices, W, per_sample_weights=values.float(), mode="sum"
    )
    return out + sae.b_dec.float()


@dataclass
class EvalStats:
    """Sums over tokens, so batches and devices reduce by addition (act_max by maximum)."""

    n_tokens: int
    sse: torch.Tensor  # sum of squared error, scalar fp64
    sum_x: torch.Tensor  # [d_in] fp64, for the mean
    sum_x2: torch.Tensor  # [d_in] fp64, sum of squares of x per dim
    cos_sum: torch.Tensor  # sum over tokens of cos(x, x_hat), fp64
    l0_sum: torch.Tensor  # number of active latents, int64
    l1_sum: torch.Tensor  # sum of activations, fp64
    fire_count: torch.Tensor  # [d_sae] int64
    act_sum: torch.Tensor  # [d_sae] fp64
    act_max: torch.Tensor  # [d_sae] fp32

    def __add__(self, other: EvalStats) -> EvalStats:
        out = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            out[f.name] = torch.maximum(a, b) if f.name == "act_max" else a + b
        return EvalStats(**out)

    def total_variance_sum(self) -> torch.Tensor:
        """sum over tokens and dims of (x - mean)^2."""
        return (self.sum_x2 - self.sum_x**2 / max(self.n_tokens, 1)).sum()


def eval_batch(x: torch.Tensor, sae: SAE) -> EvalStats:
    """One pass over x [n, d_in]: reconstruction and per-latent statistics."""
    code = encode(x, sae)
    x_hat = decode(code.values, code.indices, sae)
    xf = x.float()
    # per-latent statistics straight from the sparse code (a latent fires when its value > 0)
    idx = code.indices.flatten()
    vals = code.values.float().flatten()
    fired = vals > 0
    vals = torch.where(fired, vals, 0.0)
    d_sae, dev = sae.cfg.d_sae, x.device
    return EvalStats(
        n_tokens=x.shape[0],
        sse=((xf - x_hat) ** 2).sum().double(),
        sum_x=xf.double().sum(0),
        sum_x2=(xf.double() ** 2).sum(0),
        cos_sum=torch.nn.functional.cosine_similarity(xf, x_hat, dim=1).double().sum(),
        l0_sum=fired.sum(),
        l1_sum=vals.double().sum(),
        fire_count=torch.zeros(d_sae, dtype=torch.int64, device=dev).index_add_(0, idx, fired.long()),
        act_sum=torch.zeros(d_sae, dtype=torch.float64, device=dev).index_add_(0, idx, vals.double()),
        act_max=torch.zeros(d_sae, dtype=torch.float32, device=dev).scatter_reduce_(0, idx, vals, "amax"),
    )
