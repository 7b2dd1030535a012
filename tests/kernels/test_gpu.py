"""On a CUDA GPU: bf16 and realistic shapes, compiled kernels against the reference.

Every test here is marked ``gpu`` and skips without CUDA; benchmarks/gpu_acceptance.py runs
them (``pytest -m gpu tests/kernels``). The same checks run at tiny shapes in Triton's
interpreter in test_eval_paths.py."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import (
    assert_close,
    assert_codes_match,
    assert_eval_identical,
    assert_eval_matches,
    eval_in_batches,
    make_eval_case,
    make_sae,
    make_x,
    reference_eval_given_code,
)

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


# --------------------------------------------------------------------------------------
# the eval pass at GPU shapes: every output, every architecture, fp32 and bf16
# --------------------------------------------------------------------------------------

# (arch, k, d_in, d_sae, batches): three batches, the last one partial, or one wide SAE.
GPU_EVAL_SHAPES = [
    pytest.param("topk", 64, 2304, 16384, [1024, 1024, 333], id="topk-2304x16384"),
    pytest.param("relu", None, 2304, 16384, [1024, 1024, 333], id="relu-2304x16384"),
    pytest.param("jumprelu", None, 2304, 16384, [1024, 1024, 333], id="jumprelu-2304x16384"),
    pytest.param("topk", 192, 4096, 131072, [512, 77], id="topk-4096x131072-k192"),
]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]


@pytest.mark.parametrize("arch,k,d_in,d_sae,batches", GPU_EVAL_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_eval_every_output_random(arch, k, d_in, d_sae, batches, dtype, triton_path, seed):
    """Random inputs: per batch, the code against the reference's (up to near-ties), and every
    eval output against the reference's eval of that same code."""
    n = sum(batches)
    sae, x = make_eval_case("random", arch, n, d_in, d_sae, k, seed=seed, device="cuda", dtype=dtype, target_l0=48)
    got = want = None
    start = 0
    for size in batches:
        xb = x[start:start + size]
        start += size
        code = dispatch.encode(xb, sae)
        ref = reference.encode(xb, sae)
        if arch != "topk":  # the fused path ran (no dense fallback past the sparse bound)
            assert code.values.shape[1] <= dispatch.SPARSE_BOUND, f"L0 {code.values.shape[1]}"
        if code.values.shape == ref.values.shape:  # ReLU width = the batch's largest L0 (may differ by a near-tie)
            dense = reference.encode_dense(xb, sae) if arch != "topk" else torch.relu(reference.pre_activations(xb, sae))
            rtol = 1e-4 if dtype == torch.float32 else 1e-3
            assert_codes_match(code, ref, dense, rtol=rtol, what=f"{arch} {dtype} code (seed {seed})")
        g, w = dispatch.eval_batch(xb, sae), reference_eval_given_code(xb, sae, code)
        got, want = (g, w) if got is None else (got + g, want + w)
    assert_eval_matches(got, want, what=f"{arch} {dtype} {d_in}x{d_sae} random (seed {seed})")
    assert got.n_tokens == n and int(got.l0_sum) > 0


@pytest.mark.parametrize("arch,k,d_in,d_sae,batches", GPU_EVAL_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_eval_every_output_adversarial(arch, k, d_in, d_sae, batches, dtype, triton_path, seed):
    """Integer weights and inputs (exact sums: both paths give the same code, ties to the
    lower index), a token equal to b_dec, a 64x outlier token (TopK), NaN in two tokens (one
    in the partial batch): every output equal to the reference's, NaN where it has NaN."""
    n = sum(batches)
    sae, x = make_eval_case("ties", arch, n, d_in, d_sae, k, seed=seed, device="cuda", dtype=dtype,
                            nan_rows=(5, n - 2), target_l0=48)
    if arch != "topk":  # the fused path ran (no dense fallback past the sparse bound)
        widest = max(dispatch.encode(xb, sae).values.shape[1] for xb in x.split(batches))
        assert widest <= dispatch.SPARSE_BOUND, f"L0 {widest}"
    got = eval_in_batches(dispatch.eval_batch, x, batches, sae)
    want = eval_in_batches(reference.eval_batch, x, batches, sae)
    assert_eval_matches(got, want, exact=True, what=f"{arch} {dtype} {d_in}x{d_sae} adversarial (seed {seed})")


def test_eval_bitwise_deterministic_at_scale(triton_path, seed):
    """(4096 tokens, 4096 -> 131072, k 64, bf16): two runs give the same record bit for bit;
    given one code, per-latent statistics do not depend on token order."""
    sae, x = make_eval_case("random", "topk", 4096, 4096, 131072, 64, seed=seed, device="cuda", dtype=torch.bfloat16)
    a, b = dispatch.eval_batch(x, sae), dispatch.eval_batch(x, sae)
    assert_eval_identical(a, b, what=f"rerun (seed {seed})")
    c1, c2 = dispatch.encode(x, sae), dispatch.encode(x, sae)
    assert torch.equal(c1.indices, c2.indices) and torch.equal(c1.values, c2.values), "encode not deterministic"
    perm = torch.randperm(x.shape[0], device="cuda")
    s1 = triton_path.eval_sums(x, c1.values, c1.indices, sae.W_dec, sae.b_dec)
    s2 = triton_path.eval_sums(x[perm], c1.values[perm], c1.indices[perm], sae.W_dec, sae.b_dec)
    for name in ("fire", "act_sum", "act_max"):
        assert torch.equal(s1[name], s2[name]), f"{name} depends on token order (seed {seed})"
