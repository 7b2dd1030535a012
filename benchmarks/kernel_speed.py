"""Kernel benchmark: saekit's fused path beside the torch reference, sparsify, SAELens and a
plain GEMM of the encoder's size (the roofline), in one process.

    python3 benchmarks/kernel_speed.py                 # GPU when there is one, else CPU (reduced)
    python3 benchmarks/kernel_speed.py --device cpu --out benchmarks/results/kernels_cpu.json

Per shape (tokens n, d_in, d_sae, k), each method is timed in interleaved rounds (one run of
every method per round; medians reported), then run once more after a peak-memory reset.
Methods:
  gemm              x @ W_enc only (cuBLAS on GPU): the rate the fused encode is held to
  saekit.encode     dispatch.encode (Triton fused GEMM + bias + ReLU + online top-k on CUDA)
  saekit.enc+dec    dispatch.encode + dispatch.decode (Triton sparse gather)
  saekit.eval       dispatch.eval_batch (one pass: encode + decode + statistics)
  torch.enc+dec     F.linear + torch.topk + dense decode (scatter, then @ W_dec)
  reference.eval    saekit.kernels.reference.eval_batch (the correctness definition)
  sparsify.enc+dec  sparsify SparseCoder.encode + .decode (eai-sparsify)
  saelens.enc+dec   SAELens TopKSAE.encode + .decode (sae-lens 6)
Agreement of each method's code and reconstruction with an fp32 reference (same weights,
same inputs in fp32): index-set overlap, value error, explained variance, mean L0, and exact
per-latent fire counts of saekit.eval against reference.eval.

On CPU there is no Triton: saekit.* runs the torch reference (the dispatch default), the
shapes are reduced and the dtype is fp32; the result file says so ("cpu_note").
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

GPU_SHAPES = [  # (d_in, d_sae, k); each at 256, 4096 and 16384 tokens
    (576, 4608, 32),
    (2304, 16384, 64),
    (2304, 131072, 64),
    (2304, 131072, 192),
]
GPU_TOKENS = [256, 4096, 16384]
CPU_SHAPES = [(576, 4608, 32), (2304, 16384, 64)]
CPU_TOKENS = [64, 512]


def _make_sae(d_in: int, d_sae: int, k: int, device: str, dtype: torch.dtype, seed: int = 0):
    """A TopK SAE with trained-like structure: unit-norm decoder rows, W_enc = W_dec^T."""
    from saekit.kernels import SAE
    from saekit.schemas import SAEConfig

    g = torch.Generator(device="cpu").manual_seed(seed)
    w_dec = torch.randn(d_sae, d_in, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    tensors = {
        "W_enc": w_dec.T.contiguous(),
        "b_enc": -0.05 * torch.rand(d_sae, generator=g),
        "W_dec": w_dec,
        "b_dec": 0.1 * torch.randn(d_in, generator=g),
    }
    cfg = SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k, dtype=str(dtype).removeprefix("torch."))
    return SAE(cfg, {n: t.to(device=device, dtype=dtype) for n, t in tensors.items()})


def _make_x(sae, n: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """Activations the SAE explains well: k random latents per token with |N(0,1)|
    magnitudes, decoded, plus b_dec and 5% noise (so EV and index overlap are meaningful)."""
    g = torch.Generator(device="cpu").manual_seed(1)
    d_sae, k = sae.cfg.d_sae, sae.cfg.k
    idx = torch.randint(0, d_sae, (n, k), generator=g).to(device)
    acts = torch.randn(n, k, generator=g).abs().to(device)
    w = sae.W_dec.float()
    x = F.embedding_bag(idx, w, per_sample_weights=acts, mode="sum") + sae.b_dec.float()
    x += 0.05 * x.std() * torch.randn(n, sae.cfg.d_in, generator=g).to(device)
    return x.to(dtype)


def _peers(sae, device: str, dtype: torch.dtype) -> dict:
    """sparsify and SAELens modules holding the same weights (None where not importable)."""
    out = {}
    try:
        from sparsify import SparseCoder, SparseCoderConfig

        sc = SparseCoder(sae.cfg.d_in, SparseCoderConfig(num_latents=sae.cfg.d_sae, k=sae.cfg.k), device=device, dtype=dtype)
        with torch.no_grad():
            sc.encoder.weight.copy_(sae.W_enc.T)
            sc.encoder.bias.copy_(sae.b_enc)
            sc.W_dec.copy_(sae.W_dec)
            sc.b_dec.copy_(sae.b_dec)
        out["sparsify"] = sc
    except Exception as err:  # noqa: BLE001 - a missing peer is reported, not fatal
        out["sparsify"] = f"unavailable: {err}"
    try:
        from sae_lens import TopKSAE, TopKSAEConfig

        sl = TopKSAE(TopKSAEConfig(d_in=sae.cfg.d_in, d_sae=sae.cfg.d_sae, k=sae.cfg.k,
                                   dtype=str(dtype).removeprefix("torch."), device=device))
        sl.load_state_dict({n: sae.tensors[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")}, strict=False)
        out["saelens"] = sl
    except Exception as err:  # noqa: BLE001
        out["saelens"] = f"unavailable: {err}"
    return out


def _torch_topk_enc_dec(x, sae):
    """The plain torch path: F.linear + torch.topk + dense decode."""
    xin = x - sae.b_dec
    pre = F.linear(xin, sae.W_enc.T, sae.b_enc)
    vals, idx = torch.relu(pre).topk(sae.cfg.k, dim=1)
    dense = torch.zeros_like(pre).scatter_(1, idx, vals)
    return (vals, idx), dense @ sae.W_dec + sae.b_dec


def _methods(x, sae, peers) -> dict:
    from saekit.kernels import dispatch, reference

    w = sae.W_enc

    def saekit_enc_dec():
        c = dispatch.encode(x, sae)
        return (c.values, c.indices), dispatch.decode(c.values, c.indices, sae)

    m = {
        "gemm": lambda: (None, x @ w),
        "saekit.encode": lambda: (tuple(dispatch.encode(x, sae)), None),
        "saekit.enc+dec": saekit_enc_dec,
        "saekit.eval": lambda: (dispatch.eval_batch(x, sae), None),
        "torch.enc+dec": lambda: _torch_topk_enc_dec(x, sae),
        "reference.eval": lambda: (reference.eval_batch(x, sae), None),
    }
    sc, sl = peers.get("sparsify"), peers.get("saelens")
    if not isinstance(sc, str) and sc is not None:
        if x.is_cuda:
            decode = sc.decode  # sparsify's Triton embedding-bag decoder
        else:
            # sparsify picks its Triton decoder whenever triton imports, which fails on CPU
            # tensors; its own eager decoder is what it runs without triton
            from sparsify.utils import eager_decode

            def decode(acts, idx):
                return eager_decode(idx, acts.to(sc.dtype), sc.W_dec.mT) + sc.b_dec

        def sparsify_enc_dec():
            out = sc.encode(x)
            return (out.top_acts, out.top_indices), decode(out.top_acts, out.top_indices)
        m["sparsify.enc+dec"] = sparsify_enc_dec
    if not isinstance(sl, str) and sl is not None:
        def saelens_enc_dec():
            acts = sl.encode(x)
            return ("dense", acts), sl.decode(acts)
        m["saelens.enc+dec"] = saelens_enc_dec
    return m


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3


def _peak_mb(fn, device: str) -> float | None:
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _agreement(name, out, x32, ref32, ref_code, ref_xhat, sae) -> dict:
    """Compare a method's code / reconstruction with the fp32 reference."""
    from saekit.kernels import reference

    code, x_hat = out
    res: dict = {}
    if isinstance(code, reference.EvalStats):
        res["fire_counts_exact"] = bool(torch.equal(code.fire_count.cpu(), ref32.fire_count.cpu()))
        res["fire_count_latents_differing"] = int((code.fire_count.cpu() != ref32.fire_count.cpu()).sum())
        res["l0_mean"] = float(code.l0_sum) / max(code.n_tokens, 1)
        res["explained_variance"] = float(1 - code.sse / code.total_variance_sum())
        return res
    if code is not None:
        if code[0] == "dense":
            vals, idx = code[1].float().topk(sae.cfg.k, dim=1)
        else:
            vals, idx = code[0], code[1]  # a SparseCode, or a peer's (values, indices)
        vals, idx = vals.float(), idx.long()
        hit = torch.zeros(x32.shape[0], sae.cfg.d_sae, dtype=torch.bool, device=idx.device)
        hit.scatter_(1, ref_code.indices.to(idx.device), True)
        res["index_overlap"] = float(hit.gather(1, idx).float().mean())
        a = vals.sort(1, descending=True).values
        b = ref_code.values.to(a.device).sort(1, descending=True).values
        res["value_max_rel_err"] = float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
        res["l0_mean"] = float((vals > 0).sum(1).float().mean())
    if x_hat is not None and name != "gemm":
        err = ((x32 - x_hat.float()) ** 2).sum()
        var = ((x32 - x32.mean(0)) ** 2).sum()
        res["explained_variance"] = float(1 - err / var)
        res["x_hat_max_abs_diff_vs_ref"] = float((x_hat.float() - ref_xhat).abs().max())
    return res


def bench_shape(n, d_in, d_sae, k, *, device, dtype, rounds, warmup) -> dict:
    from saekit.kernels import dispatch, reference

    sae = _make_sae(d_in, d_sae, k, device, dtype)
    x = _make_x(sae, n, device, dtype)
    peers = _peers(sae, device, dtype)
    methods = _methods(x, sae, peers)
    row: dict = {"n": n, "d_in": d_in, "d_sae": d_sae, "k": k, "dtype": str(dtype),
                 "backend": dispatch.backend(x), "methods": {}}
    for peer, v in peers.items():
        if isinstance(v, str):
            row["methods"][f"{peer}.enc+dec"] = {"error": v}
    times: dict[str, list[float]] = {name: [] for name in methods}
    failed: dict[str, str] = {}
    with torch.no_grad():
        for r in range(warmup + rounds):
            for name, fn in methods.items():
                if name in failed:
                    continue
                try:
                    t = _time(fn, device)
                except torch.OutOfMemoryError:
                    failed[name] = "out of memory"
                    torch.cuda.empty_cache()
                    continue
                except Exception as err:  # noqa: BLE001 - one broken peer must not stop the run
                    failed[name] = f"{type(err).__name__}: {err}"[:200]
                    continue
                if r >= warmup:
                    times[name].append(t)
        # fp32 reference for agreement
        sae32 = sae.to(dtype=torch.float32)
        x32 = x.float()
        ref_code = reference.encode(x32, sae32)
        ref_xhat = reference.decode(ref_code.values, ref_code.indices, sae32)
        ref32 = reference.eval_batch(x32, sae32)
        del sae32
        flops = 2.0 * n * d_in * d_sae
        gemm_ms = statistics.median(times["gemm"]) if times["gemm"] else float("nan")
        for name, fn in methods.items():
            if name in failed:
                row["methods"][name] = {"error": failed[name]}
                continue
            ms = statistics.median(times[name])
            try:
                peak = _peak_mb(fn, device)
                out = fn()
            except torch.OutOfMemoryError:
                row["methods"][name] = {"ms": ms, "error": "out of memory in the memory run"}
                torch.cuda.empty_cache()
                continue
            row["methods"][name] = {
                "ms": ms,
                "ms_all": times[name],
                "tokens_per_s": n / ms * 1e3,
                "tflops": flops / ms * 1e-9,
                "pct_of_gemm_rate": 100.0 * gemm_ms / ms,
                "peak_mem_mb": peak,
                **_agreement(name, out, x32, ref32, ref_code, ref_xhat, sae),
            }
            del out
    m = row["methods"]
    if row["backend"] == "triton" and "ms" in m.get("saekit.encode", {}):
        # how many keys per row the online filter let into the candidate buffers
        from saekit.kernels import triton_kernels as tk

        xin = (x.float() - sae.b_dec.float()).to(sae.dtype)
        appended = tk.encode_topk(xin, sae.W_enc, sae.b_enc.float(), k, return_appended=True)[3]
        m["saekit.encode"]["keys_appended_per_row_mean"] = float(appended.float().mean())
        m["saekit.encode"]["keys_appended_per_row_max"] = int(appended.max())
        del xin, appended

    def speedup(a, b):
        if "ms" in m.get(a, {}) and "ms" in m.get(b, {}):
            return m[b]["ms"] / m[a]["ms"]
        return None

    row["speedup"] = {
        "saekit.enc+dec_over_torch.enc+dec": speedup("saekit.enc+dec", "torch.enc+dec"),
        "saekit.eval_over_reference.eval": speedup("saekit.eval", "reference.eval"),
        "saekit.enc+dec_over_sparsify": speedup("saekit.enc+dec", "sparsify.enc+dec"),
        "saekit.enc+dec_over_saelens": speedup("saekit.enc+dec", "saelens.enc+dec"),
    }
    if device == "cuda" and m.get("saekit.eval", {}).get("peak_mem_mb") and m.get("reference.eval", {}).get("peak_mem_mb"):
        row["eval_peak_mem_ratio"] = m["saekit.eval"]["peak_mem_mb"] / m["reference.eval"]["peak_mem_mb"]
    del sae, x, peers, methods
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


# Encode tile configs tried by --sweep (BM, BN, BK, ROWS, WARPS, STAGES); see
# saekit.kernels.triton_kernels.GPU_TILES.
SWEEP_TILES = [
    (64, 128, 64, 4, 8, 3), (64, 128, 64, 4, 8, 4), (64, 64, 64, 4, 4, 4), (128, 64, 64, 4, 8, 3),
    (128, 128, 64, 4, 8, 3), (64, 256, 64, 4, 8, 3), (128, 128, 32, 4, 8, 4), (64, 128, 128, 4, 8, 2),
]


def sweep_tiles(n, d_in, d_sae, k, *, rounds: int, warmup: int) -> list[dict]:
    """Times saekit.encode under each SWEEP_TILES config beside the GEMM (CUDA only)."""
    from saekit.kernels import dispatch

    sae = _make_sae(d_in, d_sae, k, "cuda", torch.bfloat16)
    x = _make_x(sae, n, "cuda", torch.bfloat16)
    w = sae.W_enc
    out = []
    saved = os.environ.get("SAEKIT_ENCODE_TILES")
    try:
        with torch.no_grad():
            ref = dispatch.encode(x, sae).indices
            for tiles in SWEEP_TILES:
                os.environ["SAEKIT_ENCODE_TILES"] = ",".join(map(str, tiles))
                try:
                    same = bool(torch.equal(dispatch.encode(x, sae).indices, ref))
                    t_enc, t_gemm = [], []
                    for r in range(warmup + rounds):
                        a, b = _time(lambda: dispatch.encode(x, sae), "cuda"), _time(lambda: x @ w, "cuda")
                        if r >= warmup:
                            t_enc.append(a)
                            t_gemm.append(b)
                    enc, gemm = statistics.median(t_enc), statistics.median(t_gemm)
                    out.append({"tiles": tiles, "encode_ms": enc, "gemm_ms": gemm,
                                "pct_of_gemm_rate": 100 * gemm / enc, "same_indices": same})
                except Exception as err:  # noqa: BLE001 - a config that does not compile/fit
                    out.append({"tiles": tiles, "error": f"{type(err).__name__}: {err}"[:200]})
                print(f"n{n} {d_in}x{d_sae} k{k} tiles {tiles}: {out[-1]}")
    finally:
        if saved is None:
            os.environ.pop("SAEKIT_ENCODE_TILES", None)
        else:
            os.environ["SAEKIT_ENCODE_TILES"] = saved
    return out


def _env(device: str) -> dict:
    import importlib.metadata as md

    def version(dist):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    env = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "torch": torch.__version__,
        "triton": version("triton"),
        "sae_lens": version("sae-lens"),
        "sparsify": version("eai-sparsify"),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device == "cuda":
        env["device_name"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    else:
        env["device_name"] = f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
        env["driver"] = None
    return env


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict]) -> None:
    head = f"{'shape':<28} {'method':<17} {'ms':>9} {'tok/s':>10} {'TFLOP/s':>8} {'%GEMM':>6} {'peakMB':>8} {'x ref':>6} {'EV':>7} {'overlap':>7}"
    print(head)
    print("-" * len(head))
    for row in rows:
        shape = f"n{row['n']} {row['d_in']}x{row['d_sae']} k{row['k']}"
        for name, r in row["methods"].items():
            if "error" in r and "ms" not in r:
                print(f"{shape:<28} {name:<17} {r['error'][:60]}")
                continue
            ref = {"saekit.eval": "reference.eval", "saekit.enc+dec": "torch.enc+dec",
                   "saekit.encode": "torch.enc+dec", "sparsify.enc+dec": "torch.enc+dec",
                   "saelens.enc+dec": "torch.enc+dec"}.get(name)
            sp = row["methods"][ref]["ms"] / r["ms"] if ref and "ms" in row["methods"].get(ref, {}) else None
            print(f"{shape:<28} {name:<17} {r['ms']:>9.3f} {r['tokens_per_s']:>10.0f} {r['tflops']:>8.2f} "
                  f"{r['pct_of_gemm_rate']:>6.1f} {_fmt(r.get('peak_mem_mb'), '8.1f'):>8} {_fmt(sp, '6.2f'):>6} "
                  f"{_fmt(r.get('explained_variance'), '7.4f'):>7} {_fmt(r.get('index_overlap'), '7.4f'):>7}")
            shape = ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7 GPU, 3 CPU)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--tokens", type=int, nargs="*", help="override token counts")
    ap.add_argument("--shapes", type=str, default=None, help="e.g. '576x4608k32,2304x131072k64'")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--sweep", action="store_true", help="CUDA: also time encode tile configs (SWEEP_TILES)")
    args = ap.parse_args(argv)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    gpu = device == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32
    shapes = GPU_SHAPES if gpu else CPU_SHAPES
    if args.shapes:
        shapes = []
        for s in args.shapes.split(","):
            dims, k = s.split("k")
            a, b = dims.split("x")
            shapes.append((int(a), int(b), int(k)))
    tokens = args.tokens or (GPU_TOKENS if gpu else CPU_TOKENS)
    rounds = args.rounds or (7 if gpu else 3)
    env = _env(device)
    note = None
    if not gpu:
        note = ("CPU run: no Triton here, so saekit.* is the torch reference (dispatch default); "
                "reduced shapes, fp32. GPU numbers come from a CUDA run of this script.")
        print(f"NOTE: {note}\n")
    print(f"device: {env['device_name']}  torch {env['torch']}  triton {env['triton']}  dtype {dtype}\n")
    rows = []
    for d_in, d_sae, k in shapes:
        for n in tokens:
            rows.append(bench_shape(n, d_in, d_sae, k, device=device, dtype=dtype, rounds=rounds, warmup=args.warmup))
            print_table(rows[-1:])
            sys.stdout.flush()
    print("\nsummary")
    print_table(rows)
    sweep = []
    if args.sweep and gpu:
        for d_in, d_sae, k in shapes:
            sweep += [{"n": n, "d_in": d_in, "d_sae": d_sae, "k": k,
                       "results": sweep_tiles(n, d_in, d_sae, k, rounds=rounds, warmup=args.warmup)}
                      for n in tokens if n >= 4096]
    out = args.out or ROOT / "benchmarks" / "results" / f"kernels_{'gpu' if gpu else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "cpu_note": note, "rounds": rounds, "warmup": args.warmup, "shapes": rows, "tile_sweep": sweep}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
