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
