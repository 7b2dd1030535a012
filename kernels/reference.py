"""The torch reference: defines correctness for every kernel, and runs wherever Triton does not.

One definition for every dtype: what sae-lens 6.54.12 computes for an SAE of that dtype on
the same device (see saekit.kernels.architectures for the maths and its source lines).
The input is cast to the SAE's dtype, normalised and shifted by b_dec in that dtype
(sae.py ``SAE.process_sae_in``), pre-activations are the SAE-dtype GEMM plus bias; the
decoder sums k rows in fp32 and rounds once to the SAE dtype before b_dec is added, as a
dense SAE-dtype GEMM with fp32 accumulation does (sae-lens: ``feature_acts @ W_dec + b_dec``).
For fp32 SAEs every rounding step is the identity. Outputs are returned as fp32 tensors
(values exactly representable in the SAE dtype). The eval sums are fp64.
Top-k ties are broken by lower index, like the Triton path, so both agree exactly on ties.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from saekit.kernels.architectures import LAYER_NORM_EPS
from saekit.kernels.data import SAEData as SAE  # the data; kernels.sae adds the methods that call here
from saekit.kernels.data import SparseCode


def normalize_in(x: torch.Tensor, sae: SAE) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """x cast to the SAE dtype and normalised (sae.py ``_setup_activation_normalization``);
    returns (x_norm, out_scale, out_shift) for ``normalize_out``."""
    x = x.to(sae.dtype)
    norm = sae.cfg.normalize_activations
    if norm == "layer_norm":  # run_time_activation_ln_in
        mu = x.mean(dim=-1, keepdim=True)
        x = x - mu
        std = x.std(dim=-1, keepdim=True)
        return x / (std + LAYER_NORM_EPS), std, mu
    if norm == "constant_norm_rescale":  # run_time_activation_norm_fn_in
        coeff = (sae.cfg.d_in**0.5) / x.norm(dim=-1, keepdim=True)
        return x * coeff, coeff, None
    if norm == "expected_average_only_in":  # fold_activation_norm_scaling_factor, unfolded
        return x * sae.cfg.norm_scaling_factor, None, None
    return x, None, None


def normalize_out(y: torch.Tensor, sae: SAE, out_scale, out_shift) -> torch.Tensor:
    """Undo the input normalisation on a reconstruction y (SAE dtype)."""
    norm = sae.cfg.normalize_activations
    if norm == "layer_norm":  # run_time_activation_ln_out: x * ln_std + ln_mu
        return y * out_scale + out_shift
    if norm == "constant_norm_rescale":  # run_time_activation_norm_fn_out: x / x_norm_coeff
        return y / out_scale
    if norm == "expected_average_only_in":
        return y / sae.cfg.norm_scaling_factor
    return y


def sae_in(x: torch.Tensor, sae: SAE) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """sae.py SAE.process_sae_in: normalised x minus b_dec (when configured), SAE dtype."""
    xn, scale, shift = normalize_in(x, sae)
    if sae.cfg.apply_b_dec_to_input:
        xn = xn - sae.b_dec
    return xn, scale, shift


def _hidden_pre(x: torch.Tensor, sae: SAE):
    """The SAE-dtype pre-activations sae-lens selects and thresholds on, with the norm state."""
    s, scale, shift = sae_in(x, sae)
    if sae.cfg.architecture == "gated":
        return s @ sae.W_enc + sae.tensors["b_gate"], s, scale, shift
    pre = s @ sae.W_enc + sae.b_enc
    if sae.cfg.rescale_acts_by_decoder_norm:  # topk_sae.py TopKSAE.encode
        pre = pre * sae.W_dec.norm(dim=-1)
    return pre, s, scale, shift


def pre_activations(x: torch.Tensor, sae: SAE) -> torch.Tensor:
    """Pre-activations [n, d_sae] as fp32 (gated SAEs: the gate's, b_gate in place of b_enc)."""
    return _hidden_pre(x, sae)[0].float()


def _dense(x: torch.Tensor, sae: SAE):
    pre, s, scale, shift = _hidden_pre(x, sae)
    arch = sae.cfg.architecture
    if arch in ("topk", "batchtopk"):
        code = _topk(torch.relu(pre).float(), sae.cfg.k)
        acts = torch.zeros_like(pre, dtype=torch.float32).scatter_(1, code.indices, code.values)
    elif arch == "jumprelu":  # jumprelu_sae.py: relu(pre) * (pre > threshold)
        acts = (torch.relu(pre) * (pre > sae.threshold).to(pre.dtype)).float()
    elif arch == "relu":
        acts = torch.relu(pre).float()
    elif arch == "gated":  # gated_sae.py GatedSAE.encode
        mag = s @ (sae.W_enc * sae.tensors["r_mag"].exp()) + sae.tensors["b_mag"]
        acts = ((pre > 0).to(sae.dtype) * torch.relu(mag)).float()
    else:
        raise NotImplementedError(f"encode for {arch} SAEs")
    return acts, scale, shift


def encode_dense(x: torch.Tensor, sae: SAE) -> torch.Tensor:
    """Dense latents [n, d_sae] as fp32, per the SAE's architecture (sae-lens' feature acts)."""
    return _dense(x, sae)[0]


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
    """Sparse code [n, k]. TopK: exactly k. ReLU/JumpReLU/gated: k = the batch's largest L0
    (at most ``max_k``), zero-padded; values beyond max_k are dropped."""
    if sae.cfg.architecture in ("topk", "batchtopk"):
        pre, _, scale, shift = _hidden_pre(x, sae)
        code = _topk(torch.relu(pre).float(), sae.cfg.k)
        return SparseCode(code.values, code.indices, scale, shift)
    dense, scale, shift = _dense(x, sae)
    k = int((dense > 0).sum(1).max().item()) if dense.numel() else 0
    k = max(1, min(k, max_k or sae.cfg.d_sae))
    code = _topk(dense, k)
    return SparseCode(code.values, code.indices, scale, shift)


def decoder_weights(values: torch.Tensor, indices: torch.Tensor, sae: SAE) -> torch.Tensor:
    """The activations the decoder multiplies: values, divided by ||W_dec[i]|| for TopK SAEs
    with rescale_acts_by_decoder_norm (topk_sae.py act_times_W_dec), SAE-dtype arithmetic."""
    if not sae.cfg.rescale_acts_by_decoder_norm:
        return values
    inv = 1 / sae.W_dec.norm(dim=-1)
    return (values.to(sae.dtype) * inv[indices]).to(values.dtype)


def finish_decode(y: torch.Tensor, sae: SAE, out_scale=None, out_shift=None) -> torch.Tensor:
    """fp32 sum of decoder rows -> rounded to the SAE dtype, + b_dec, de-normalised; as fp32."""
    y = y.to(sae.dtype) + sae.b_dec
    return normalize_out(y, sae, out_scale, out_shift).float()


def decode(values: torch.Tensor, indices: torch.Tensor, sae: SAE, *, out_scale=None, out_shift=None) -> torch.Tensor:
    """sum_j values[:, j] * W_dec[indices[:, j]] + b_dec, then the input normalisation undone:
    [n, d_in] fp32. embedding_bag sums the k gathered rows without an [n, k, d_in] intermediate."""
    if values.shape[1] == 0 or values.shape[0] == 0:
        y = torch.zeros(values.shape[0], sae.cfg.d_in, device=values.device)
    else:
        acc = torch.promote_types(sae.dtype, torch.float32)  # fp32 accumulation (fp64 SAEs: fp64)
        y = torch.nn.functional.embedding_bag(
            indices, sae.W_dec.to(acc), per_sample_weights=decoder_weights(values, indices, sae).to(acc), mode="sum"
        )
    return finish_decode(y, sae, out_scale, out_shift)


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
    x_hat = decode(code.values, code.indices, sae, out_scale=code.out_scale, out_shift=code.out_shift)
    return stats_from_code(x, code, x_hat, sae)


def stats_from_code(x: torch.Tensor, code: SparseCode, x_hat: torch.Tensor, sae: SAE) -> EvalStats:
    """EvalStats of x [n, d_in] from its sparse code and reconstruction (fp32)."""
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
