"""Time ``saekit diff``'s matching (saekit.matching.match) on this machine.

    python3 benchmarks/matching.py                      # 2048 .. 16384 latents, d_in 576
    python3 benchmarks/matching.py --sizes 1024 2048    # quicker

SAE A has n random unit decoder rows (d_in 576, SmolLM2-135M's width); SAE B is A with its
latents permuted and every direction rotated by noise (cosine ~0.96 to its original), so
the run does the real work: blocked nearest neighbours both ways, links, relations, one
validated mapping row per latent, the summary.

Both precisions are timed: fp32 (the default) and bf16 ranking (``--precision bfloat16``,
similarities recomputed in fp32). 131,072 x 131,072 is NOT measured here (no GPU in this
task, and the shared 2-core machine would be busy for many minutes): it is extrapolated from the measured sizes, with the blocked
similarity scaling as n_a * n_b and the per-latent work (rows, relations) as n. Results go to
benchmarks/results/matching_<date>.json with the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from saekit.matching import latents as m
from saekit.kernels import SAE
from saekit.schemas import SAEConfig

D_IN = 576
TARGET = 131_072


def make_pair(n: int, *, seed: int = 0) -> tuple[SAE, SAE, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, D_IN, generator=g)
    W /= W.norm(dim=1, keepdim=True)
    perm = torch.randperm(n, generator=g)
    W2 = W[perm] + 0.3 * torch.randn(n, D_IN, generator=g) / D_IN**0.5
    W2 /= W2.norm(dim=1, keepdim=True)

    def sae(Wd: torch.Tensor) -> SAE:
        cfg = SAEConfig(architecture="topk", d_in=D_IN, d_sae=n, k=32)
        return SAE(cfg, {"W_enc": Wd.T.contiguous(), "b_enc": torch.zeros(n), "W_dec": Wd, "b_dec": torch.zeros(D_IN)})

    return sae(W), sae(W2), perm


def time_one(n: int, block: int, precision: str = "float32") -> dict:
    a, b, perm = make_pair(n)
    c0, t0 = time.process_time(), time.perf_counter()
    U, V = m.latent_vectors(a), m.latent_vectors(b)
    t1 = time.perf_counter()
    c1 = time.process_time()
    near = m.nearest(U, V, block=block, precision=precision)
    c2, t2 = time.process_time(), time.perf_counter()
    rows = m.relate(near, threshold=m.DEFAULT_THRESHOLD)
    c3, t3 = time.process_time(), time.perf_counter()
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    correct = bool(torch.equal(near.a_index, inv))
    same = sum(r.relation == "same" for r in rows)
    return {
        "n_a": n, "n_b": n, "d_in": D_IN, "block": block, "precision": precision,
        "seconds_total": round(t3 - t0, 3),
        "seconds_vectors": round(t1 - t0, 3),
        "seconds_nearest": round(t2 - t1, 3),
        "seconds_relations_rows": round(t3 - t2, 3),
        "gflops_nearest": round(2 * n * n * D_IN / (t2 - t1) / 1e9, 1),
        # CPU seconds of this process (all its threads): what the run costs regardless of how
        # busy the shared machine was; / torch threads ~ wall time on an idle machine
        "cpu_seconds_total": round(c3 - c0, 3),
        "cpu_seconds_nearest": round(c2 - c1, 3),
        "permutation_recovered": correct,
        "same": same,
    }


def time_exact(n: int) -> dict:
    a, b, perm = make_pair(n, seed=1)
    t0 = time.perf_counter()
    res = m.match(a, b, assignment="exact")
    return {"n_a": n, "n_b": n, "assignment": "exact", "seconds_total": round(time.perf_counter() - t0, 3),
            "same": res.summary.counts["same"]}


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else platform.processor()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": "cpu", "gpu": None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "note": "shared 2-core machine: other engineers' tests may run concurrently",
    }


def extrapolate(runs: list[dict]) -> dict:
    """131072 x 131072 from measured runs: nearest ~ c2 * n_a * n_b, the rest ~ c1 * n."""
    big = [r for r in runs if r["n_a"] >= 4096] or runs
    n2 = np.array([r["n_a"] * r["n_b"] for r in big], dtype=float)
    tn = np.array([r["seconds_nearest"] for r in big])
    c2 = float((n2 @ tn) / (n2 @ n2))  # least squares through the origin
    c1 = float(np.mean([(r["seconds_total"] - r["seconds_nearest"]) / r["n_a"] for r in big]))
    est = c2 * TARGET * TARGET + c1 * TARGET
    cpu2 = float((n2 @ np.array([r["cpu_seconds_nearest"] for r in big])) / (n2 @ n2))
    cpu1 = float(np.mean([(r["cpu_seconds_total"] - r["cpu_seconds_nearest"]) / r["n_a"] for r in big]))
    cpu_est = cpu2 * TARGET * TARGET + cpu1 * TARGET
    return {
        "n_a": TARGET, "n_b": TARGET, "d_in": D_IN, "precision": runs[0]["precision"], "measured": False,
        "seconds_total_extrapolated": round(est, 1),
        "cpu_seconds_total_extrapolated": round(cpu_est, 1),
        "idle_machine_seconds_estimate": round(cpu_est / torch.get_num_threads(), 1),
        "method": "nearest time = c2 * n_a * n_b (least squares on the measured sizes >= 4096); "
                  "vectors + relations + rows = c1 * n",
        "c2_seconds_per_pair": c2, "c1_seconds_per_latent": c1,
        "memory_note": "U and V 131072 x 576 fp32 = 302 MB each, two 4096 x 4096 tiles = 128 MiB; "
                       "the 131072 x 131072 matrix (64 GiB) is never held",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    ap.add_argument("--block", type=int, default=m.DEFAULT_BLOCK)
    ap.add_argument("--precision", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    ap.add_argument("--exact", type=int, default=2048, help="also time exact assignment at this size (0: skip)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    info = machine()
    runs, extrapolations = [], []
    for precision in args.precision:
        these = []
        for n in args.sizes:
            r = time_one(n, args.block, precision)
            these.append(r)
            print(f"{precision:>8} {n:>6} x {n:<6} d_in {D_IN}: {r['seconds_total']:6.2f} s  (nearest "
                  f"{r['seconds_nearest']:.2f} s at {r['gflops_nearest']} GFLOP/s, rows {r['seconds_relations_rows']:.2f} s)"
                  f"  cpu {r['cpu_seconds_total']:.2f} s  permutation recovered: {r['permutation_recovered']}", flush=True)
        runs += these
        ex = extrapolate(these)
        extrapolations.append(ex)
        est = ex["seconds_total_extrapolated"]
        print(f"{precision:>8} {TARGET} x {TARGET}: ~{est:.0f} s ({est / 60:.1f} min) wall at this load, "
              f"~{ex['cpu_seconds_total_extrapolated']:.0f} CPU s (~{ex['idle_machine_seconds_estimate'] / 60:.1f} min "
              "on an idle machine): EXTRAPOLATED from the measured sizes, not measured", flush=True)

    exact = None
    if args.exact:
        exact = time_exact(args.exact)
        print(f"exact assignment {args.exact} x {args.exact}: {exact['seconds_total']:.2f} s")
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]

    date = dt.datetime.now(dt.timezone.utc)
    result = {
        "benchmark": "matching", "date": date.strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": info,
        "command": "python3 benchmarks/matching.py " + " ".join(
            [f"--sizes {' '.join(map(str, args.sizes))}", f"--block {args.block}",
             f"--precision {' '.join(args.precision)}", f"--exact {args.exact}"]),
        "runs": runs, "extrapolations": extrapolations, "exact": exact,
    }
    out = args.out or Path(__file__).parent / "results" / f"matching_{date.strftime('%Y%m%d')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
