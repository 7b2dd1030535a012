"""The torch reference against a float64 dense computation written out here."""

from __future__ import annotations

import pytest
import torch

from saekit.kernels import reference
from saekit.schemas import InputError

from kernel_helpers import assert_close, make_sae, make_x


def _dense64(x: torch.Tensor, sae) -> torch.Tensor:
    """Post-activation latents in float64, straight from the definitions (SAELens)."""
    t = {k: v.double() for k, v in sae.tensors.items()}
    xin = x.double() - t["b_dec"] if sae.cfg.apply_b_dec_to_input else x.double()
    arch = sae.cfg.architecture
    if arch == "gated":
        gate = xin @ t["W_enc"] + t["b_gate"]
        mag = xin @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"]
        return (gate > 0).double() * mag.clamp_min(0)
    pre = xin @ t["W_enc"] + t["b_enc"]
    if arch == "jumprelu":
        return pre.clamp_min(0) * (pre > t["threshold"]).double()
    acts = pre.clamp_min(0)
    if arch == "topk":
        # k largest per row, ties to the lower index: argsort of (-value, index)
        keep = torch.zeros_like(acts, dtype=torch.bool)
        for r in range(acts.shape[0]):
            row = acts[r].tolist()
            idx = sorted(range(len(row)), key=lambda j: (-row[j], j))[: sae.cfg.k]
            keep[r, idx] = True
        acts = acts * keep
    return acts


@pytest.mark.parametrize("arch,apply_b_dec", [("topk", True), ("topk", False), ("relu", True), ("jumprelu", True), ("gated", True)])
def test_encode_dense_matches_float64(arch, apply_b_dec, seed):
    sae = make_sae(arch, 13, 50, 6 if arch == "topk" else None, seed=seed, apply_b_dec=apply_b_dec)
    x = make_x(21, 13, seed=seed)
    want = _dense64(x, sae)
    got = reference.encode_dense(x, sae)
    # a latent near the TopK boundary may swap under fp32 rounding: compare where fp64 is clear
    assert_close(got, want, rtol=1e-5, what=f"{arch} dense (seed {seed})")


def test_topk_encode_exact_on_integer_ties(seed):
    """Integer weights: every value is exact, many are tied; lower index must win."""
    sae = make_sae("topk", 8, 40, 9, seed=seed, integer=True)
    x = make_x(30, 8, seed=seed, integer=True)
    want = _dense64(x, sae)
    code = reference.encode(x, sae)
    got = torch.zeros(30, 40, dtype=torch.float64).scatter_(1, code.indices, code.values.double())
    assert torch.equal(got, want), f"seed {seed}"
    # indices in order: value descending, then index ascending
    v, i = code.values, code.indices
    assert bool(((v[:, :-1] > v[:, 1:]) | ((v[:, :-1] == v[:, 1:]) & (i[:, :-1] < i[:, 1:]))).all())


def test_decode_and_eval_match_float64(seed):
    sae = make_sae("topk", 11, 37, 5, seed=seed)
    x = make_x(19, 11, seed=seed)
    code = reference.encode(x, sae)
    t = {k: v.double() for k, v in sae.tensors.items()}
    dense = torch.zeros(19, 37, dtype=torch.float64).scatter_(1, code.indices, code.values.double())
    x_hat = dense @ t["W_dec"] + t["b_dec"]
    assert_close(reference.decode(code.values, code.indices, sae), x_hat, rtol=1e-5, what=f"decode (seed {seed})")
    s = reference.eval_batch(x, sae)
    xd = x.double()
    assert s.n_tokens == 19
    assert_close(s.sse, ((xd - x_hat) ** 2).sum(), rtol=1e-5, what="sse")
    assert_close(s.sum_x, xd.sum(0), rtol=1e-9, what="sum_x")
    assert_close(s.sum_x2, (xd**2).sum(0), rtol=1e-9, what="sum_x2")
    assert_close(s.total_variance_sum(), ((xd - xd.mean(0)) ** 2).sum(), rtol=1e-9, what="variance")
    cos = (xd * x_hat).sum(1) / (xd.norm(dim=1) * x_hat.norm(dim=1))
    assert_close(s.cos_sum, cos.sum(), rtol=1e-5, what="cos")
    assert int(s.l0_sum) == int((dense > 0).sum())
    assert torch.equal(s.fire_count, (dense > 0).sum(0))
    assert_close(s.act_sum, dense.sum(0), rtol=1e-6, what="act_sum")
    assert_close(s.act_max, dense.max(0).values, rtol=1e-6, what="act_max")


def test_eval_stats_add_across_batches(seed):
    sae = make_sae("topk", 9, 30, 4, seed=seed)
    x = make_x(25, 9, seed=seed)
    whole = reference.eval_batch(x, sae)
    parts = reference.eval_batch(x[:10], sae) + reference.eval_batch(x[10:], sae)
    assert parts.n_tokens == whole.n_tokens
    for name in ("sse", "sum_x", "sum_x2", "cos_sum", "l1_sum", "act_sum", "act_max"):
        scale = float(whole.n_tokens) if name == "cos_sum" else None  # n terms that may cancel
        assert_close(getattr(parts, name), getattr(whole, name), rtol=1e-6, scale=scale, what=name)
    assert torch.equal(parts.fire_count, whole.fire_count) and int(parts.l0_sum) == int(whole.l0_sum)


def test_relu_code_is_padded_to_batch_l0(seed):
    sae = make_sae("relu", 10, 24, None, seed=seed)
    x = make_x(7, 10, seed=seed)
    dense = reference.encode_dense(x, sae)
    code = reference.encode(x, sae)
    assert code.values.shape[1] == int((dense > 0).sum(1).max())
    assert torch.equal(code.values.sort(1).values[:, -1], dense.max(1).values)
    capped = reference.encode(x, sae, max_k=2)
    assert capped.values.shape[1] == min(2, code.values.shape[1])


def test_gated_needs_its_tensors():
    sae = make_sae("gated", 4, 8, None, seed=0)
    tensors = dict(sae.tensors)
    del tensors["r_mag"]
    with pytest.raises(InputError, match="r_mag"):
        type(sae)(sae.cfg, tensors)


@pytest.mark.parametrize("k", [1, 5, 33])
def test_topk_equals_stable_sort(k, seed):
    """The fast top-k (topk + fix-ups) is exactly the first k of a stable descending sort,
    with heavy ties, zeros and NaN rows."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.randint(0, 4, (40, 33), generator=g).float()
    acts[3] = 0.0
    acts[5, 7] = float("nan")
    acts[6] = float("nan")
    acts[8:20] = torch.rand(12, 33, generator=g)
    v, i = torch.sort(acts, dim=1, descending=True, stable=True)
    code = reference._topk(acts, k)
    assert torch.equal(code.indices, i[:, :k]), f"seed {seed}"
    assert torch.equal(code.values.nan_to_num(-1), v[:, :k].nan_to_num(-1)), f"seed {seed}"
