"""Triton kernels against the torch reference, fp32, at small shapes that are not multiples of
the block sizes. Without CUDA they run in Triton's interpreter (see conftest.py)."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import assert_close, assert_codes_match, make_sae, make_x

from saekit.kernels import dispatch, reference

# (n, d_in, d_sae, k, interpreter tile overrides). Interpreter default tiles: 16 rows,
# 32 latents, 16 inputs; CAP = next_pow2(k + 32).
TOPK_CASES = [
    pytest.param(37, 24, 100, 7, {}, id="odd-shapes"),
    pytest.param(5, 16, 64, 1, {}, id="k1"),
    pytest.param(9, 20, 45, 45, {}, id="k-eq-dsae"),
    # 16-wide tiles and one split: the running threshold compacts the buffer many times
    pytest.param(18, 12, 300, 5, {"BLOCK_N": 16, "programs": 1}, id="online-filter"),
]


@pytest.mark.parametrize("n,d_in,d_sae,k,override", TOPK_CASES)
def test_topk_encode_matches_reference(n, d_in, d_sae, k, override, triton_path, device, seed):
    triton_path.CONFIG_OVERRIDE.update(override)
    sae = make_sae("topk", d_in, d_sae, k, seed=seed, device=device)
    x = make_x(n, d_in, seed=seed, device=device)
    got = dispatch.encode(x, sae)
    ref = reference.encode(x, sae)
    dense = reference.encode_dense(x, sae) * 0 + torch.relu(reference.pre_activations(x, sae))
    assert_codes_match(got, ref, dense, what=f"topk {n}x{d_in}x{d_sae} k{k} (seed {seed})")


def test_topk_encode_no_b_dec_and_sort_compaction(triton_path, device, seed):
    """apply_b_dec_to_input=False, and the bitonic-sort compaction the GPU uses."""
    triton_path.CONFIG_OVERRIDE.update({"SORT": True, "ROWS": 16, "programs": 1})
    sae = make_sae("topk", 10, 40, 3, seed=seed, device=device, apply_b_dec=False)
    x = make_x(6, 10, seed=seed, device=device)
    got = dispatch.encode(x, sae)
    ref = reference.encode(x, sae)
    assert_codes_match(got, ref, torch.relu(reference.pre_activations(x, sae)), what=f"sort (seed {seed})")


def test_topk_ties_agree_exactly(triton_path, device, seed):
    """Integer weights: exact sums, many ties; both paths pick the lower index."""
    triton_path.CONFIG_OVERRIDE.update({"BLOCK_N": 16})
    sae = make_sae("topk", 8, 70, 6, seed=seed, device=device, integer=True)
    x = make_x(20, 8, seed=seed, device=device, integer=True)
    got, ref = dispatch.encode(x, sae), reference.encode(x, sae)
    assert torch.equal(got.indices.cpu(), ref.indices.cpu()), f"seed {seed}"
    assert torch.equal(got.values.cpu(), ref.values.cpu()), f"seed {seed}"


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_relu_jumprelu_encode(arch, triton_path, device, seed, monkeypatch):
    sae = make_sae(arch, 12, 50, None, seed=seed, device=device)
    x = make_x(11, 12, seed=seed, device=device)
    dense = reference.encode_dense(x, sae)
    ref = reference.encode(x, sae)
    got = dispatch.encode(x, sae)  # bound 256 > d_sae: fused, exact width
    assert_codes_match(got, ref, dense, what=f"{arch} (seed {seed})")
    capped = dispatch.encode(x, sae, max_k=3)
    assert_codes_match(capped, reference.encode(x, sae, max_k=3), dense, what=f"{arch} max_k=3 (seed {seed})")
    # more active latents than the bound and no max_k: dense fallback, nothing dropped
    monkeypatch.setattr(dispatch, "SPARSE_BOUND", 2)
    wide = dispatch.encode(x, sae)
    assert wide.values.shape == ref.values.shape
    assert_codes_match(wide, ref, dense, what=f"{arch} fallback (seed {seed})")


def test_decode_matches_reference(triton_path, device, seed):
    sae = make_sae("topk", 37, 60, 5, seed=seed, device=device)
    g = torch.Generator().manual_seed(seed)
    n, k = 11, 5
    values = torch.rand(n, k, generator=g).to(device)
    indices = torch.stack([torch.randperm(60, generator=g)[:k] for _ in range(n)]).to(device)
    got = dispatch.decode(values, indices, sae)
    want = reference.decode(values, indices, sae)
    assert got.dtype == torch.float32
    assert_close(got, want, rtol=1e-5, what=f"decode (seed {seed})")


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_eval_batch_matches_reference(arch, triton_path, device, seed):
    sae = make_sae(arch, 21, 70, 6 if arch == "topk" else None, seed=seed, device=device)
    x = make_x(23, 21, seed=seed, device=device)
    got = dispatch.eval_batch(x, sae)
    want = reference.eval_batch(x, sae)
    assert got.n_tokens == want.n_tokens
    for name, rtol in [("sse", 1e-5), ("sum_x", 1e-9), ("sum_x2", 1e-9), ("cos_sum", 1e-5),
                       ("l1_sum", 1e-5), ("act_sum", 1e-5), ("act_max", 1e-5)]:
        # cos_sum adds n terms in [-1, 1] that may cancel to ~0: its error scales with n.
        scale = float(want.n_tokens) if name == "cos_sum" else None
        assert_close(getattr(got, name), getattr(want, name), rtol=rtol, scale=scale,
                     what=f"{arch} {name} (seed {seed})")
    assert torch.equal(got.fire_count.cpu(), want.fire_count.cpu()), f"fire_count (seed {seed})"
    assert got.fire_count.dtype == torch.int64 and int(got.l0_sum) == int(want.l0_sum)
    # sums: two halves add up to the whole
    parts = dispatch.eval_batch(x[:9], sae) + dispatch.eval_batch(x[9:], sae)
    assert torch.equal(parts.fire_count.cpu(), got.fire_count.cpu())
    assert_close(parts.sse, got.sse, rtol=1e-6, what="sse halves")


def test_nan_input_propagates_and_never_passes(triton_path, device, seed):
    sae = make_sae("topk", 10, 40, 4, seed=seed, device=device)
    x = make_x(5, 10, seed=seed, device=device)
    x[2, 3] = float("nan")
    got, ref = dispatch.encode(x, sae), reference.encode(x, sae)
    assert bool(got.values[2].isnan().all()) and bool(ref.values[2].isnan().all())
    assert torch.equal(got.indices[2].cpu(), ref.indices[2].cpu())  # NaN sorts first, lower index first
    keep = torch.tensor([0, 1, 3, 4])
    dense = torch.relu(reference.pre_activations(x, sae))
    assert_codes_match(
        type(got)(got.values[keep], got.indices[keep]), type(ref)(ref.values[keep], ref.indices[keep]), dense[keep]
    )
    with pytest.raises(AssertionError):  # the comparison itself rejects NaN
        assert_codes_match(got, ref, dense)


def test_online_filter_prunes(triton_path, device, seed):
    """The running threshold keeps most latents out of the candidate buffer: with one split
    over 320 latents in 16-wide tiles and k=5, a row appends far fewer than d_sae keys."""
    triton_path.CONFIG_OVERRIDE.update({"BLOCK_N": 16, "programs": 1})
    sae = make_sae("topk", 12, 320, 5, seed=seed, device=device)
    x = make_x(16, 12, seed=seed, device=device)
    xin = x - sae.b_dec
    values, indices, nnz, appended = triton_path.encode_topk(xin, sae.W_enc, sae.b_enc, 5, return_appended=True)
    ref = reference.encode(x, sae)
    assert_codes_match(type(ref)(values, indices), ref, torch.relu(reference.pre_activations(x, sae)))
    assert int(appended.min()) >= 5
    assert float(appended.float().mean()) < 320 / 2, f"appended per row {appended.tolist()} (seed {seed})"
    assert torch.equal(nnz.cpu(), (reference.pre_activations(x, sae) > 0).sum(1).cpu())


NORMS = [("none", None), ("layer_norm", None), ("constant_norm_rescale", None), ("expected_average_only_in", 0.5)]


@pytest.mark.parametrize("norm,factor", NORMS, ids=[n for n, _ in NORMS])
@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_normalised_and_low_precision_saes_follow_the_reference(arch, norm, factor, dtype, triton_path, device, seed):
    """Input normalisation applied around the kernel and the SAE-dtype rounding (the
    reference's single definition: sae-lens' maths for an SAE of that dtype)."""
    from saekit.kernels import SAE

    if dtype == torch.bfloat16 and device != "cuda":
        pytest.skip("Triton's CPU interpreter computes bf16 loads wrongly (numpy has no bf16): bf16 runs on a GPU")
    base = make_sae(arch, 20, 48, 5 if arch == "topk" else None, seed=seed, device=device, dtype=dtype)
    sae = SAE(base.cfg.model_copy(update={"normalize_activations": norm, "norm_scaling_factor": factor}), base.tensors)
    x = make_x(13, 20, seed=seed, device=device) * 3 + 0.5
    rtol = 1e-5 if dtype == torch.float32 else 2**-7
    ref = reference.encode(x, sae)
    got = dispatch.encode(x, sae)
    dense = reference.encode_dense(x, sae) if arch != "topk" else torch.relu(reference.pre_activations(x, sae))
    assert_codes_match(got, ref, dense, rtol=rtol, what=f"{arch} {norm} {dtype} (seed {seed})")
    if norm in ("layer_norm", "constant_norm_rescale"):
        assert got.out_scale is not None
    want = reference.decode(ref.values, ref.indices, sae, out_scale=ref.out_scale, out_shift=ref.out_shift)
    hat = dispatch.decode(ref.values, ref.indices, sae, out_scale=ref.out_scale, out_shift=ref.out_shift)
    assert_close(hat, want, rtol=rtol, what=f"decode {arch} {norm} {dtype}", scale=float(want.abs().max()))
    a, b = dispatch.eval_batch(x, sae), reference.eval_batch(x, sae)
    assert_close(a.sse, b.sse, rtol=10 * rtol, what=f"sse {arch} {norm} {dtype}")


# Odd shapes whose candidate buffer (CAP = next_pow2(k + 32) in the interpreter) makes the
# compaction's blocks large: the first is issue 22's JumpReLU shape (its rank count made a
# 2,097,152-element block, above Triton's 1,048,576, before the kernels chose blocks by it).
ODD_SHAPES = [
    pytest.param("jumprelu", 23, 36, 517, None, None, id="jumprelu-23x36x517"),
    pytest.param("jumprelu", 23, 36, 517, None, 517, id="jumprelu-max_k-eq-dsae"),
    pytest.param("topk", 23, 36, 517, 517, None, id="topk-k-eq-dsae"),
    pytest.param("topk", 7, 9, 1030, 1024, None, id="topk-k-max-fused"),
    pytest.param("topk", 1, 3, 1, 1, None, id="topk-1x3x1"),
]


@pytest.mark.parametrize("arch,n,d_in,d_sae,k,max_k", ODD_SHAPES)
def test_odd_shapes_with_wide_codes(arch, n, d_in, d_sae, k, max_k, triton_path, device, seed):
    sae = make_sae(arch, d_in, d_sae, k, seed=seed, device=device)
    x = make_x(n, d_in, seed=seed, device=device)
    dense = reference.encode_dense(x, sae) if arch != "topk" else torch.relu(reference.pre_activations(x, sae))
    what = f"{arch} {n}x{d_in}x{d_sae} k{k} max_k{max_k} (seed {seed})"
    assert_codes_match(dispatch.encode(x, sae, max_k=max_k), reference.encode(x, sae, max_k=max_k), dense, what=what)
    got, want = dispatch.eval_batch(x, sae), reference.eval_batch(x, sae)
    assert torch.equal(got.fire_count.cpu(), want.fire_count.cpu()), what
    assert_close(got.sse, want.sse, rtol=1e-5, what=f"{what} sse")


def test_every_launch_fits_triton_block_limit():
    """Every block each kernel would create, for GPU and interpreter tiles, over shapes from a
    single token to 1M-wide SAEs and k up to the fused maximum, is within Triton's limit
    (the config functions assert it per launch)."""
    tk = pytest.importorskip("saekit.kernels.triton_kernels")
    for gpu, programs in [(False, 4), (True, 264)]:
        for n in (1, 23, 4096, 65536):
            for d_sae in (1, 45, 517, 1030, 16384, 2**20):
                for k in sorted({1, 7, 64, 256, min(d_sae, tk.MAX_FUSED_K)}):
                    if k > d_sae:
                        continue
                    cfg = tk._encode_tiles(n, d_sae, k, gpu=gpu, programs=programs)
                    assert cfg["ROWS"] * cfg["CAP"] * cfg["RANK_J"] <= tk.MAX_BLOCK, (gpu, n, d_sae, k, cfg)
                    assert cfg["splits"] * cfg["chunk"] >= d_sae and cfg["CAP"] >= k + cfg["BLOCK_N"]
        for d_in in (1, 36, 4096, 2**16):
            tk._eval_config(d_in, gpu=gpu)
