"""On a CUDA GPU: bf16 and realistic shapes, compiled kernels against the fp32 reference."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import assert_close, assert_codes_match, make_sae, make_x

from saekit.kernels import dispatch, reference

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
pytestmark = [pytest.mark.gpu, requires_cuda]


@pytest.mark.parametrize("n,d_in,d_sae,k", [(1000, 576, 4608, 32), (515, 768, 24576, 64), (300, 2304, 131072, 192)])
def test_fp32_large_matches_reference(n, d_in, d_sae, k, triton_path, seed):
    sae = make_sae("topk", d_in, d_sae, k, seed=seed, device="cuda")
    x = make_x(n, d_in, seed=seed, device="cuda")
    got = dispatch.encode(x, sae)
    ref = reference.encode(x, sae)
    dense = torch.relu(reference.pre_activations(x, sae))
    assert_codes_match(got, ref, dense, rtol=1e-4, what=f"fp32 {n}x{d_in}x{d_sae} k{k} (seed {seed})")


@pytest.mark.parametrize("n,d_in,d_sae,k", [(4096, 2304, 16384, 64), (777, 2304, 131072, 64)])
def test_bf16_agrees_with_reference(n, d_in, d_sae, k, triton_path, seed):
    """bf16 inputs: the kernel rounds x - b_dec to bf16 before the GEMM (as SAELens does);
    compare with the reference run on the same bf16 input, in fp32 accumulation."""
    sae = make_sae("topk", d_in, d_sae, k, seed=seed, device="cuda", dtype=torch.bfloat16)
    x = make_x(n, d_in, seed=seed, device="cuda").bfloat16()
    got = dispatch.encode(x, sae)
    ref = reference.encode(x, sae)
    overlap = torch.zeros(n, d_sae, device="cuda", dtype=torch.bool)
    overlap.scatter_(1, ref.indices, True)
    frac = overlap.gather(1, got.indices).float().mean().item()
    assert frac > 0.97, f"index overlap {frac:.4f} (seed {seed})"
    assert_close(got.values.sort(1).values, ref.values.sort(1).values, rtol=3e-2, what="bf16 values")
    x_hat = dispatch.decode(got.values, got.indices, sae)
    assert_close(x_hat, reference.decode(got.values, got.indices, sae), rtol=1e-4, what="bf16 decode")
    s, r = dispatch.eval_batch(x, sae), reference.eval_batch(x, sae)
    assert_close(s.sse, r.sse, rtol=2e-2, what="bf16 sse")
    assert_close(s.sum_x2, r.sum_x2, rtol=1e-9, what="bf16 sum_x2")
