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

import os

import torch
import triton
import triton.language as tl

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
             BLOCK_M: tl.constexpr, ROWS: tl.constexpr, SORT: tl.constexpr):
    """Cut each row's candidate buffer to its K largest keys (first K slots, descending) and
    store the K-th key as the row's new threshold (0 while fewer than K).

    SORT: a bitonic tl.sort (GPU). Otherwise each key's rank (how many keys beat it) is
    counted and the key is stored at that slot: same result, and fast in the interpreter,
    where tl.sort is very slow. Counts were stored to cnt_ptr by the caller (then a barrier)."""
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
            rank = tl.sum((keys[:, None, :] > keys[:, :, None]).to(tl.int32), axis=2)
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
    ROWS: tl.constexpr, SORT: tl.constexpr,
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
            _compact(buf_ptr, cnt_ptr, thr_ptr, row0, n, pid_s, SPLITS, K, CAP, BLOCK_M, ROWS, SORT)
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
            if IEEE:
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
    _compact(buf_ptr, cnt_ptr, thr_ptr, row0, n, pid_s, SPLITS, K, CAP, BLOCK_M, ROWS, SORT)
    tl.store(cnt_ptr + slot_row, tl.minimum(count, K), mask=row_ok)
    tl.store(nnz_ptr + slot_row * 2, nnz, mask=row_ok)
    tl.store(nnz_ptr + slot_row * 2 + 1, emitted, mask=row_ok)


# Encode tiles on CUDA: BLOCK_M, BLOCK_N, BLOCK_K, compaction rows, warps, stages. A first
# guess checked only by compiling for sm_90 (wgmma, cp.async pipeline, 72 KiB shared, 255
# registers with a small spill); not yet timed on hardware.
GPU_TILES = (64, 128, 64, 4, 8, 3)


def _gpu_tiles() -> tuple[int, ...]:
    """GPU_TILES, or ``SAEKIT_ENCODE_TILES="BM,BN,BK,ROWS,WARPS,STAGES"`` for tuning runs."""
    env = os.environ.get("SAEKIT_ENCODE_TILES")
    if not env:
        return GPU_TILES
    tiles = tuple(int(v) for v in env.split(","))
    if len(tiles) != 6:
        raise ValueError(f"SAEKIT_ENCODE_TILES needs 6 integers, got {env!r}")
    return tiles


def _encode_config(n: int, d_sae: int, k: int, device: torch.device) -> dict:
    """Tile sizes and split count. GPU values are a first guess, not yet tuned on hardware."""
    if _interpreting() or device.type != "cuda":
        bm, bn, bk, rows, warps, stages, programs = 16, 32, 16, 8, 4, 1, 4
    else:
        bm, bn, bk, rows, warps, stages = _gpu_tiles()
        programs = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    o = CONFIG_OVERRIDE
    bm, bn, bk, rows = o.get("BLOCK_M", bm), o.get("BLOCK_N", bn), o.get("BLOCK_K", bk), o.get("ROWS", rows)
    programs = o.get("programs", programs)
    cap = triton.next_power_of_2(k + bn)
    row_blocks = triton.cdiv(n, bm)
    tiles = triton.cdiv(d_sae, bn)
    splits = max(1, min(tiles, triton.cdiv(programs, row_blocks)))
    chunk = triton.cdiv(tiles, splits) * bn
    splits = triton.cdiv(d_sae, chunk)
    cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, ROWS=min(rows, bm), CAP=cap,
               SORT=o.get("SORT", not _interpreting()),
               splits=splits, chunk=chunk, num_warps=warps, num_stages=stages)
    return cfg


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
        K=k, SPLITS=splits, JUMP=jump is not None, IEEE=x.dtype == torch.float32, **cfg,
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
    grid = (triton.cdiv(n, br), triton.cdiv(d_in, bd))
    _decode_kernel[grid](values, indices, w_dec, b_dec, out, n, d_in, k, BLOCK_R=br, BLOCK_D=bd)
    return out


@triton.jit
def _eval_kernel(x_ptr, val_ptr, idx_ptr, w_ptr, b_ptr,
                 row_ptr, sum_x_ptr, sum_x2_ptr, fire_ptr, act_sum_ptr, act_max_ptr,
                 n, d_in, K, stride_xm,
                 BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per program: BLOCK_R tokens. Decodes them, and accumulates per-row sums (sse, x.x,
    x_hat.x_hat, x.x_hat), per-dim sums of x and x^2, and per-latent statistics."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n
    rows64 = rows.to(tl.int64)
    # per-latent statistics: one pass over the codes
    for j in range(K):
        v = tl.load(val_ptr + rows64 * K + j, mask=row_ok, other=0.0)
        i = tl.load(idx_ptr + rows64 * K + j, mask=row_ok, other=0)
        fired = row_ok & (v > 0.0)
        tl.atomic_add(fire_ptr + i, 1, mask=fired)
        tl.atomic_add(act_sum_ptr + i, v.to(tl.float64), mask=fired)
        tl.atomic_max(act_max_ptr + i, v, mask=fired)
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
        x64 = x.to(tl.float64)
        tl.atomic_add(sum_x_ptr + d, tl.sum(x64, axis=0), mask=d_ok)
        tl.atomic_add(sum_x2_ptr + d, tl.sum(x64 * x64, axis=0), mask=d_ok)
    tl.store(row_ptr + rows64 * 4 + 0, sse, mask=row_ok)
    tl.store(row_ptr + rows64 * 4 + 1, xx, mask=row_ok)
    tl.store(row_ptr + rows64 * 4 + 2, hh, mask=row_ok)
    tl.store(row_ptr + rows64 * 4 + 3, xh, mask=row_ok)


def eval_sums(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
              w_dec: torch.Tensor, b_dec: torch.Tensor) -> dict[str, torch.Tensor]:
    """Decode + statistics without materialising x_hat. Returns raw sums (see _eval_kernel)."""
    n, k = values.shape
    d_in = w_dec.shape[1]
    d_sae = w_dec.shape[0]
    dev = x.device
    x, values, indices, w_dec = x.contiguous(), values.contiguous(), indices.contiguous(), w_dec.contiguous()
    rows = _empty(n, 4, dtype=torch.float32, device=dev)
    sum_x = torch.zeros(d_in, dtype=torch.float64, device=dev)
    sum_x2 = torch.zeros(d_in, dtype=torch.float64, device=dev)
    fire = torch.zeros(d_sae, dtype=torch.int32, device=dev)
    act_sum = torch.zeros(d_sae, dtype=torch.float64, device=dev)
    act_max = torch.zeros(d_sae, dtype=torch.float32, device=dev)
    br, bd = (4, 32) if _interpreting() else (8, min(256, triton.next_power_of_2(d_in)))
    _eval_kernel[(triton.cdiv(n, br),)](
        x, values, indices, w_dec, b_dec, rows, sum_x, sum_x2, fire, act_sum, act_max,
        n, d_in, k, x.stride(0), BLOCK_R=br, BLOCK_D=bd,
    )
    return dict(rows=rows, sum_x=sum_x, sum_x2=sum_x2, fire=fire, act_sum=act_sum, act_max=act_max)


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
    ev = dict(x_ptr=w, val_ptr="*fp32", idx_ptr="*i64", w_ptr=w, b_ptr=w, row_ptr="*fp32", sum_x_ptr="*fp64",
              sum_x2_ptr="*fp64", fire_ptr="*i32", act_sum_ptr="*fp64", act_max_ptr="*fp32",
              n="i32", d_in="i32", K="i32", stride_xm="i32")
    return {
        "encode": build(_encode_kernel, enc, dict(
            K=k, CAP=triton.next_power_of_2(k + bn), SPLITS=4, JUMP=jump, IEEE=dtype == "fp32",
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, ROWS=rows, SORT=True), warps, stages),
        "decode": build(_decode_kernel, dec, dict(BLOCK_R=4, BLOCK_D=512), 4, 3),
        "eval": build(_eval_kernel, ev, dict(BLOCK_R=8, BLOCK_D=256), 4, 3),
    }
