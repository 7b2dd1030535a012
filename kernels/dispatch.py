"""The one place that chooses Triton (CUDA tensors, triton importable) or the torch reference.

``SAEKIT_KERNELS=triton|torch`` forces either. Forcing triton on CPU runs the kernels in
Triton's interpreter and needs ``TRITON_INTERPRET=1`` set before the kernels are first
imported (the CPU tests do this).

What the Triton path covers, and where it falls back to the reference:
- TopK / BatchTopK (per-token top k at inference): fused encode for k <= 1024, which never
  materialises the dense [n, d_sae] latents; larger k uses the reference.
- ReLU / JumpReLU: the same fused kernel with the activation (threshold) in the epilogue,
  kept to a bound of ``max_k`` latents per token (default 256). The kernel also counts each
  token's active latents; the code returned has k = the batch's largest L0, zero-padded,
  exactly as the reference. When a token has more active latents than the bound and the
  caller gave no ``max_k``, the batch is encoded densely by the reference instead, so
  nothing is silently dropped.
- Gated: reference only (it needs a second GEMM for the magnitudes); fp64 weights: reference;
  TopK with rescale_acts_by_decoder_norm: reference.
- Input normalisation (layer_norm, constant_norm_rescale, expected_average_only_in) is
  applied here before the kernel, exactly as the reference does (SAE dtype), and undone
  after the decoder; the code carries the per-token state (SparseCode.out_scale/out_shift).
- Dtypes follow the reference's single definition (sae-lens for an SAE of that dtype): the
  input is cast to the SAE dtype before b_dec is subtracted, the kernel rounds the GEMM
  result to the SAE dtype before and after adding b_enc (LOWP), and the decoder's fp32 sum
  is rounded to the SAE dtype before b_dec is added.
The Triton path is for inference: its outputs carry no autograd graph.
Triton is imported lazily, inside these functions, never at ``import saekit.kernels``.
"""

from __future__ import annotations

import torch

from saekit.kernels import reference
from saekit.kernels.data import SAEData as SAE  # the data; kernels.sae adds the methods that call here
from saekit.kernels.data import SparseCode
from saekit.schemas import InputError
from saekit.schemas.settings import current

# Weight dtypes the fused GEMM takes (fp64 SAEs use the reference).
_GEMM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Sparse-code bound for ReLU/JumpReLU SAEs on the Triton path when no max_k is given.
SPARSE_BOUND = 256


def backend(x: torch.Tensor) -> str:
    """'triton' or 'torch' for this input."""
    forced = current().kernels  # checked when the settings are read
    if forced in ("triton", "torch"):
        return forced
    if x.is_cuda:
        try:
            import triton  # noqa: F401
        except ImportError:
            return "torch"
        return "triton"
    return "torch"


def _kernels():
    """The Triton kernel module (imports triton)."""
    try:
        from saekit.kernels import triton_kernels
    except ImportError as err:
        raise InputError(f"SAEKIT_KERNELS=triton but triton cannot be imported ({err})", where="environment") from err
    return triton_kernels


def _check_device(x: torch.Tensor, sae: SAE, tk) -> None:
    if x.device != sae.device:
        raise InputError(f"input on {x.device} but SAE weights on {sae.device}", where="kernels")
    if not x.is_cuda and not tk._interpreting():
        raise InputError(
            "Triton on CPU needs TRITON_INTERPRET=1 set before saekit's kernels are imported",
            where="SAEKIT_KERNELS",
        )


def _plain(sae: SAE) -> bool:
    """No normalisation, no decoder-norm rescaling: the fused eval kernel's maths."""
    return sae.cfg.normalize_activations == "none" and not sae.cfg.rescale_acts_by_decoder_norm


def encode(x: torch.Tensor, sae: SAE, *, max_k: int | None = None) -> SparseCode:
    """Sparse code (values fp32 [n, k] descending, indices int64 [n, k]); see the module doc."""
    arch = sae.cfg.architecture
    if (backend(x) == "torch" or arch == "gated" or sae.dtype not in _GEMM_DTYPES
            or sae.cfg.rescale_acts_by_decoder_norm):
        return reference.encode(x, sae, max_k=max_k)
    tk = _kernels()
    _check_device(x, sae, tk)
    n = x.shape[0]
    s_in, scale, shift = reference.sae_in(x, sae)
    s_in = s_in.contiguous()
    if arch in ("topk", "batchtopk"):
        k = sae.cfg.k
        if k > tk.MAX_FUSED_K or n == 0:
            return reference.encode(x, sae, max_k=max_k)
        values, indices, _ = tk.encode_topk(s_in, sae.W_enc, sae.b_enc.float().contiguous(), k)
        return SparseCode(values, indices, scale, shift)
    bound = min(max_k or SPARSE_BOUND, sae.cfg.d_sae, tk.MAX_FUSED_K)
    if n == 0:
        return reference.encode(x, sae, max_k=max_k)
    jump = sae.threshold.float().contiguous() if arch == "jumprelu" else None
    values, indices, nnz = tk.encode_topk(s_in, sae.W_enc, sae.b_enc.float().contiguous(), bound, jump=jump)
    widest = int(nnz.max().item())
    if widest > bound and max_k is None:
        return reference.encode(x, sae)  # documented dense fallback: nothing is dropped
    k = max(1, min(widest, bound))
    return SparseCode(values[:, :k].contiguous(), indices[:, :k].contiguous(), scale, shift)


def decode(
    values: torch.Tensor, indices: torch.Tensor, sae: SAE, *, out_scale=None, out_shift=None
) -> torch.Tensor:
    """x_hat fp32 [n, d_in]: the sum of the k gathered decoder rows, plus b_dec, with the input
    normalisation undone (out_scale/out_shift from the code)."""
    if (backend(values) == "torch" or values.numel() == 0 or sae.dtype not in _GEMM_DTYPES
            or sae.cfg.rescale_acts_by_decoder_norm):
        return reference.decode(values, indices, sae, out_scale=out_scale, out_shift=out_shift)
    tk = _kernels()
    _check_device(values, sae, tk)
    if sae.dtype == torch.float32 and _plain(sae):
        return tk.decode(values, indices, sae.W_dec, sae.b_dec)
    zero = torch.zeros_like(sae.b_dec)
    return reference.finish_decode(tk.decode(values, indices, sae.W_dec, zero), sae, out_scale, out_shift)


def eval_batch(x: torch.Tensor, sae: SAE) -> reference.EvalStats:
    """One-pass statistics of x [n, d_in]: sums that reduce across batches by addition."""
    if backend(x) == "torch" or x.shape[0] == 0:
        return reference.eval_batch(x, sae)
    tk = _kernels()
    _check_device(x, sae, tk)
    code = encode(x, sae)
    if sae.dtype != torch.float32 or not _plain(sae) or sae.cfg.architecture == "gated":
        # the fused eval kernel adds b_dec in fp32 and knows no normalisation: decode, then sum
        x_hat = decode(code.values, code.indices, sae, out_scale=code.out_scale, out_shift=code.out_shift)
        return reference.stats_from_code(x, code, x_hat, sae)
    s = tk.eval_sums(x, code.values, code.indices, sae.W_dec, sae.b_dec)
    rows = s["rows"].double()
    sse, xx, hh, xh = rows.unbind(1)
    # torch.nn.functional.cosine_similarity: x.y / max(|x| |y|, eps), eps 1e-8
    cos = xh / torch.clamp_min((xx * hh).sqrt(), 1e-8)
    fire = s["fire"].long()
    return reference.EvalStats(
        n_tokens=x.shape[0],
        sse=sse.sum(),
        sum_x=s["sum_x"],
        sum_x2=s["sum_x2"],
        cos_sum=cos.sum(),
        l0_sum=fire.sum(),
        l1_sum=s["act_sum"].sum(),
        fire_count=fire,
        act_sum=s["act_sum"],
        act_max=s["act_max"],
    )
