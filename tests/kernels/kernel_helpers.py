"""Random SAEs and the comparisons every kernel test uses."""

from __future__ import annotations

import torch

from saekit.kernels import SAE, SparseCode
from saekit.schemas import SAEConfig


def make_sae(arch: str, d_in: int, d_sae: int, k: int | None, *, seed: int, device: str = "cpu",
             dtype: torch.dtype = torch.float32, apply_b_dec: bool = True, integer: bool = False) -> SAE:
    """A random SAE. ``integer``: small integer weights, so every sum is exact and ties are
    exact in any summation order."""
    g = torch.Generator().manual_seed(seed)
    cfg = SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, k=k, apply_b_dec_to_input=apply_b_dec)
    if integer:
        def r(*s):
            return torch.randint(-2, 3, s, generator=g).float()
        t = dict(W_enc=r(d_in, d_sae), b_enc=r(d_sae), W_dec=r(d_sae, d_in), b_dec=r(d_in))
    else:
        t = dict(
            W_enc=torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
            b_enc=torch.randn(d_sae, generator=g) * 0.1,
            W_dec=torch.randn(d_sae, d_in, generator=g) / d_in**0.5,
            b_dec=torch.randn(d_in, generator=g) * 0.1,
        )
    if arch == "jumprelu":
        t["threshold"] = torch.rand(d_sae, generator=g) * 0.5
    if arch == "gated":
        t["b_gate"] = t.pop("b_enc")
        t["r_mag"] = torch.randn(d_sae, generator=g) * 0.1
        t["b_mag"] = torch.randn(d_sae, generator=g) * 0.1
    t = {name: v.to(device=device, dtype=dtype) for name, v in t.items()}
    return SAE(cfg, t)


def make_x(n: int, d_in: int, *, seed: int, device: str = "cpu", integer: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randint(-2, 3, (n, d_in), generator=g).float() if integer else torch.randn(n, d_in, generator=g)
    return x.to(device)


def assert_close(got: torch.Tensor, want: torch.Tensor, *, rtol: float, what: str, scale: float | None = None):
    """|got - want| <= rtol * max(|want|, scale) elementwise; NaN anywhere fails."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if scale is None:
        scale = float(want.abs().max()) if want.numel() else 1.0
    tol = rtol * torch.clamp_min(want.abs(), scale)
    ok = (got - want).abs() <= tol  # False for NaN
    assert bool(ok.all()), f"{what}: {int((~ok).sum())} of {ok.numel()} elements differ, worst {_worst(got, want, ok)}"


def _worst(got, want, ok):
    i = int((~ok).flatten().nonzero()[0])
    return f"at {i}: got {got.flatten()[i].item()} want {want.flatten()[i].item()}"


def assert_codes_match(got: SparseCode, ref: SparseCode, dense: torch.Tensor, *, rtol: float = 1e-5, what: str = ""):
    """Same code up to numerically tied values.

    dense: the reference's post-activation latents [n, d_sae]. Where a kept value is
    separated from its neighbours in the row's descending order (including the first value
    left out) by more than the tolerance, the indices must be identical; where it is tied,
    the latent the kernel chose must have the same value. Values match within rtol."""
    gv, gi = got.values.detach().cpu(), got.indices.detach().cpu()
    rv, ri = ref.values.detach().cpu(), ref.indices.detach().cpu()
    dense = dense.detach().cpu().float()
    assert gv.shape == rv.shape and gi.shape == ri.shape, f"{what}: shapes {gv.shape} vs {rv.shape}"
    assert gi.dtype == torch.int64, f"{what}: indices dtype {gi.dtype}"
    scale = float(rv.abs().max()) if rv.numel() else 1.0
    assert_close(gv, rv, rtol=rtol, what=f"{what} values", scale=scale)
    n, k = rv.shape
    assert bool(((gi >= 0) & (gi < dense.shape[1])).all()), f"{what}: index out of range"
    assert bool((gi.sort(1).values.diff(1) != 0).all()), f"{what}: repeated index in a row"
    tol = rtol * scale
    srt = dense.sort(1, descending=True).values
    nxt = srt[:, 1 : k + 1] if k < dense.shape[1] else torch.cat([srt[:, 1:], torch.full((n, 1), -float("inf"))], 1)
    prev = torch.cat([torch.full((n, 1), float("inf")), srt[:, : k - 1]], 1)
    cur = srt[:, :k]
    tied = ((cur - nxt).abs() <= tol) | ((prev - cur).abs() <= tol)
    same = gi == ri
    assert bool((same | tied).all()), f"{what}: {int((~(same | tied)).sum())} untied indices differ"
    chosen = dense.gather(1, gi)
    assert_close(chosen, rv, rtol=rtol, what=f"{what} value at the chosen index", scale=scale)


# --------------------------------------------------------------------------------------
# eval pass: cases and comparisons shared by the interpreter tests and the GPU tests
# --------------------------------------------------------------------------------------

# Every output of the eval pass (saekit.kernels.reference.EvalStats), n_tokens aside.
EVAL_FIELDS = ("sse", "sum_x", "sum_x2", "cos_sum", "l0_sum", "l1_sum", "fire_count", "act_sum", "act_max")
# Relative tolerances for random inputs: fp32 sums of the same fp32 products in another order
# (sse, cos) or the same fp32 code values summed in fp64 (sum_x, act_*); counts are exact.
EVAL_RTOL = {"sse": 1e-5, "sum_x": 1e-9, "sum_x2": 1e-9, "cos_sum": 1e-5, "l1_sum": 1e-5,
             "act_sum": 1e-5, "act_max": 1e-5}


def make_eval_case(kind: str, arch: str, n: int, d_in: int, d_sae: int, k: int | None, *, seed: int,
                   device: str = "cpu", dtype: torch.dtype = torch.float32, nan_rows: tuple[int, ...] = (),
                   target_l0: int | None = None):
    """(sae, x) for an eval test.

    kind 'random': Gaussian weights and inputs. In bf16, x and b_dec are put on coarse grids
    (multiples of 1/4 and 1/8, |x| <= 4) so that x - b_dec is exact in bf16: whether a path
    rounds it to the weights' dtype or not, both encode the same numbers.
    kind 'ties': small integers everywhere (every sum exact in any order, many tied values;
    JumpReLU thresholds are integers too, so pre-activations equal to the threshold occur);
    token 0 equals b_dec (the SAE sees zero); TopK: token 1 is 64 times larger than the rest.
    ``nan_rows``: tokens that get a NaN in one input dimension. ``target_l0``: ReLU/JumpReLU
    only, shift b_enc so that about this many latents fire per token (wide SAEs stay under the
    Triton path's sparse-code bound)."""
    from saekit.kernels import reference

    integer = kind == "ties"
    sae = make_sae(arch, d_in, d_sae, k, seed=seed, integer=integer)
    g = torch.Generator().manual_seed(seed + 7)
    if arch == "jumprelu" and integer:
        sae.tensors["threshold"] = torch.randint(0, 3, (d_sae,), generator=g).float()
    x = make_x(n, d_in, seed=seed, integer=integer)
    if integer and n > 2:
        x[0] = sae.tensors["b_dec"]
        if arch == "topk":  # a ReLU SAE fires densely on an outlier (past the sparse bound)
            x[1] *= 64
    if dtype == torch.bfloat16 and not integer:
        x = ((x * 4).round() / 4).clamp(-4, 4)
        sae.tensors["b_dec"] = (sae.tensors["b_dec"] * 8).round() / 8
    if target_l0 and arch in ("relu", "jumprelu"):
        pre = reference.pre_activations(x[:64], sae).flatten()
        q = torch.quantile(pre, 1 - target_l0 / d_sae)
        sae.tensors["b_enc"] = sae.tensors["b_enc"] - (q.ceil() if integer else q)
    for r in nan_rows:
        x[r, int(torch.randint(0, d_in, (1,), generator=g))] = float("nan")
    return sae.to(device=device, dtype=dtype), x.to(device=device, dtype=dtype)


def eval_in_batches(eval_fn, x: torch.Tensor, sizes: list[int], sae):
    """eval_fn over consecutive batches of the given sizes, summed (EvalStats.__add__)."""
    assert sum(sizes) == x.shape[0], (sizes, x.shape)
    total, start = None, 0
    for size in sizes:
        s = eval_fn(x[start:start + size], sae)
        total = s if total is None else total + s
        start += size
    return total


def _assert_nan_same(got: torch.Tensor, want: torch.Tensor, what: str) -> torch.Tensor:
    got, want = got.detach().cpu(), want.detach().cpu()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if not want.dtype.is_floating_point:
        return torch.zeros(want.shape, dtype=torch.bool)
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan), f"{what}: NaN at {got.isnan().nonzero().flatten().tolist()}, reference at {nan.nonzero().flatten().tolist()}"
    return nan


def assert_eval_matches(got, want, *, what: str, exact: bool = False, rtol: dict | None = None):
    """Every output of the eval pass against the reference. NaN must sit where the
    reference has NaN; counts are exact; ``exact``: every sum bit for bit too (integer
    inputs), except cos_sum (a square root and a division per token)."""
    assert got.n_tokens == want.n_tokens, f"{what}: n_tokens {got.n_tokens} != {want.n_tokens}"
    tol = {**EVAL_RTOL, **(rtol or {})}
    for name in EVAL_FIELDS:
        g, w = getattr(got, name), getattr(want, name)
        nan = _assert_nan_same(g, w, f"{what} {name}")
        g, w = g.detach().cpu()[~nan], w.detach().cpu()[~nan]
        if name in ("fire_count", "l0_sum"):
            assert g.dtype == torch.int64, f"{what} {name}: dtype {g.dtype}"
            assert torch.equal(g, w), f"{what} {name}: {int((g != w).sum())} differ"
        elif exact and name != "cos_sum":
            assert torch.equal(g.double(), w.double()), f"{what} {name}: not exact, max diff {(g.double() - w.double()).abs().max()}"
        else:
            # cos_sum adds n terms in [-1, 1] that may cancel to ~0: its error scales with n
            scale = float(want.n_tokens) if name == "cos_sum" else None
            assert_close(g, w, rtol=tol[name], scale=scale, what=f"{what} {name}")


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu().reshape(-1)
    if t.dtype.is_floating_point:
        return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])
    return t


def assert_eval_identical(a, b, *, what: str, fields: tuple[str, ...] = EVAL_FIELDS):
    """Bit for bit (NaN included): what a deterministic eval pass must give on a rerun."""
    assert a.n_tokens == b.n_tokens
    for name in fields:
        ga, gb = getattr(a, name), getattr(b, name)
        assert ga.dtype == gb.dtype and ga.shape == gb.shape, f"{what} {name}: dtype/shape differ"
        assert torch.equal(_bits(ga), _bits(gb)), f"{what} {name}: not bitwise identical"


def reference_eval_given_code(x: torch.Tensor, sae, code):
    """reference.eval_batch with its encode replaced by ``code``: the eval pass's definition
    applied to another path's code (so near-tied latents that two GEMMs order differently
    do not mix encode differences into the eval comparison)."""
    from unittest import mock

    from saekit.kernels import reference

    calls = []

    def given(*args, **kwargs):
        calls.append(1)
        return code

    with mock.patch.object(reference, "encode", given):
        out = reference.eval_batch(x, sae)
    assert calls, "reference.eval_batch no longer calls reference.encode; update this helper"
    return out
