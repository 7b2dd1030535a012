"""Per-latent statistics of every latent in one streaming pass, with memory bounded by the
SAE's width (never by the token count), reduced exactly across batches and ranks.

What a FeatureCard states about every latent comes from ``LatentStats``:

- fire count, activation sum (fixed point, so sums are exact and order-free), maximum;
- a histogram of non-zero activations on one fixed log-spaced grid (``GRID``), so counts
  from any batches or ranks add up, and a card's bins are groups of grid bins;
- the top windows by their maximum activation (streaming top-k, ties by lower window);
- a uniform sample of the windows where the latent fires (a bottom-k sketch on a hash of
  (window, latent): mergeable, deterministic, independent of the order windows arrive in),
  from which the quantile examples are picked;
- the first-order (attribution) estimate of the change in summed next-token loss if the
  latent were removed from the reconstruction: ``-a_i(t) * W_dec[i] . dL/dx_hat(t)``;
- optionally (``LatentStats.empty(..., ctx=...)``), the latent's value at every token of
  each kept top and sampled window, and for each top window the window's summed loss and
  the latent's attribution in it, captured when the window enters the set: the cards'
  examples and the base of exact ablation need no second model pass. Memory is
  d_sae x (k + samples) x ctx values, whatever the token count;
- optionally (``LatentStats.empty(..., negatives=M, n_rows=...)``), for M candidate windows
  fixed before the pass (a seeded random draw from the whole token set, as SAEBench draws
  its random scoring sequences), which latents fire anywhere in each: a latent's
  non-activating windows are the candidates where it is zero throughout. M x d_sae bits,
  and per batch one row lookup, so it costs next to nothing.

Every reduction is exact (integer sums, maxima, total orders), so one process and N ranks
of ``torchrun`` produce the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

# Histogram grid: [0, 1e-4) then 16 log-spaced bins per decade up to 1e4; larger values
# count in the last bin. Fixed, so histograms of any batches add up exactly.
GRID_PER_DECADE = 16
GRID = torch.cat([torch.zeros(1, dtype=torch.float64),
                  torch.logspace(-4, 4, 8 * GRID_PER_DECADE + 1, dtype=torch.float64)])
N_GRID = GRID.numel() - 1
# Fixed-point scales: sums of float32 values as int64 multiples of 2^-SCALE are exact and
# associative (activation sums up to 2^31, attribution sums up to 2^23 per latent).
ACT_SCALE = 32
ATTR_SCALE = 40
_P = 2147483647  # 2^31 - 1


def fixed(x: torch.Tensor, scale: int) -> torch.Tensor:
    return torch.round(x.double() * float(2**scale)).long()


def unfixed(x: torch.Tensor, scale: int) -> torch.Tensor:
    return x.double() / float(2**scale)


def grid_bins(values: torch.Tensor) -> torch.Tensor:
    """Index of each (positive) value's grid bin: GRID[i] <= v < GRID[i+1]; clamped."""
    return torch.bucketize(values.double(), GRID[1:-1], right=True)


def sample_priority(rows: torch.Tensor, latents: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A pseudo-random priority per (window, latent), the same on every rank and run
    (two rounds of multiplicative hashing modulo 2^31-1)."""
    h = (rows.long() * 1000003 + latents.long() * 7919 + 12345 + seed) % _P
    h = (h * 48271 + 11) % _P
    h = (h * 69621 + latents.long()) % _P
    return (h * 16807) % _P


@dataclass
class LatentStats:
    """Streaming per-latent state. ``update`` per batch, ``merge`` across ranks."""

    fire_count: torch.Tensor  # [d_sae] int64
    act_sum: torch.Tensor  # [d_sae] int64, fixed point 2^-ACT_SCALE
    act_max: torch.Tensor  # [d_sae] float32
    hist: torch.Tensor  # [d_sae, N_GRID] int64
    top_val: torch.Tensor  # [d_sae, K] float32, max activation in the window (0: empty)
    top_row: torch.Tensor  # [d_sae, K] int64 window index (large: empty)
    smp_pri: torch.Tensor  # [d_sae, S] int64 priority (_P: empty)
    smp_row: torch.Tensor  # [d_sae, S] int64
    smp_val: torch.Tensor  # [d_sae, S] float32
    attr_sum: torch.Tensor  # [d_sae] int64, fixed point 2^-ATTR_SCALE
    attr_count: torch.Tensor  # [d_sae] int64 firing tokens with a gradient
    n_tok: torch.Tensor  # [1] int64 tokens counted (the mask's)
    # captured windows (None unless ``empty(..., ctx=...)``)
    top_seq: torch.Tensor | None = None  # [d_sae, K, ctx] float32 value per token of each top window
    smp_seq: torch.Tensor | None = None  # [d_sae, S, ctx] float32 same for each sampled window
    top_loss: torch.Tensor | None = None  # [d_sae, K] float64 summed loss of the top window (nan: none)
    top_attr: torch.Tensor | None = None  # [d_sae, K] float64 the latent's attribution in the top window
    # candidate non-activating windows (None unless ``empty(..., negatives=...)``)
    neg_rows: torch.Tensor | None = None  # [M] int64 candidate windows, ascending, the same on every rank
    neg_fire: torch.Tensor | None = None  # [M, d_sae] uint8: 1 where the latent fires in the candidate

    @classmethod
    def empty(cls, d_sae: int, *, k: int = 5, samples: int = 32, ctx: int | None = None,
              negatives: int = 0, n_rows: int = 0, seed: int = 0) -> LatentStats:
        """Empty state; with ``ctx`` the kept windows' per-token values are captured too; with
        ``negatives`` (and the token set's ``n_rows``) that many candidate non-activating windows
        are drawn (seeded) and tracked."""
        z = lambda *s, dt=torch.int64: torch.zeros(*s, dtype=dt)  # noqa: E731
        seqs = {}
        if negatives and n_rows:
            g = torch.Generator().manual_seed(seed)
            rows = torch.randperm(n_rows, generator=g)[: min(negatives, n_rows)].sort().values
            seqs = dict(neg_rows=rows, neg_fire=z(rows.numel(), d_sae, dt=torch.uint8))
        if ctx:
            seqs |= dict(top_seq=z(d_sae, k, ctx, dt=torch.float32), smp_seq=z(d_sae, samples, ctx, dt=torch.float32),
                        top_loss=torch.full((d_sae, k), float("nan"), dtype=torch.float64),
                        top_attr=z(d_sae, k, dt=torch.float64))
        return cls(
            fire_count=z(d_sae), act_sum=z(d_sae), act_max=z(d_sae, dt=torch.float32),
            hist=z(d_sae, N_GRID),
            top_val=z(d_sae, k, dt=torch.float32), top_row=torch.full((d_sae, k), 2**62),
            smp_pri=torch.full((d_sae, samples), _P), smp_row=torch.full((d_sae, samples), 2**62),
            smp_val=z(d_sae, samples, dt=torch.float32),
            attr_sum=z(d_sae), attr_count=z(d_sae), n_tok=z(1), **seqs,
        )

    @property
    def captured(self) -> bool:
        """Whether the kept windows' per-token values were captured in the pass."""
        return self.top_seq is not None

    @property
    def d_sae(self) -> int:
        return self.fire_count.shape[0]

    # -- one batch ---------------------------------------------------------------------

    def update(
        self, values: torch.Tensor, indices: torch.Tensor, *, row0: int | torch.Tensor, ctx: int,
        mask: torch.Tensor | None = None, contrib: torch.Tensor | None = None, loss: torch.Tensor | None = None,
    ) -> None:
        """Add a batch of windows. ``values``/``indices`` [rows*ctx, k] are the sparse codes
        (0 = not firing), ``row0`` the first window's index in the token set (or a tensor
        of each window's index), ``mask`` [rows*ctx] the tokens that count, ``contrib``
        [rows*ctx, k] the attribution of each code entry (see ``attribution``), ``loss`` [rows]
        each window's summed next-token loss (kept for top windows when capturing)."""
        n, k = values.shape
        n_rows = n // ctx
        rows_of = (torch.arange(n_rows) + row0) if isinstance(row0, int) else row0.long()
        vals = values.detach().float().cpu()
        idx = indices.detach().long().cpu()
        keep = vals > 0
        if mask is not None:
            keep &= mask.reshape(-1, 1).cpu()
            self.n_tok += int(mask.sum())
        else:
            self.n_tok += n
        tok = torch.arange(n).repeat_interleave(k).reshape(n, k)
        lat, val, tok = idx[keep], vals[keep], tok[keep]
        d = self.d_sae
        self.fire_count.index_add_(0, lat, torch.ones_like(lat))
        self.act_sum.index_add_(0, lat, fixed(val, ACT_SCALE))
        self.act_max.scatter_reduce_(0, lat, val, "amax")
        self.hist.view(-1).index_add_(0, lat * N_GRID + grid_bins(val), torch.ones_like(lat))
        if contrib is not None:
            c = contrib.detach().cpu()[keep]
            self.attr_sum.index_add_(0, lat, fixed(c, ATTR_SCALE))
            self.attr_count.index_add_(0, lat, torch.ones_like(lat))
        # per (window, latent): the maximum activation in the window
        local_row = tok // ctx
        rowmax = torch.zeros(n_rows * d).scatter_reduce_(0, local_row * d + lat, val, "amax").view(n_rows, d)
        cand_val = rowmax.T.contiguous()  # [d, rows]
        if self.neg_rows is not None:  # the candidate windows of this batch: which latents fire there
            hit = torch.isin(rows_of, self.neg_rows).nonzero().squeeze(1)
            if hit.numel():
                slots = torch.searchsorted(self.neg_rows, rows_of[hit])
                self.neg_fire[slots] |= (rowmax[hit] > 0).to(torch.uint8)
        # a window where the latent does not fire is an empty candidate: it never displaces
        # anything, so the sets (and captured windows) of latents absent from the batch stay put
        cand_row = torch.where(cand_val > 0, rows_of.view(1, -1).expand(d, n_rows), 2**62)
        K, S = self.top_val.shape[1], self.smp_pri.shape[1]
        t_src = top_order(torch.cat([self.top_val, cand_val], 1), torch.cat([self.top_row, cand_row], 1), K)
        pri = torch.where(cand_val > 0, sample_priority(cand_row, torch.arange(d).view(-1, 1)), _P)
        s_src = sample_order(torch.cat([self.smp_pri, pri], 1), torch.cat([self.smp_row, cand_row], 1), S)
        if self.captured:
            self._capture(t_src, s_src, vals, idx, mask, contrib, loss, n_rows, ctx)
        self.top_val = torch.cat([self.top_val, cand_val], 1).gather(1, t_src)
        self.top_row = torch.cat([self.top_row, cand_row], 1).gather(1, t_src)
        self.smp_val = torch.cat([self.smp_val, cand_val], 1).gather(1, s_src)
        self.smp_row = torch.cat([self.smp_row, cand_row], 1).gather(1, s_src)
        self.smp_pri = torch.cat([self.smp_pri, pri], 1).gather(1, s_src)

    def _capture(self, t_src: torch.Tensor, s_src: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor,
                 mask: torch.Tensor | None, contrib: torch.Tensor | None, loss: torch.Tensor | None,
                 n_rows: int, ctx: int) -> None:
        """Per-token values (and, for top windows, loss and attribution) of the batch's
        windows that enter a latent's top or sample set; only latents whose sets change are
        touched, so the cost falls as the sets fill."""
        K, S = t_src.shape[1], s_src.shape[1]
        t_moved = (t_src != torch.arange(K)).any(1)
        s_moved = (s_src != torch.arange(S)).any(1)
        lat_m = (t_moved | s_moved).nonzero().squeeze(1)
        if not lat_m.numel():
            return
        d = self.d_sae
        m = vals if mask is None else vals * mask.reshape(-1, 1).cpu()
        # the latent's value at every token, as a re-run of the window gives it (0 where special)
        dense = torch.zeros(vals.shape[0], d).scatter_add_(1, idx, m)
        seq = dense.index_select(1, lat_m).clamp_(min=0).T.reshape(-1, n_rows, ctx)  # [m, rows, ctx]
        pos = torch.full((d,), -1, dtype=torch.long)
        pos[lat_m] = torch.arange(lat_m.numel())

        def take(old: torch.Tensor, new: torch.Tensor, src: torch.Tensor, ls: torch.Tensor) -> None:
            """old[ls] = the slots src[ls] picks from old[ls] followed by new (rows of ls)."""
            s = src[ls]
            both = torch.cat([old[ls], new], 1)
            if both.dim() == 3:
                s = s[:, :, None].expand(-1, -1, both.shape[2])
            old[ls] = both.gather(1, s)

        ts, ss = t_moved.nonzero().squeeze(1), s_moved.nonzero().squeeze(1)
        if ss.numel():
            take(self.smp_seq, seq[pos[ss]], s_src, ss)
        if not ts.numel():
            return
        take(self.top_seq, seq[pos[ts]], t_src, ts)
        lw = (torch.full((n_rows,), float("nan"), dtype=torch.float64) if loss is None
              else loss.detach().double().cpu().reshape(n_rows))
        take(self.top_loss, lw.view(1, -1).expand(ts.numel(), n_rows), t_src, ts)
        if contrib is not None:
            c = contrib.detach().float().cpu()
            if mask is not None:
                c = c * mask.reshape(-1, 1).cpu()
            # the latent's attribution summed over each window: exact in float64 for float32
            # terms of like magnitude, so any order of the sum gives the same bits
            tok_row = (torch.arange(vals.shape[0]) // ctx).view(-1, 1).expand_as(idx)
            wa = torch.zeros(n_rows * d, dtype=torch.float64).index_add_(
                0, (tok_row * d + idx).reshape(-1), c.double().reshape(-1)).view(n_rows, d)
            take(self.top_attr, wa.T[ts], t_src, ts)

    # -- reductions ----------------------------------------------------------------------

    def merge(self, other: LatentStats) -> LatentStats:
        """Exact union of two partial states (any order gives the same result)."""
        cat = lambda name: torch.cat([getattr(self, name), getattr(other, name)], 1)  # noqa: E731
        t_src = top_order(cat("top_val"), cat("top_row"), self.top_val.shape[1])
        s_src = sample_order(cat("smp_pri"), cat("smp_row"), self.smp_pri.shape[1])

        def pick(name: str, src: torch.Tensor) -> torch.Tensor | None:
            if getattr(self, name) is None or getattr(other, name) is None:
                return None
            both = cat(name)
            if both.dim() == 3:
                src = src[:, :, None].expand(-1, -1, both.shape[2])
            return both.gather(1, src)

        return LatentStats(
            fire_count=self.fire_count + other.fire_count, act_sum=self.act_sum + other.act_sum,
            act_max=torch.maximum(self.act_max, other.act_max), hist=self.hist + other.hist,
            top_val=pick("top_val", t_src), top_row=pick("top_row", t_src),
            smp_pri=pick("smp_pri", s_src), smp_row=pick("smp_row", s_src), smp_val=pick("smp_val", s_src),
            attr_sum=self.attr_sum + other.attr_sum, attr_count=self.attr_count + other.attr_count,
            n_tok=self.n_tok + other.n_tok,
            top_seq=pick("top_seq", t_src), smp_seq=pick("smp_seq", s_src),
            top_loss=pick("top_loss", t_src), top_attr=pick("top_attr", t_src),
            neg_rows=self.neg_rows,
            neg_fire=None if self.neg_fire is None or other.neg_fire is None else self.neg_fire | other.neg_fire,
        )

    def all_reduce(self) -> LatentStats:
        """The merged state of every rank (torch.distributed, gloo or NCCL); self if not
        distributed."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        out = self
        parts = {}
        for f in fields(self):
            t = getattr(self, f.name)
            if t is None:
                continue
            got = [torch.empty_like(t) for _ in range(dist.get_world_size())]
            dist.all_gather(got, t.contiguous())
            parts[f.name] = got
        out = None
        for r in range(dist.get_world_size()):
            s = LatentStats(**{name: parts[name][r] for name in parts})
            out = s if out is None else out.merge(s)
        return out

    # -- results -------------------------------------------------------------------------

    @property
    def n_tokens(self) -> int:
        return int(self.n_tok[0])

    def mean(self) -> torch.Tensor:
        return unfixed(self.act_sum, ACT_SCALE) / self.fire_count.clamp(min=1)

    def attribution(self) -> torch.Tensor:
        """Mean over firing tokens of the estimated change in summed next-token loss."""
        return unfixed(self.attr_sum, ATTR_SCALE) / self.attr_count.clamp(min=1)

    def _lists(self) -> dict[str, list]:
        cache = self.__dict__.get("_cache")
        if cache is None:
            cache = {name: getattr(self, name).tolist() for name in ("top_val", "top_row", "smp_pri", "smp_row", "smp_val")}
            self.__dict__["_cache"] = cache
        return cache

    def top(self, latent: int) -> list[tuple[int, float]]:
        """(window, max activation) of the latent's top windows, strongest first."""
        c = self._lists()
        return [(r, v) for r, v in zip(c["top_row"][latent], c["top_val"][latent]) if v > 0]

    def sample(self, latent: int) -> list[tuple[int, float]]:
        """(window, max activation) of the sampled windows, by activation ascending (ties
        by window)."""
        c = self._lists()
        got = [(v, r) for p, r, v in zip(c["smp_pri"][latent], c["smp_row"][latent], c["smp_val"][latent]) if p < _P]
        return [(r, v) for v, r in sorted(got)]

    def window_values(self, latent: int, rows: list[int]) -> list[list[float]]:
        """The latent's captured value at every token of each window in ``rows`` (each one
        of its top or sampled windows); needs a capturing state (``captured``)."""
        c = self._lists()
        top, smp = c["top_row"][latent], c["smp_row"][latent]
        t_slots = [top.index(r) if r in top else -1 for r in rows]
        s_slots = [smp.index(r) for r, j in zip(rows, t_slots) if j < 0]
        t_vals = self.top_seq[latent, [j for j in t_slots if j >= 0]].tolist() if any(j >= 0 for j in t_slots) else []
        s_vals = self.smp_seq[latent, s_slots].tolist() if s_slots else []
        ti, si = iter(t_vals), iter(s_vals)
        return [next(ti) if j >= 0 else next(si) for j in t_slots]

    def windows_values(self, wanted: dict[int, list[int]]) -> dict[tuple[int, int], list[float]]:
        """``window_values`` of many latents at once: {(window, latent): values} for each
        latent's windows in ``wanted``, from two gathers in all rather than two per latent."""
        c = self._lists()
        keys: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
        lat: dict[bool, list[int]] = {True: [], False: []}
        slot: dict[bool, list[int]] = {True: [], False: []}
        for L, rows in wanted.items():
            top, smp = c["top_row"][L], c["smp_row"][L]
            for r in rows:
                in_top = r in top
                keys[in_top].append((r, L))
                lat[in_top].append(L)
                slot[in_top].append(top.index(r) if in_top else smp.index(r))
        out = dict(zip(keys[True], self.top_seq[lat[True], slot[True]].tolist()))
        out.update(zip(keys[False], self.smp_seq[lat[False], slot[False]].tolist()))
        return out

    def negatives(self, latent: int, n: int) -> list[int]:
        """Up to ``n`` candidate windows where ``latent`` is zero on every counted token, in an
        order of their own per latent (``sample_priority``), so latents do not all share the
        same few windows; [] without candidates."""
        if self.neg_rows is None or n <= 0:
            return []
        free = self.neg_rows[self.neg_fire[:, latent] == 0]
        pri = sample_priority(free, torch.full_like(free, latent))
        order = torch.sort(pri, stable=True).indices[:n]
        return free[order].tolist()

    def negatives_of(self, latents: list[int], n: int) -> dict[int, list[int]]:
        """``negatives`` of many latents at once: one stable sort of every candidate, a
        firing one given priority _P (above any hash), so each latent's free windows come
        first in their own order, as ``negatives`` sorts them."""
        if self.neg_rows is None or n <= 0 or not latents:
            return {L: [] for L in latents}
        lat = torch.tensor(latents, dtype=torch.long)
        fired = self.neg_fire[:, lat] != 0  # [M, latents]
        rows = self.neg_rows[:, None].expand_as(fired)
        pri = torch.where(fired, _P, sample_priority(rows, lat[None, :].expand_as(fired)))
        order = torch.sort(pri, dim=0, stable=True).indices[:n]
        picked, free = rows.gather(0, order).T.tolist(), (~fired.gather(0, order)).T.tolist()
        return {L: [r for r, ok in zip(rs, oks) if ok] for L, rs, oks in zip(latents, picked, free)}


_GRID_LIST = GRID.tolist()


def coarsen(counts: list[int], n_bins: int) -> tuple[list[float], list[float]] | None:
    """Grid-bin counts grouped into at most ``n_bins`` bins over their occupied range: the
    definition, per latent (cards use ``coarsen_rows``, tested equal to it)."""
    nz = [i for i, c in enumerate(counts) if c]
    if not nz:
        return None
    lo, hi = nz[0], nz[-1] + 1
    width = -(-(hi - lo) // n_bins)
    starts = list(range(lo, hi, width))
    edges = [_GRID_LIST[s] for s in starts] + [_GRID_LIST[min(hi, starts[-1] + width)]]
    cs = [float(sum(counts[s : s + width])) for s in starts]
    return edges, cs


def coarsen_rows(hist: torch.Tensor, n_bins: int) -> list[tuple[list[float], list[float]] | None]:
    """``coarsen`` of every row of ``hist`` [n, N_GRID] at once (a card set's thousands of
    latents, without a Python loop over grid bins): the same groups, exact integer sums, the
    same floats. A group's end is clamped to the occupied range's end ``hi``, past which the
    counts are zero, so its sum and the last edge (GRID[hi]) are those of ``coarsen``."""
    n, g = hist.shape
    occupied = hist != 0
    idx = torch.arange(g)
    lo = torch.where(occupied, idx, g).amin(1)
    hi = torch.where(occupied, idx, -1).amax(1) + 1
    span = (hi - lo).clamp(min=1)  # an empty row's is dropped below
    width = -(-span // n_bins)
    n_groups = -(-span // width)
    at = torch.minimum(lo[:, None] + torch.arange(n_bins + 1) * width[:, None], hi[:, None])
    cum = torch.cat([torch.zeros(n, 1, dtype=torch.int64), hist.long().cumsum(1)], 1)
    counts = (cum.gather(1, at[:, 1:]) - cum.gather(1, at[:, :-1])).double().tolist()
    edges = GRID[at].tolist()
    return [(e[: k + 1], c[:k]) if hit else None
            for e, c, k, hit in zip(edges, counts, n_groups.tolist(), occupied.any(1).tolist())]


def top_order(val: torch.Tensor, row: torch.Tensor, k: int) -> torch.Tensor:
    """Per latent, the positions of the k entries with the largest value, ties (and empties)
    by lower window; a total order, so the result does not depend on the order entries
    arrive in. A window appears once (its maximum), so duplicates never occur."""
    o = torch.sort(row, dim=1, stable=True).indices
    o2 = torch.sort(val.gather(1, o), dim=1, descending=True, stable=True).indices[:, :k]
    return o.gather(1, o2)


def merge_top(val: torch.Tensor, row: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per latent, the k entries with the largest value (see ``top_order``)."""
    o = top_order(val, row, k)
    return val.gather(1, o), row.gather(1, o)


def sample_order(pri: torch.Tensor, row: torch.Tensor, s: int) -> torch.Tensor:
    """Per latent, the positions of the s entries with the smallest priority (ties by lower
    window)."""
    o = torch.sort(row, dim=1, stable=True).indices
    o2 = torch.sort(pri.gather(1, o), dim=1, stable=True).indices[:, :s]
    return o.gather(1, o2)


def merge_sample(pri: torch.Tensor, row: torch.Tensor, val: torch.Tensor, s: int):
    """Per latent, the s entries with the smallest priority (ties by lower window)."""
    o = sample_order(pri, row, s)
    return pri.gather(1, o), row.gather(1, o), val.gather(1, o)


def attribution(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """First-order change of the loss when each code entry is removed from the
    reconstruction: ``-a * (W_dec[i] . dL/dx_hat)`` per entry [n, k] (exact when the loss is
    linear in x_hat). One backward gives ``grad`` [n, d_in] for every latent at once."""
    if W_dec.shape[0] <= 16 * indices.shape[1]:  # wide codes (JumpReLU, ReLU): one product for every latent
        return -(values.float() * (grad.float() @ W_dec.float().T).gather(1, indices.long()))
    w = W_dec.float()[indices.long()]  # [n, k, d_in]: k decoder rows per token, for narrow codes (TopK)
    return -(values.float() * torch.einsum("nkd,nd->nk", w, grad.float()))


def quantile_picks(sample: list[tuple[int, float]], exclude: set[int], n: int) -> list[tuple[int, float, str]]:
    """``n`` windows at evenly spaced quantiles of the sampled activations (windows already
    among the top examples left out): (window, activation, bin label)."""
    pool = [(r, v) for r, v in sample if r not in exclude]
    if not pool or n <= 0:
        return []
    out, used = [], set()
    for j in range(n):
        q = (j + 0.5) / n
        at = min(len(pool) - 1, int(q * len(pool)))
        r, v = pool[at]
        if r in used:
            continue
        used.add(r)
        out.append((r, v, f"quantile_{round(q * 100)}"))
    return out
