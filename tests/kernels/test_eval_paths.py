"""The eval pass on the Triton path, every output, against the reference; and its determinism.

Without CUDA these run in Triton's interpreter (see conftest.py) and force what the GPU does
by default: several column splits merged per row (the interpreter's tiles give 4 splits for
a 16-row batch), and in the ``sort`` tests the bitonic ``tl.sort`` compaction instead of the
interpreter's rank-based one. Shapes are odd (no dimension a multiple of a block) and every
test evaluates several batches, the last one partial, summed with ``EvalStats.__add__``.
"""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import (
    assert_close,
    assert_eval_identical,
    assert_eval_matches,
    eval_in_batches,
    make_eval_case,
)

from saekit.kernels import dispatch, reference

ARCHS = [("topk", 5), ("relu", None), ("jumprelu", None)]
# bf16 runs on a GPU (tests/kernels/test_gpu.py): Triton's CPU interpreter computes bf16 wrongly
# (numpy has no bf16), and its fp32 workaround does not round as the bf16 reference (sae-lens'
# semantics: SAE-dtype pre-activations and reconstruction) does.
DTYPES = [pytest.param(torch.float32, id="fp32"),
          pytest.param(torch.bfloat16, id="bf16", marks=pytest.mark.skipif(
              not torch.cuda.is_available(), reason="bf16 Triton runs on a GPU only (interpreter bf16 is wrong)"))]
# 37 tokens in batches 16 + 16 + 5 (the interpreter's encode blocks are 16 rows, its eval
# blocks 4 rows, its column-sum chunks 8 rows); d_in 13 and d_sae 45 end mid-tile.
N, D_IN, D_SAE, BATCHES = 37, 13, 45, [16, 16, 5]


@pytest.mark.parametrize("arch,k", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_eval_every_output_random(arch, k, dtype, triton_path, device, seed):
    sae, x = make_eval_case("random", arch, N, D_IN, D_SAE, k, seed=seed, device=device, dtype=dtype)
    got = eval_in_batches(dispatch.eval_batch, x, BATCHES, sae)
    want = reference.eval_batch(x, sae)
    assert_eval_matches(got, want, what=f"{arch} {dtype} random (seed {seed})")


@pytest.mark.parametrize("arch,k", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_eval_every_output_ties_and_nan(arch, k, dtype, triton_path, device, seed):
    """Integer weights and inputs: heavy ties (lower index wins on both paths), JumpReLU
    pre-activations equal to the threshold (must not fire), every sum exact; a NaN input in
    two tokens, one of them in the partial batch (NaN where the reference has NaN, never a
    fire)."""
    sae, x = make_eval_case("ties", arch, N, D_IN, D_SAE, k, seed=seed, device=device, dtype=dtype,
                            nan_rows=(3, 35))
    got = eval_in_batches(dispatch.eval_batch, x, BATCHES, sae)
    want = eval_in_batches(reference.eval_batch, x, BATCHES, sae)
    assert_eval_matches(got, want, exact=True, what=f"{arch} {dtype} ties+nan (seed {seed})")
    assert bool(got.sse.isnan()) and int(got.fire_count.sum()) > 0


@pytest.mark.parametrize("arch,k", ARCHS)
def test_eval_sort_compaction_multi_split(arch, k, triton_path, device, seed):
    """The GPU's compaction (bitonic tl.sort) with several splits per row and 8-wide tiles:
    TopK (k 3, CAP 16) compacts inside the tile loop as well as at the end; ReLU/JumpReLU codes
    are min(256, d_sae) wide, so their splits never overflow and sort once, at the end. Kept
    tiny: tl.sort is slow in the interpreter."""
    bn = 16 if torch.cuda.is_available() else 8  # compiled tl.dot needs tiles of at least 16
    triton_path.CONFIG_OVERRIDE.update({"SORT": True, "BLOCK_N": bn, "ROWS": 16, "programs": 2 if k else 3})
    d_sae = 40 if arch == "topk" else 20
    sae, x = make_eval_case("ties", arch, 11, 7, d_sae, 3 if k else None, seed=seed, device=device,
                            nan_rows=(9,))
    if not torch.cuda.is_available():
        cfg = triton_path._encode_config(8, d_sae, 3 if k else d_sae, x.device)
        assert cfg["SORT"] and cfg["splits"] > 1, cfg
    code = dispatch.encode(x, sae)
    ref = reference.encode(x, sae)
    assert torch.equal(code.indices.cpu(), ref.indices.cpu()), f"{arch} sort indices (seed {seed})"
    assert torch.equal(code.values.cpu().nan_to_num(-1), ref.values.cpu().nan_to_num(-1)), f"{arch} sort values"
    got = eval_in_batches(dispatch.eval_batch, x, [8, 3], sae)
    want = eval_in_batches(reference.eval_batch, x, [8, 3], sae)
    assert_eval_matches(got, want, exact=True, what=f"{arch} sort compaction (seed {seed})")


def test_eval_is_deterministic(triton_path, device, seed):
    """Two runs: identical bit for bit. Given the same code, the per-latent statistics
    (counts, maxima, act_sum) are even independent of token order: act_sum is an integer
    sum on a per-latent grid. (The code itself may differ in the last bit when a token moves
    to another row of a GEMM tile.)"""
    sae, x = make_eval_case("random", "topk", 29, D_IN, D_SAE, 6, seed=seed, device=device)
    a = dispatch.eval_batch(x, sae)
    b = dispatch.eval_batch(x, sae)
    assert_eval_identical(a, b, what=f"rerun (seed {seed})")
    assert_eval_matches(a, reference.eval_batch(x, sae), what=f"deterministic vs reference (seed {seed})")
    code = dispatch.encode(x, sae)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed)).to(x.device)
    args = (sae.W_dec, sae.b_dec)
    s1 = triton_path.eval_sums(x, code.values, code.indices, *args)
    s2 = triton_path.eval_sums(x[perm], code.values[perm], code.indices[perm], *args)
    for name in ("fire", "act_sum", "act_max"):
        assert torch.equal(s1[name].cpu(), s2[name].cpu()), f"{name} depends on token order (seed {seed})"


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0 in the decode, as in torch
def test_eval_sums_adversarial_codes(triton_path, device):
    """The per-latent reductions on hand-made codes: values near the fp32 maximum (their sum
    overflows fp32, not fp64), subnormals, +inf, NaN and zeros (never fire), one latent hit by
    every entry, and a latent whose values span 2^-20 .. 2^20."""
    tk = triton_path
    big, tiny = 3.0e38, 1.0e-40
    vals = torch.tensor([
        [big, 1.0, 0.0, 2.0**20],
        [big, tiny, float("nan"), 2.0**-20],
        [float("inf"), 2.0, 0.0, 1.5],
        [tiny, 3.0, 0.0, 0.25],
    ])
    idx = torch.tensor([[0, 5, 6, 3], [0, 1, 6, 3], [2, 5, 6, 3], [1, 5, 4, 3]])
    d_sae, d_in = 8, 3
    w_dec = torch.zeros(d_sae, d_in)
    x = torch.zeros(4, d_in)
    s = tk.eval_sums(x.to(device), vals.to(device), idx.to(device), w_dec.to(device), torch.zeros(d_in, device=device))
    fired = vals > 0  # NaN and 0 never fire
    want_fire = torch.zeros(d_sae, dtype=torch.int64).index_add_(0, idx[fired], torch.ones(int(fired.sum()), dtype=torch.int64))
    assert torch.equal(s["fire"].cpu().long(), want_fire)
    want_sum = torch.zeros(d_sae, dtype=torch.float64).index_add_(0, idx[fired], vals[fired].double())
    want_max = torch.zeros(d_sae).scatter_reduce_(0, idx[fired], vals[fired], "amax")
    assert torch.equal(s["act_max"].cpu(), want_max)
    got_sum = s["act_sum"].cpu()
    assert got_sum[2] == float("inf") and got_sum[0] == want_sum[0]  # 2 * fp32(3e38): exact
    finite = want_sum.isfinite()
    # grid rounding: at most count * unit / 2 per latent (eval_sums' bound)
    unit = torch.ldexp(torch.ones(d_sae, dtype=torch.float64), tk.latent_sum_unit_exponent(s["fire"].cpu(), want_max))
    bound = want_fire.double() * unit / 2
    assert bool(((got_sum - want_sum).abs()[finite] <= bound[finite]).all()), (got_sum, want_sum)
    assert_close(got_sum[finite], want_sum[finite], rtol=1e-12, what="act_sum adversarial")
    assert int(s["fire"][6]) == 0 and float(s["act_sum"][6]) == 0.0


def test_latent_grid_keeps_int64_headroom():
    """For any count and maximum, count values on the latent's grid sum below 2^62 units."""
    from saekit.kernels.triton_kernels import latent_sum_unit_exponent

    counts = torch.tensor([1, 2, 3, 4, 1000, 2**14, 2**20 + 1, 2**31 - 1], dtype=torch.int32)
    for m in (1e-45, 1e-30, 0.75, 1.0, 3.0, 1e30, 3.4e38):
        maxes = torch.full(counts.shape, m, dtype=torch.float32)
        u = latent_sum_unit_exponent(counts, maxes).double()
        units = counts.double() * (maxes.double() / torch.exp2(u)).ceil()
        assert bool((units < 2.0**62).all()), (m, units)
