"""Triton kernels: fused TopK encode with online filtering, sparse decode, one-pass eval.

Imported only by saekit.kernels.dispatch when the Triton path is chosen: this module
imports triton at its top, so ``import saekit.kernels`` never does.

Interpreter note (triton 3.9): ``@triton.jit`` reads ``TRITON_INTERPRET`` when this module
is imported (``triton.knobs.runtime.interpret`` at decoration time), so the CPU tests set
the variable before anything imports this module.

Top-k keys. A post-activation value v >= 0 (fp32) and its latent index i are packed into one
int64 ``key = bits(v) << 32 | (2**31 - 1 - i)``. For v >= 0 the fp32 bit pattern is ordered
like the value, so a larger key means a larger value and, on equal values, a lower index:
exactly the reference's stable descending sort. Keys are unique per row, so every
comparison below is exact and a single int64 sort carries the index along. NaN is packed as
the canonical quiet NaN (above +inf), which is where torch's descending sort puts it too.

Encode, online filtering. Program (row block, column split) walks its columns in tiles of
BLOCK_N; per tile it runs the GEMM, adds the bias, applies the activation, and appends to a
per-row candidate buffer only the keys above the row's running threshold ``thr`` (a lower
bound of the row's k-th largest key so far). When some row's buffer could overflow on the
next tile (count > CAP - BLOCK_N), the block is compacted: each row's buffer is sorted,
cut to its k largest keys, and ``thr`` becomes the k-th key. With a random-order row the
expected number of keys appended after the first tiles is about k * ln(#tiles), a few
hundred per row, instead of one top-k per tile (32,768 per row at d_sae 131072, k 64, 256-wide
tiles). After the last tile each split keeps its top k; the final merge sees SPLITS * k
keys per row. The dense [n, d_sae] pre-activations never exist in memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from saekit.schemas.settings import current

# Largest k the fused encode keeps in registers; above it dispatch uses the reference.
MAX_FUSED_K = 1024
_LOW_MAX = 2**31 - 1  # low 32 bits of a key: _LOW_MAX - index


# Tests set these to exercise code paths at tiny shapes (e.g. the GPU's sort compaction in
# the interpreter); empty in normal use.
CONFIG_OVERRIDE: dict = {}


def _empty(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer a kernel writes comes from here (tests poison them)."""
    return torch.empty(*shape, dtype=dtype, device=device)


# Whether the kernels below were defined for Triton's interpreter (decided at import).
INTERPRETED = bool(triton.knobs.runtime.interpret)


def _interpreting() -> bool:
    return INTERPRETED


# --------------------------------------------------------------------------------------
# encode
# --------------------------------------------------------------------------------------


# noinline: a separate register budget for the sort (inlined, ptxas spilled the GEMM epilogue)
@triton.jit(noinline=True)
def _compact(buf_ptr, cnt_ptr, thr_ptr, row0, n, pid_s,
             SPLITS: tl.constexpr, K: tl.constexpr, CAP: tl.constexpr,
             BLOCK_M: tl.constexpr, ROWS: tl.constexpr, SORT: tl.constexpr, RANK_J: tl.constexpr):
    """Cut each row's candidate buffer to its K largest keys (first K slots, descending) and
    store the K-th key as the row's new threshold (0 while fewer than K).

    SORT: a bitonic tl.sort (GPU). Otherwise each key's rank (how many keys beat it) is
    counted and the key is stored at that slot: same result, and fast in the interpreter,
    where tl.sort is very slow. The count compares [ROWS, CAP] keys with RANK_J of the
    row's slots at a time, so its [ROWS, CAP, RANK_J] block stays within Triton's element
    limit (_encode_tiles picks RANK_J). Counts were stored to cnt_ptr by the caller (then a
    barrier)."""
    slots = tl.arange(0, CAP)
    for r0 in range(0, BLOCK_M, ROWS):  # a runtime loop: one copy of the sort in the code
        rr = row0 + r0 + tl.arange(0, ROWS)
        ok = rr < n
        slot_row = rr.to(tl.int64) * SPLITS + pid_s
        cnt = tl.load(cnt_ptr + slot_row, mask=ok, other=0)
        ptrs = buf_ptr + slot_row[:, None] * CAP + slots[None, :]
        live = ok[:, None] & (slots[None, :] < cnt[:, None])
        keys = tl.load(ptrs, mask=live, other=0)
        if SORT:
            keys = tl.sort(keys, dim=1, descending=True)
            kth = tl.sum(tl.where(slots[None, :] == K - 1, keys, 0), axis=1)
            tl.debug_barrier()
            tl.store(ptrs, keys, mask=ok[:, None] & (slots[None, :] < K))
        else:
            # keys are unique, so ranks of live keys are distinct; dead slots hold 0, which
            # beats no live key
            rank = tl.zeros([ROWS, CAP], dtype=tl.int32)
            for j0 in range(0, CAP, RANK_J):
                js = j0 + tl.arange(0, RANK_J)
                other = tl.load(buf_ptr + slot_row[:, None] * CAP + js[None, :],
                                mask=ok[:, None] & (js[None, :] < cnt[:, None]), other=0)
                rank += tl.sum((other[:, None, :] > keys[:, :, None]).to(tl.int32), axis=2)
            keep = live & (rank < K)
            kth = tl.sum(tl.where(keep & (rank == K - 1), keys, 0), axis=1)
            tl.debug_barrier()
            tl.store(buf_ptr + slot_row[:, None] * CAP + rank, keys, mask=keep)
        tl.store(thr_ptr + slot_row, kth, mask=ok)


@triton.jit
def _encode_kernel(
    x_ptr, w_ptr, bias_ptr, jump_ptr,
    buf_ptr, cnt_ptr, thr_ptr, nnz_ptr,
    n, d_in, d_sae, chunk,
    stride_xm, stride_wk,
    K: tl.constexpr, CAP: tl.constexpr, SPLITS: tl.constexpr, JUMP: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ROWS: tl.constexpr, SORT: tl.constexpr, RANK_J: tl.constexpr, UPCAST: tl.constexpr = False,
):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    row0 = pid_m * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    slot_row = rows.to(tl.int64) * SPLITS + pid_s
    buf_row = buf_ptr + slot_row * CAP
    col_lo = pid_s * chunk
    col_hi = tl.minimum(col_lo + chunk, d_sae)

    thr = tl.zeros([BLOCK_M], dtype=tl.int64)  # 0 is below every real key
    count = tl.zeros([BLOCK_M], dtype=tl.int32)
    nnz = tl.zeros([BLOCK_M], dtype=tl.int32)
    emitted = tl.zeros([BLOCK_M], dtype=tl.int32)  # keys appended: how well the filter prunes
    xk = tl.arange(0, BLOCK_K)
    for n0 in range(col_lo, col_hi, BLOCK_N):
        if tl.max(count, axis=0) > CAP - BLOCK_N:  # the next tile could overflow: compact
            tl.store(cnt_ptr + slot_row, count, mask=row_ok)
            tl.debug_barrier()
            _compact(buf_ptr, cnt_ptr, thr_ptr, row0, n, pid_s, SPLITS, K, CAP, BLOCK_M, ROWS, SORT, RANK_J)
            tl.debug_barrier()
            thr = tl.load(thr_ptr + slot_row, mask=row_ok, other=0)
            count = tl.minimum(count, K)
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < col_hi
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, d_in, BLOCK_K):
            kk = k0 + xk
            a = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_xm + kk[None, :],
                        mask=row_ok[:, None] & (kk[None, :] < d_in), other=0.0)
            b = tl.load(w_ptr + kk[:, None].to(tl.int64) * stride_wk + cols[None, :],
                        mask=(kk[:, None] < d_in) & col_ok[None, :], other=0.0)
            if UPCAST:  # interpreter: its bf16 tl.dot multiplies bit patterns (triton#11584)
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
            elif IEEE:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
        if not IEEE:  # bf16/fp16 SAE: round as sae-lens' SAE-dtype GEMM and bias add do
            acc = acc.to(x_ptr.dtype.element_ty).to(tl.float32)
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0)[None, :]
        if not IEEE:
            acc = acc.to(x_ptr.dtype.element_ty).to(tl.float32)
        keep = acc > 0.0
        if JUMP:  # SAELens JumpReLU: relu(pre) * (pre > threshold)
            keep = keep & (acc > tl.load(jump_ptr + cols, mask=col_ok, other=0.0)[None, :])
        v = tl.where(keep, acc, 0.0)
        bits = v.to(tl.int32, bitcast=True)
        bits = tl.where(acc != acc, 0x7FC00000, bits)  # NaN stays NaN, like torch.relu
        low = 2147483647 - cols.to(tl.int64)  # _LOW_MAX - index
        key = (bits.to(tl.int64) << 32) | low[None, :]
        valid = row_ok[:, None] & col_ok[None, :]
        nnz += tl.sum((keep & valid).to(tl.int32), axis=1)
        emit = (key > thr[:, None]) & valid
        emit_i = emit.to(tl.int32)
        pos = count[:, None] + tl.cumsum(emit_i, axis=1) - 1
        tl.store(buf_row[:, None] + pos, key, mask=emit)
        count += tl.sum(emit_i, axis=1)
        emitted += tl.sum(emit_i, axis=1)
    # keep each split's top K for the final merge
    tl.store(cnt_ptr + slot_row, count, mask=row_ok)
    tl.debug_barrier()
    _compact(buf_ptr, cnt_ptr, thr_ptr, row0, n, pid_s, SPLITS, K, CAP, BLOCK_M, ROWS, SORT, RANK_J)
    tl.store(cnt_ptr + slot_row, tl.minimum(count, K), mask=row_ok)
    tl.store(nnz_ptr + slot_row * 2, nnz, mask=row_ok)
    tl.store(nnz_ptr + slot_row * 2 + 1, emitted, mask=row_ok)


# Encode tiles on CUDA: BLOCK_M, BLOCK_N, BLOCK_K, compaction rows, warps, stages. A first
# guess checked only by compiling for sm_90 (wgmma, cp.async pipeline, 72 KiB shared, 255
# registers with a small spill); not yet timed on hardware.
GPU_TILES = (64, 128, 64, 4, 8, 3)


def _gpu_tiles() -> tuple[int, ...]:
    """GPU_TILES, or ``SAEKIT_ENCODE_TILES="BM,BN,BK,ROWS,WARPS,STAGES"`` for tuning runs."""
    env = current().encode_tiles
    if not env:
        return GPU_TILES
    tiles = tuple(int(v) for v in env.split(","))
    if len(tiles) != 6:
        raise ValueError(f"SAEKIT_ENCODE_TILES needs 6 integers, got {env!r}")
    return tiles


def _encode_config(n: int, d_sae: int, k: int, device: torch.device) -> dict:
    """Tile sizes and split count for this device. GPU values are a first guess, not yet
    tuned on hardware."""
    gpu = device.type == "cuda" and not _interpreting()
    programs = 2 * torch.cuda.get_device_properties(device).multi_processor_count if gpu else 4
    return _encode_tiles(n, d_sae, k, gpu=gpu, programs=programs)


def _encode_tiles(n: int, d_sae: int, k: int, *, gpu: bool, programs: int) -> dict:
    """The encode launch for n rows, d_sae latents, top k, given about how many programs fill
    the device. Every block the kernel creates fits Triton's element limit (_fits)."""
    bm, bn, bk, rows, warps, stages = _gpu_tiles() if gpu else (16, 32, 16, 8, 4, 1)
    o = CONFIG_OVERRIDE
    bm, bn, bk, rows = o.get("BLOCK_M", bm), o.get("BLOCK_N", bn), o.get("BLOCK_K", bk), o.get("ROWS", rows)
    programs = o.get("programs", programs)
    sort = o.get("SORT", gpu)
    cap = triton.next_power_of_2(k + bn)
    row_blocks = triton.cdiv(n, bm)
    tiles = triton.cdiv(d_sae, bn)
    splits = max(1, min(tiles, triton.cdiv(programs, row_blocks)))
    if gpu and "programs" not in o:
        # the candidate buffer (n * splits * CAP int64) stays within the dense fp32 latents'
        # n * d_sae * 4 bytes: without this, small batches of wide-k SAEs (256 tokens, k 1024)
        # would hold twice what the fused encode exists to avoid
        splits = min(splits, max(1, d_sae // (2 * cap)))
    chunk = triton.cdiv(tiles, splits) * bn
    splits = triton.cdiv(d_sae, chunk)
    # compaction: [ROWS, CAP] keys; the rank count compares them with RANK_J slots at a time
    rows = min(rows, bm, _prev_power_of_2(MAX_BLOCK // cap))
    rank_j = min(cap, _prev_power_of_2(MAX_BLOCK // (rows * cap)))
    cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, ROWS=rows, CAP=cap, SORT=sort, RANK_J=rank_j,
               splits=splits, chunk=chunk, num_warps=warps, num_stages=stages)
    _fits("encode", (bm, bn), (bm, bk), (bk, bn), (rows, cap), (rows, cap, rank_j))
    return cfg


# Triton's largest block, in elements (triton.language.TRITON_MAX_TENSOR_NUMEL, 2**20): a larger
# one fails to compile, and raises InterpreterError under TRITON_INTERPRET.
MAX_BLOCK = tl.TRITON_MAX_TENSOR_NUMEL


def _prev_power_of_2(v: int) -> int:
    return 1 << (max(1, v).bit_length() - 1)


def _fits(kernel: str, *blocks: tuple[int, ...]) -> None:
    """Every block shape a launch creates: powers of two within MAX_BLOCK elements (an
    internal check: the config functions choose them so)."""
    for shape in blocks:
        numel = 1
        for d in shape:
            assert d >= 1 and d & (d - 1) == 0, f"{kernel}: block {shape} is not powers of two"
            numel *= d
        assert numel <= MAX_BLOCK, f"{kernel}: block {shape} has {numel} > {MAX_BLOCK} elements"


def candidate_buffer_bytes(n: int, d_sae: int, k: int, device: torch.device) -> int:
    """Device memory of encode_topk's candidate buffer: n * splits * CAP int64 keys, CAP =
    next_pow2(k + BLOCK_N). Splits shrink as n grows (about 2 programs per SM in all), so
    the buffer is largest per token at small n; e.g. H100 tiles (BLOCK_N 128), k 64: CAP 256,
    2 KiB per token per split; k 1024: CAP 2048, 16 KiB per token per split. On CUDA the
    split count is capped so that the buffer never exceeds the dense fp32 latents (n * d_sae
    * 4 bytes). docs/gpu.md tabulates it."""
    cfg = _encode_config(n, d_sae, k, torch.device(device))
    return n * cfg["splits"] * cfg["CAP"] * 8


def unpack_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 keys -> (fp32 values, int64 indices)."""
    values = (keys >> 32).to(torch.int32).view(torch.float32)
    indices = _LOW_MAX - (keys & 0xFFFFFFFF)
    return values, indices


def encode_topk(
    x: torch.Tensor,
    w_enc: torch.Tensor,
    bias: torch.Tensor,
    k: int,
    *,
    jump: torch.Tensor | None = None,
    return_appended: bool = False,
):
    """Top k of act(x @ w_enc + bias) per row, act = ReLU or JumpReLU(jump).

    x [n, d_in] in w_enc's dtype (b_dec already subtracted), bias fp32 [d_sae].
    Returns (values fp32 [n, k] descending, indices int64 [n, k], nnz int64 [n]) where nnz
    counts the latents whose activation is above zero (ReLU) or above threshold (JumpReLU);
    with ``return_appended`` also the number of keys each row appended to its candidate
    buffers (int64 [n]): what the online filter let through, summed over splits.
    """
    n, d_in = x.shape
    d_sae = w_enc.shape[1]
    assert 1 <= k <= min(d_sae, MAX_FUSED_K), (k, d_sae)
    x = x.contiguous()
    w_enc = w_enc.contiguous()
    cfg = _encode_config(n, d_sae, k, x.device)
    splits, cap = cfg.pop("splits"), cfg["CAP"]
    chunk = cfg.pop("chunk")
    buf = _empty(n * splits * cap, dtype=torch.int64, device=x.device)
    cnt = _empty(n, splits, dtype=torch.int32, device=x.device)
    thr = _empty(n, splits, dtype=torch.int64, device=x.device)
    nnz = _empty(n, splits, 2, dtype=torch.int32, device=x.device)  # (nnz, keys appended)
    grid = (triton.cdiv(n, cfg["BLOCK_M"]), splits)
    _encode_kernel[grid](
        x, w_enc, bias, jump if jump is not None else bias,
        buf, cnt, thr, nnz,
        n, d_in, d_sae, chunk,
        x.stride(0), w_enc.stride(0),
        K=k, SPLITS=splits, JUMP=jump is not None, IEEE=x.dtype == torch.float32,
        UPCAST=_interpreting() and x.dtype != torch.float32, **cfg,
    )
    # final merge: SPLITS * k candidate keys per row, all distinct; empty slots hold key 0
    cand = buf.view(n, splits, cap)[:, :, :k]
    slot = torch.arange(k, device=x.device)
    cand = torch.where(slot[None, None, :] < cnt[:, :, None], cand, 0).reshape(n, splits * k)
    top = cand.topk(k, dim=1, sorted=True).values if splits > 1 else cand
    values, indices = unpack_keys(top)
    counts = nnz.sum(1, dtype=torch.int64)
    if return_appended:
        return values, indices, counts[:, 0], counts[:, 1]
    return values, indices, counts[:, 0]


# --------------------------------------------------------------------------------------
# decode and one-pass eval
# --------------------------------------------------------------------------------------


@triton.jit
def _decode_kernel(val_ptr, idx_ptr, w_ptr, b_ptr, out_ptr, n, d_in, K,
                   BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < n
    d_ok = d < d_in
    rows64 = rows.to(tl.int64)
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    acc += tl.load(b_ptr + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    for j in range(K):
        v = tl.load(val_ptr + rows64 * K + j, mask=row_ok, other=0.0).to(tl.float32)
        i = tl.load(idx_ptr + rows64 * K + j, mask=row_ok, other=0)
        w = tl.load(w_ptr + i[:, None] * d_in + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        acc += v[:, None] * w.to(tl.float32)
    tl.store(out_ptr + rows64[:, None] * d_in + d[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])


def decode(values: torch.Tensor, indices: torch.Tensor, w_dec: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """x_hat fp32 [n, d_in] = sum_j values[:, j] * w_dec[indices[:, j]] + b_dec."""
    n, k = values.shape
    d_in = w_dec.shape[1]
    values, indices, w_dec = values.contiguous(), indices.contiguous(), w_dec.contiguous()
    out = _empty(n, d_in, dtype=torch.float32, device=values.device)
    br, bd = (4, 32) if _interpreting() else (4, min(512, triton.next_power_of_2(d_in)))
    br, bd = CONFIG_OVERRIDE.get("dec_r", br), CONFIG_OVERRIDE.get("dec_d", bd)
    _fits("decode", (br, bd))
    grid = (triton.cdiv(n, br), triton.cdiv(d_in, bd))
    _decode_kernel[grid](values, indices, w_dec, b_dec, out, n, d_in, k, BLOCK_R=br, BLOCK_D=bd)
    return out


@triton.jit
def _eval_rows_kernel(x_ptr, val_ptr, idx_ptr, w_ptr, b_ptr, row_ptr,
                      n, d_in, K, stride_xm,
                      BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per program: BLOCK_R tokens. Decodes them and stores per-row sums (sse, x.x,
    x_hat.x_hat, x.x_hat); x_hat never reaches memory. No atomics: every row is one program's."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n
    rows64 = rows.to(tl.int64)
    sse = tl.zeros([BLOCK_R], dtype=tl.float32)
    xx = tl.zeros([BLOCK_R], dtype=tl.float32)
    hh = tl.zeros([BLOCK_R], dtype=tl.float32)
    xh = tl.zeros([BLOCK_R], dtype=tl.float32)
    for d0 in range(0, d_in, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_ok = d < d_in
        m2 = row_ok[:, None] & d_ok[None, :]
        acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
        acc += tl.load(b_ptr + d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
        for j in range(K):
            v = tl.load(val_ptr + rows64 * K + j, mask=row_ok, other=0.0)
            i = tl.load(idx_ptr + rows64 * K + j, mask=row_ok, other=0)
            w = tl.load(w_ptr + i[:, None] * d_in + d[None, :], mask=m2, other=0.0)
            acc += v[:, None] * w.to(tl.float32)
        x = tl.load(x_ptr + rows64[:, None] * stride_xm + d[None, :], mask=m2, other=0.0).to(tl.float32)
        acc = tl.where(m2, acc, 0.0)
        err = x - acc
        sse += tl.sum(err * err, axis=1)
        xx += tl.sum(x * x, axis=1)
        hh += tl.sum(acc * acc, axis=1)
        xh += tl.sum(x * acc, axis=1)
    tl.store(row_ptr + rows64 * 4 + 0, sse, mask=row_ok)
    tl.store(row_ptr + rows64 * 4 + 1, xx, mask=row_ok)
    tl.store(row_ptr + rows64 * 4 + 2, hh, mask=row_ok)
    tl.store(row_ptr + rows64 * 4 + 3, xh, mask=row_ok)


@triton.jit
def _colsum_partial_kernel(x_ptr, part_ptr, n, d_in, stride_xm, rows_per,
                           BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program (d block, row chunk): fp64 sums of x and x^2 over the chunk's rows, in row
    order, stored to part[chunk, 0|1, d]. No atomics."""
    pid_d = tl.program_id(0)
    pid_c = tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < d_in
    r_lo = pid_c * rows_per
    r_hi = tl.minimum(r_lo + rows_per, n)
    s1 = tl.zeros([BLOCK_D], dtype=tl.float64)
    s2 = tl.zeros([BLOCK_D], dtype=tl.float64)
    for r0 in range(r_lo, r_hi, BLOCK_R):
        rr = r0 + tl.arange(0, BLOCK_R)
        m2 = (rr < r_hi)[:, None] & d_ok[None, :]
        x = tl.load(x_ptr + rr.to(tl.int64)[:, None] * stride_xm + d[None, :], mask=m2, other=0.0)
        x = x.to(tl.float32).to(tl.float64)
        s1 += tl.sum(x, axis=0)
        s2 += tl.sum(x * x, axis=0)
    base = part_ptr + pid_c.to(tl.int64) * 2 * d_in
    tl.store(base + d, s1, mask=d_ok)
    tl.store(base + d_in + d, s2, mask=d_ok)


@triton.jit
def _colsum_reduce_kernel(part_ptr, out_ptr, chunks, d_in, BLOCK_D: tl.constexpr):
    """out[0|1, d] = sum over chunks of part[chunk, 0|1, d], chunk 0 first: a fixed order."""
    d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < d_in
    s1 = tl.zeros([BLOCK_D], dtype=tl.float64)
    s2 = tl.zeros([BLOCK_D], dtype=tl.float64)
    for c in range(0, chunks):
        base = part_ptr + c * 2 * d_in
        s1 += tl.load(base + d, mask=d_ok, other=0.0)
        s2 += tl.load(base + d_in + d, mask=d_ok, other=0.0)
    tl.store(out_ptr + d, s1, mask=d_ok)
    tl.store(out_ptr + d_in + d, s2, mask=d_ok)


@triton.jit
def _latent_count_max_kernel(val_ptr, idx_ptr, fire_ptr, act_max_ptr, total, BLOCK: tl.constexpr):
    """Per-latent fire counts (integer atomics) and maxima (atomic max): both exact and
    independent of the order the code entries arrive in. A latent fires where its value > 0
    (NaN never fires, as in the reference)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < total
    v = tl.load(val_ptr + offs, mask=ok, other=0.0)
    i = tl.load(idx_ptr + offs, mask=ok, other=0)
    fired = ok & (v > 0.0)
    tl.atomic_add(fire_ptr + i, 1, mask=fired)
    tl.atomic_max(act_max_ptr + i, v, mask=fired)


@triton.jit
def _latent_sum_kernel(val_ptr, idx_ptr, scale_ptr, act_q_ptr, total, BLOCK: tl.constexpr):
    """Per-latent activation sums as integers: each value is rounded to its latent's grid
    (scale = 1 / unit, a power of two) and added with int64 atomics, which are associative,
    so the sum does not depend on the order (see eval_sums)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < total
    v = tl.load(val_ptr + offs, mask=ok, other=0.0)
    i = tl.load(idx_ptr + offs, mask=ok, other=0)
    fired = ok & (v > 0.0) & (v <= 3.4028234663852886e38)  # finite; +inf latents are set on the host
    scale = tl.load(scale_ptr + i, mask=fired, other=0.0)
    v = tl.where(fired, v, 0.0)
    q = (v.to(tl.float64) * scale + 0.5).to(tl.int64)  # round half up (v >= 0)
    tl.atomic_add(act_q_ptr + i, q, mask=fired)


def _eval_config(d_in: int, *, gpu: bool) -> dict:
    """Block sizes of the eval kernels (interpreter: small, so tiny tests cross every boundary)."""
    if not gpu:
        cfg = dict(rows_r=4, rows_d=32, col_r=4, col_d=16, rows_per=8, lat_block=64)
    else:
        cfg = dict(rows_r=8, rows_d=min(256, triton.next_power_of_2(d_in)), col_r=32, col_d=128,
                   rows_per=256, lat_block=1024)
    cfg.update({k: v for k, v in CONFIG_OVERRIDE.items() if k in cfg})
    _fits("eval", (cfg["rows_r"], cfg["rows_d"]), (cfg["col_r"], cfg["col_d"]), (cfg["lat_block"],))
    return cfg


def eval_sums(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
              w_dec: torch.Tensor, b_dec: torch.Tensor) -> dict[str, torch.Tensor]:
    """Decode + statistics without materialising x_hat. Returns raw sums: rows [n, 4] fp32
    (sse, x.x, x_hat.x_hat, x.x_hat per token), sum_x and sum_x2 [d_in] fp64, fire [d_sae]
    int32, act_sum [d_sae] fp64, act_max [d_sae] fp32.

    Deterministic: same inputs, same bits on the same device. No float atomics anywhere.
    - per-token sums: one program per token block, stored per row;
    - sum_x, sum_x2: per-(row chunk, dim block) partial sums in fp64 to a buffer, then summed
      over chunks in chunk order (_colsum_reduce_kernel);
    - fire counts (integer atomics) and act_max (atomic max of values > 0) are exact in any
      order;
    - act_sum: pre-rounding to a common grid. For latent l with count c and maximum m, take
      E, C with m < 2^E and c < 2^C, and unit u = 2^(E + C - 62). Every value is rounded to a
      multiple of u, so the c of them sum to less than 2^62 u: an int64 sum, exact, hence
      independent of the order (Rump, Ogita & Oishi, "Accurate floating-point summation
      part I", SIAM J. Sci. Comput. 31(1), 2008, ExtractVector; Demmel & Nguyen, "Parallel
      reproducible summation", IEEE Trans. Computers 64(7), 2015). The only error is that
      rounding, at most c u / 2 <= 2^(2C - 62) relative to the sum (<= 2^-34 for c < 2^14;
      fp32 inputs carry 2^-24).
    """
    n, k = values.shape
    d_in = w_dec.shape[1]
    d_sae = w_dec.shape[0]
    dev = x.device
    x, values, indices, w_dec = x.contiguous(), values.contiguous(), indices.contiguous(), w_dec.contiguous()
    cfg = _eval_config(d_in, gpu=dev.type == "cuda" and not _interpreting())
    rows = _empty(n, 4, dtype=torch.float32, device=dev)
    _eval_rows_kernel[(triton.cdiv(n, cfg["rows_r"]),)](
        x, values, indices, w_dec, b_dec, rows, n, d_in, k, x.stride(0),
        BLOCK_R=cfg["rows_r"], BLOCK_D=cfg["rows_d"],
    )
    # per-dimension sums of x and x^2: chunk partials, reduced in chunk order
    chunks = triton.cdiv(n, cfg["rows_per"])
    part = _empty(chunks, 2, d_in, dtype=torch.float64, device=dev)
    d_blocks = triton.cdiv(d_in, cfg["col_d"])
    _colsum_partial_kernel[(d_blocks, chunks)](
        x, part, n, d_in, x.stride(0), cfg["rows_per"], BLOCK_R=cfg["col_r"], BLOCK_D=cfg["col_d"],
    )
    cols = _empty(2, d_in, dtype=torch.float64, device=dev)
    _colsum_reduce_kernel[(d_blocks,)](part, cols, chunks, d_in, BLOCK_D=cfg["col_d"])
    # per-latent statistics
    total = n * k
    fire = torch.zeros(d_sae, dtype=torch.int32, device=dev)
    act_max = torch.zeros(d_sae, dtype=torch.float32, device=dev)
    grid = (max(1, triton.cdiv(total, cfg["lat_block"])),)
    _latent_count_max_kernel[grid](values, indices, fire, act_max, total, BLOCK=cfg["lat_block"])
    unit_exp = latent_sum_unit_exponent(fire, act_max)
    scale = torch.ldexp(torch.ones(d_sae, dtype=torch.float64, device=dev), -unit_exp)
    act_q = torch.zeros(d_sae, dtype=torch.int64, device=dev)
    _latent_sum_kernel[grid](values, indices, scale, act_q, total, BLOCK=cfg["lat_block"])
    act_sum = torch.ldexp(act_q.double(), unit_exp)
    act_sum = torch.where(act_max == float("inf"), float("inf"), act_sum)
    return dict(rows=rows, sum_x=cols[0], sum_x2=cols[1], fire=fire, act_sum=act_sum, act_max=act_max)


def latent_sum_unit_exponent(fire: torch.Tensor, act_max: torch.Tensor) -> torch.Tensor:
    """Per latent, the exponent U of the grid unit 2^U that act_sum's values are rounded to
    (see eval_sums): U = E + C - 62 with act_max < 2^E and count < 2^C (frexp exponents)."""
    e_max = torch.frexp(act_max.float()).exponent
    e_cnt = torch.frexp(fire.double()).exponent
    return (e_max + e_cnt - 62).to(torch.int32)


# --------------------------------------------------------------------------------------
# ahead-of-time compile check (no GPU needed)
# --------------------------------------------------------------------------------------


def aot_compile(arch: int = 90, dtype: str = "bf16", k: int = 64, *, jump: bool = False) -> dict:
    """Compile the three kernels for a CUDA target with the production tile sizes, on any
    machine (triton's bundled ptxas). Returns {name: CompiledKernel}; ``.asm["ptx"]``,
    ``.asm["cubin"]`` and ``.metadata.shared`` say what the GPU would run. Needs this module
    imported without TRITON_INTERPRET."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    bm, bn, bk, rows, warps, stages = _gpu_tiles()
    # the launcher specialises pointers and these sizes as multiples of 16 (true of real SAEs)
    div16 = {"d_in", "d_sae", "chunk", "stride_xm", "stride_wk"}

    def build(fn, sig: dict, consts: dict, num_warps: int, num_stages: int):
        full = {a: sig.get(a, "constexpr") for a in fn.arg_names}
        attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
                 if a in sig and (a.endswith("_ptr") or a in div16)}
        src = ASTSource(fn=fn, signature=full, constexprs=consts, attrs=attrs)
        return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})

    w = f"*{dtype}"
    enc = dict(x_ptr=w, w_ptr=w, bias_ptr="*fp32", jump_ptr="*fp32", buf_ptr="*i64", cnt_ptr="*i32",
               thr_ptr="*i64", nnz_ptr="*i32", n="i32", d_in="i32", d_sae="i32", chunk="i32",
               stride_xm="i32", stride_wk="i32")
    dec = dict(val_ptr="*fp32", idx_ptr="*i64", w_ptr=w, b_ptr=w, out_ptr="*fp32", n="i32", d_in="i32", K="i32")
    ev = dict(x_ptr=w, val_ptr="*fp32", idx_ptr="*i64", w_ptr=w, b_ptr=w, row_ptr="*fp32",
              n="i32", d_in="i32", K="i32", stride_xm="i32")
    col = dict(x_ptr=w, part_ptr="*fp64", n="i32", d_in="i32", stride_xm="i32", rows_per="i32")
    red = dict(part_ptr="*fp64", out_ptr="*fp64", chunks="i32", d_in="i32")
    cnt = dict(val_ptr="*fp32", idx_ptr="*i64", fire_ptr="*i32", act_max_ptr="*fp32", total="i32")
    lsum = dict(val_ptr="*fp32", idx_ptr="*i64", scale_ptr="*fp64", act_q_ptr="*i64", total="i32")
    return {
        "encode": build(_encode_kernel, enc, dict(
            K=k, CAP=triton.next_power_of_2(k + bn), SPLITS=4, JUMP=jump, IEEE=dtype == "fp32",
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, ROWS=rows, SORT=True, RANK_J=1), warps, stages),
        "decode": build(_decode_kernel, dec, dict(BLOCK_R=4, BLOCK_D=512), 4, 3),
        "eval": build(_eval_rows_kernel, ev, dict(BLOCK_R=8, BLOCK_D=256), 4, 3),
        "eval_colsum": build(_colsum_partial_kernel, col, dict(BLOCK_R=32, BLOCK_D=128), 4, 3),
        "eval_colsum_reduce": build(_colsum_reduce_kernel, red, dict(BLOCK_D=128), 4, 3),
        "eval_latent_count_max": build(_latent_count_max_kernel, cnt, dict(BLOCK=1024), 4, 3),
        "eval_latent_sum": build(_latent_sum_kernel, lsum, dict(BLOCK=1024), 4, 3),
    }
