"""Streaming per-latent statistics against brute-force dense computation (no LM)."""

from __future__ import annotations

import torch

from saekit.harness.latent_stats import (
    GRID,
    N_GRID,
    LatentStats,
    attribution,
    coarsen,
    coarsen_rows,
    grid_bins,
    sample_priority,
)


def _codes(n_rows: int, ctx: int, d_sae: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.zeros(n_rows * ctx, d_sae)
    for t in range(n_rows * ctx):
        idx = torch.randperm(d_sae, generator=g)[:k]
        # rounded values make ties, which the tie-break must settle
        dense[t, idx] = torch.round(torch.rand(k, generator=g) * 8) / 2
    values, indices = torch.topk(dense, k, dim=1)
    return dense, values, indices


def _stream(values, indices, ctx, rows_per_batch, order=None, k=3, samples=4, d_sae=12):
    n_rows = values.shape[0] // ctx
    st = LatentStats.empty(d_sae, k=k, samples=samples)
    batches = list(range(0, n_rows, rows_per_batch))
    for r0 in (order or batches):
        sl = slice(r0 * ctx, (r0 + rows_per_batch) * ctx)
        st.update(values[sl], indices[sl], row0=r0, ctx=ctx)
    return st


def test_streaming_stats_topk_and_samples_equal_brute_force():
    ctx, n_rows, d_sae, k = 5, 12, 12, 3
    dense, values, indices = _codes(n_rows, ctx, d_sae, k)
    st = _stream(values, indices, ctx, rows_per_batch=3)
    per_row = dense.view(n_rows, ctx, d_sae)
    for L in range(d_sae):
        a = dense[:, L]
        fired = a[a > 0]
        assert int(st.fire_count[L]) == fired.numel()
        assert float(st.act_max[L]) == (float(fired.max()) if fired.numel() else 0.0)
        assert abs(float(st.mean()[L]) - (float(fired.double().mean()) if fired.numel() else 0.0)) < 1e-9
        hist = torch.bincount(grid_bins(fired), minlength=GRID.numel() - 1)
        assert torch.equal(st.hist[L], hist)
        # top windows: by their maximum, ties by lower window
        row_max = per_row[:, :, L].max(1).values
        want = sorted([(-float(v), r) for r, v in enumerate(row_max.tolist()) if v > 0])[:3]
        assert st.top(L) == [(r, -v) for v, r in want]
        # sample: the 4 firing windows of smallest priority (ties by window)
        rows = [r for r in range(n_rows) if row_max[r] > 0]
        pri = sample_priority(torch.tensor(rows, dtype=torch.long), torch.full((len(rows),), L)).tolist()
        chosen = [r for _, r in sorted(zip(pri, rows))[:4]]
        assert sorted(st.sample(L)) == sorted((r, float(row_max[r])) for r in chosen)


def test_coarsen_rows_equals_coarsen_per_row():
    """The cards' vectorized histograms are the per-latent definition's, bit for bit: sparse,
    dense, empty, one-bin and edge-bin rows, any number of bins."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = 40
        keep = torch.rand(n, N_GRID, generator=g) < torch.rand(n, 1, generator=g) ** 3
        hist = torch.randint(0, 2**40, (n, N_GRID), generator=g) * keep
        hist[0] = 0
        hist[1] = 0
        hist[1, 7] = 3
        hist[2, -1] = 1
        hist[3, 0] = 2
        hist[4] = 1
        for n_bins in (1, 2, 3, 16, N_GRID, 500):
            got = coarsen_rows(hist, n_bins)
            want = [coarsen(row, n_bins) for row in hist.tolist()]
            assert got == want
            assert [None if x is None else (list(map(float.hex, x[0])), list(map(float.hex, x[1]))) for x in got] == \
                [None if x is None else (list(map(float.hex, x[0])), list(map(float.hex, x[1]))) for x in want]
    assert coarsen_rows(torch.zeros(0, N_GRID, dtype=torch.long), 16) == []


def test_merge_is_exact_in_any_order_and_split():
    ctx, n_rows, d_sae, k = 5, 12, 12, 3
    _, values, indices = _codes(n_rows, ctx, d_sae, k, seed=1)
    one = _stream(values, indices, ctx, rows_per_batch=2)
    # two "ranks" (every other batch, out of order), merged both ways
    a = _stream(values, indices, ctx, rows_per_batch=2, order=[8, 0, 4])
    b = _stream(values, indices, ctx, rows_per_batch=2, order=[10, 2, 6])
    for merged in (a.merge(b), b.merge(a)):
        for name in ("fire_count", "act_sum", "act_max", "hist", "top_val", "top_row", "smp_pri", "smp_row",
                     "smp_val", "n_tok"):
            assert torch.equal(getattr(merged, name), getattr(one, name)), name


def test_attribution_equals_exact_ablation_when_loss_is_linear():
    torch.manual_seed(0)
    n, d_in, d_sae, k = 6, 8, 10, 3
    W_dec = torch.randn(d_sae, d_in)
    values = torch.rand(n, k)
    indices = torch.stack([torch.randperm(d_sae)[:k] for _ in range(n)])
    c = torch.randn(n, d_in)

    def x_hat(v):
        return torch.einsum("nk,nkd->nd", v, W_dec[indices])

    def loss(x):  # linear in the reconstruction
        return (c * x).sum()

    x = x_hat(values).requires_grad_(True)
    loss(x).backward()
    contrib = attribution(values, indices, W_dec, x.grad)
    for L in range(d_sae):
        sel = indices == L
        exact = loss(x_hat(values * ~sel)) - loss(x_hat(values))
        assert torch.allclose(contrib[sel].sum(), exact, atol=1e-5), L


def _stream_captured(values, indices, ctx, rows_per_batch, order=None, k=3, samples=4, d_sae=12, contrib=None,
                     loss=None, mask=None):
    n_rows = values.shape[0] // ctx
    st = LatentStats.empty(d_sae, k=k, samples=samples, ctx=ctx)
    for r0 in (order or list(range(0, n_rows, rows_per_batch))):
        sl = slice(r0 * ctx, (r0 + rows_per_batch) * ctx)
        st.update(values[sl], indices[sl], row0=r0, ctx=ctx,
                  contrib=None if contrib is None else contrib[sl],
                  loss=None if loss is None else loss[r0 : r0 + rows_per_batch],
                  mask=None if mask is None else mask[sl])
    return st


def test_captured_windows_equal_brute_force_and_merge_exactly():
    ctx, n_rows, d_sae, k = 5, 12, 12, 3
    dense, values, indices = _codes(n_rows, ctx, d_sae, k, seed=2)
    g = torch.Generator().manual_seed(3)
    contrib = torch.round(torch.randn(values.shape, generator=g) * 64) / 64  # exact sums in any order
    loss = torch.rand(n_rows, generator=g, dtype=torch.float64)
    mask = torch.rand(n_rows * ctx, generator=g) > 0.1
    st = _stream_captured(values, indices, ctx, 3, contrib=contrib, loss=loss, mask=mask)
    assert st.captured
    masked = dense * mask[:, None]
    per_row = masked.view(n_rows, ctx, d_sae)
    wanted = {L: [r for r, _ in st.top(L)] + [r for r, _ in st.sample(L)] for L in range(d_sae)}
    many = st.windows_values(wanted)  # every latent's at once: the same lists
    assert many == {(r, L): v for L, rows in wanted.items() for r, v in zip(rows, st.window_values(L, rows))}
    for L in range(d_sae):
        rows = wanted[L]
        got = st.window_values(L, rows)
        for r, v in zip(rows, got):
            assert v == per_row[r, :, L].tolist(), (L, r)
        for j, (r, _) in enumerate(st.top(L)):
            assert float(st.top_loss[L, j]) == float(loss[r])
            sel = (indices == L) & mask[:, None]
            want = float((contrib * sel).view(n_rows, ctx, k)[r].double().sum())
            assert float(st.top_attr[L, j]) == want
    # two "ranks", out of order, merged either way: the same captured state as one process
    a = _stream_captured(values, indices, ctx, 3, order=[9, 3], contrib=contrib, loss=loss, mask=mask)
    b = _stream_captured(values, indices, ctx, 3, order=[6, 0], contrib=contrib, loss=loss, mask=mask)
    for merged in (a.merge(b), b.merge(a)):
        for name in ("top_val", "top_row", "smp_row", "top_seq", "smp_seq", "top_loss", "top_attr"):
            assert torch.equal(getattr(merged, name), getattr(st, name)), name


def test_cards_from_captured_windows_equal_cards_from_rerun_windows(real_sae_dir, monkeypatch):
    """A wide SAE whose kept windows exceed CAPTURE_BYTES re-runs them instead: both paths
    give the same cards (examples, exact ablation, attribution), over several batches with a
    partial last one."""
    from saekit.harness import cards as C
    from saekit.harness import sweep as S
    from saekit.schemas.benchmark import DEFAULT_NEGATIVE_EXAMPLES
    from saekit.harness.downstream import exact_ablations
    from saekit.harness.model import load_lm
    from saekit.harness.text import special_token_ids, token_set
    from saekit.registry.artifact import load_artifact
    from saekit.schemas import SAERef

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    model, tok = load_lm()
    sae = load_artifact(real_sae_dir)
    ts = token_set(tok, n_tokens=7 * 32, context_size=32, seed=0)  # 7 windows: batches of 3, 3, 1
    special = torch.tensor(special_token_ids(tok))
    hook = sae.cfg.hook_name

    def cards() -> tuple[bool, list[str]]:
        st = S.sweep(sae, model, ts, hook_name=hook, batch_size=3, special=special, metrics=False, k=3,
                     negatives=DEFAULT_NEGATIVE_EXAMPLES).stats
        latents = C.select_latents(st.fire_count, 12)
        exact = exact_ablations(sae, model, ts, st, latents[:2], hook_name=hook, batch_size=3, special=special,
                                max_rows=4)
        out = C.build_cards(sae, model, tok, st, ts, sae_ref=SAERef(name="t"), hook_name=hook, latents=latents,
                            batch_size=3, exact=exact, n_examples=3)
        assert sum(d.method == "exact-ablation" for c in out for d in c.downstream) == 2
        return st.captured, [c.model_dump_json() for c in out]

    captured, with_capture = cards()
    monkeypatch.setattr(S, "CAPTURE_BYTES", 0)
    rerun, without = cards()
    assert captured and not rerun
    assert with_capture == without


def test_negative_windows_are_zero_throughout_and_merge_exactly():
    """The candidate windows are a seeded draw; a latent's negatives are exactly the candidates
    where brute force finds it zero on every token, whatever the batches and ranks."""
    ctx, n_rows, d_sae, k = 5, 12, 12, 3
    dense, values, indices = _codes(n_rows, ctx, d_sae, k, seed=2)

    def stream(order, rows_per_batch=2):
        st = LatentStats.empty(d_sae, k=3, samples=4, negatives=8, n_rows=n_rows)
        for r0 in order:
            sl = slice(r0 * ctx, (r0 + rows_per_batch) * ctx)
            st.update(values[sl], indices[sl], row0=r0, ctx=ctx)
        return st

    one = stream(range(0, n_rows, 2))
    merged = stream([8, 0, 4]).merge(stream([10, 2, 6]))
    assert one.neg_rows.numel() == 8 and torch.equal(merged.neg_fire, one.neg_fire)
    fires = dense.view(n_rows, ctx, d_sae).amax(1) > 0  # [rows, latents]
    for L in range(d_sae):
        want = {r for r in one.neg_rows.tolist() if not fires[r, L]}
        got = one.negatives(L, 8)
        assert set(got) == want and len(got) == len(want) and merged.negatives(L, 8) == got
        assert one.negatives(L, 2) == got[:2]
    for n in (0, 1, 3, 8, 20):  # every latent at once: the same lists
        assert one.negatives_of([5, 0, 11, 3], n) == {L: one.negatives(L, n) for L in [5, 0, 11, 3]}
    assert LatentStats.empty(d_sae).negatives(0, 5) == []
    assert LatentStats.empty(d_sae).negatives_of([0, 1], 5) == {0: [], 1: []}


def test_cards_negative_windows_are_zero_throughout_on_a_rerun(real_sae_dir):
    """The cards' non-activating windows, checked against the SAE re-run on the whole token set:
    each is a slice of a window where the latent is zero on every counted token."""
    from saekit.harness import cards as C
    from saekit.harness.activations import run_to_hook
    from saekit.harness.sweep import sweep
    from saekit.harness.model import load_lm
    from saekit.harness.text import special_token_ids, token_set
    from saekit.registry.artifact import load_artifact
    from saekit.schemas import SAERef

    model, tok = load_lm()
    sae = load_artifact(real_sae_dir)
    ts = token_set(tok, n_tokens=16 * 32, context_size=32, seed=0)
    special = torch.tensor(special_token_ids(tok))
    hook = sae.cfg.hook_name
    st = sweep(sae, model, ts, hook_name=hook, batch_size=4, special=special, metrics=False, k=3, grad=False,
               negatives=5).stats
    alive = (st.fire_count > 0).nonzero().squeeze(1)
    latents = sorted(alive[torch.argsort(st.fire_count[alive], stable=True)[:6]].tolist())  # rarest: windows without them
    cards = C.build_cards(sae, model, tok, st, ts, sae_ref=SAERef(name="t"), hook_name=hook, latents=latents,
                          batch_size=4, attribution=False, n_examples=3, n_negative_examples=5, negative_tokens=12)
    with torch.inference_mode():
        code = sae.encode(run_to_hook(model, ts.tokens, hook))
    dense = torch.zeros(ts.tokens.numel(), sae.cfg.d_sae).scatter_add_(1, code.indices.long(), code.values.float())
    dense = dense.view(*ts.tokens.shape, -1) * ~torch.isin(ts.tokens, special)[..., None]
    rows = ts.tokens.tolist()
    for c in cards:
        assert len(c.negative_examples) == 5
        for ex in c.negative_examples:
            assert ex.bin == "negative" and len(ex.token_ids) == len(ex.tokens) == len(ex.values) == 12
            assert set(ex.values) == {0.0} and ex.max_value == 0.0
            at = [r for r, ids in enumerate(rows) if any(ids[s:s + 12] == ex.token_ids for s in range(21))]
            assert at and any(float(dense[r, :, c.index].max()) == 0.0 for r in at)
        assert len({tuple(ex.token_ids) for ex in c.negative_examples}) == 5


def test_attribution_of_wide_codes_equals_the_per_entry_dot_products():
    """Wide codes (JumpReLU, ReLU) take one product with every decoder row, narrow ones (TopK)
    gather their k rows: both give -a * (W_dec[i] . g) per code entry."""
    from saekit.harness.latent_stats import attribution

    g = torch.Generator().manual_seed(3)
    W = torch.randn(64, 24, generator=g)
    grad = torch.randn(10, 24, generator=g)
    for k in (2, 8):  # 64 > 16 * 2: gathered rows; 64 <= 16 * 8: one product
        idx = torch.randint(0, 64, (10, k), generator=g)
        vals = torch.rand(10, k, generator=g)
        want = torch.stack([torch.stack([-vals[n, j] * (W[idx[n, j]].double() @ grad[n].double()).float()
                                         for j in range(k)]) for n in range(10)])
        torch.testing.assert_close(attribution(vals, idx, W, grad), want, rtol=1e-5, atol=1e-6)
