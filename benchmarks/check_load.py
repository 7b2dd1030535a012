"""Feature cards for every latent: their cost against plain LM passes, ranks, and load.

    python benchmarks/check_load.py --tokens 1024            # cards cost vs forward+backward
    python benchmarks/check_load.py --tokens 512 --load      # idle vs one competing CPU-bound process
    python benchmarks/check_load.py --tokens 512 --ranks     # 1 rank vs 2 torchrun ranks
    python benchmarks/check_load.py --tokens 512 --ranks --before python3   # the same for the
        # code python3 imports from /tmp (the main checkout's install), in the same run

Before/after in one run: the cost mode times the cards both ways in one process, each
repeat alternating: ``before`` = the pass without captured windows (card assembly re-runs
the model over every example window, exact ablation re-runs a forward+backward of its base
windows), ``after`` = the pass captures each kept window's values, loss and attribution as
it enters a latent's top or sample set (saekit.harness.latent_stats), so neither runs.
--ranks/--load with ``--before PYTHON`` run the same check with another interpreter (from
/tmp, so it imports that interpreter's installed saekit) right before this checkout's.

Cards cost: the cards pass (one spliced forward + one backward per batch, every latent's
stats, top-k, samples and attribution) plus card assembly (example windows, logit effects
for every latent) against a plain forward + backward of SmolLM2-135M on the same tokens,
the two alternating ``--repeats`` times in one process. Exact ablation of the chosen latents
is timed apart (its cost depends on how many latents are chosen, not on the SAE's width).
The SAE is the demo's shape (576 -> 4608, TopK k=32): the cached demo SAE when it exists,
else random weights of that shape (stated in the results).

Load: the same small ``saekit check`` as a subprocess, first alone, then with one
competing CPU-bound process (a busy loop), in one run. Ranks: the cards pass's throughput
under ``torchrun --nproc-per-node 1`` and ``2``.

Every result carries the date, the machine (CPU model, CPUs this process may use) and the
load average before and after each measurement: the machine may be shared.
Results: benchmarks/results/check_load_<date>.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict:
    from saekit.harness.dist import available_cpus
    from saekit.harness.record import _cpu_name

    return {"cpu": _cpu_name(), "cpus_usable": available_cpus(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version()}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def get_sae():
    """The cached demo SAE, else random weights of its shape."""
    import torch

    from saekit.kernels.sae import SAE
    from saekit.schemas import SAEConfig

    cache = Path(os.environ.get("SAEKIT_CACHE_DIR") or Path.home() / ".cache" / "saekit") / "saes"
    for folder in sorted(cache.glob("smollm2-res-l6-topk-demo-*")):
        from saekit.registry.artifact import load_artifact

        return load_artifact(folder), f"demo SAE {folder.name}"
    g = torch.Generator().manual_seed(0)
    d_in, d_sae, k = 576, 4608, 32
    cfg = SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k,
                    model_name="HuggingFaceTB/SmolLM2-135M-Instruct", hook_name="model.layers.6")
    W = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    sae = SAE(cfg, {"W_enc": W, "b_enc": torch.zeros(d_sae), "W_dec": W.T.contiguous() * 3.0, "b_dec": torch.zeros(d_in)})
    return sae, "random weights, demo shape 576 -> 4608, TopK k=32"


def cards_cost(args) -> dict:
    import torch
    import torch.nn.functional as F

    from saekit.harness.activations import spliced
    from saekit.harness.cards import build_cards, select_latents
    from saekit.schemas.benchmark import DEFAULT_NEGATIVE_EXAMPLES
    from saekit.harness.downstream import exact_ablations
    from saekit.harness.sweep import sweep
    from saekit.harness.dist import configure_threads
    from saekit.harness.model import load_lm
    from saekit.harness.text import special_token_ids, token_set
    from saekit.schemas import SAERef

    threads = configure_threads(args.threads)
    model, tok = load_lm()
    sae, sae_desc = get_sae()
    ts = token_set(tok, n_tokens=args.tokens, context_size=128, seed=0)
    special = torch.tensor(special_token_ids(tok))
    hook, bs = "model.layers.6", args.batch_size

    def plain() -> float:
        t = time.perf_counter()
        for i in range(0, ts.tokens.shape[0], bs):
            toks = ts.tokens[i : i + bs]
            box = {}

            def leaf(a):
                box["x"] = a.detach().requires_grad_(True)
                return box["x"]

            with spliced(model, hook, leaf):
                logits = model(toks).logits
            F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), toks[:, 1:].reshape(-1)).backward()
        return time.perf_counter() - t

    def cards(windows: bool) -> dict:
        t = time.perf_counter()
        st = sweep(sae, model, ts, hook_name=hook, batch_size=bs, special=special, metrics=False, windows=windows,
                   negatives=DEFAULT_NEGATIVE_EXAMPLES).stats
        t_pass = time.perf_counter() - t
        t = time.perf_counter()
        build_cards(sae, model, tok, st, ts, sae_ref=SAERef(name="bench"), hook_name=hook,
                    latents=list(range(sae.cfg.d_sae)), batch_size=bs)
        t_build = time.perf_counter() - t
        t = time.perf_counter()
        exact_ablations(sae, model, ts, st, select_latents(st.fire_count, args.ablate), hook_name=hook,
                        batch_size=bs, special=special, max_rows=4)  # the windows its results were measured with
        return {"cards_pass_s": round(t_pass, 2), "cards_build_s": round(t_build, 2),
                "exact_ablation_s": round(time.perf_counter() - t, 2)}

    rows = []
    for rep in range(args.repeats):
        row = {"load_before": load()}
        row["plain_fwd_bwd_s"] = round(plain(), 2)
        for name, windows in (("before", False), ("after", True)):
            row[f"load_before_{name}"] = load()
            got = cards(windows)
            got["ratio"] = round((got["cards_pass_s"] + got["cards_build_s"]) / row["plain_fwd_bwd_s"], 3)
            row[name] = got
        row["load_after"] = load()
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    med = lambda name, key: statistics.median(r[name][key] for r in rows)  # noqa: E731
    return {
        "what": "cards for every latent (pass + assembly) vs plain forward+backward, same tokens; "
                "before = assembly re-runs the example windows and exact ablation its base windows, "
                "after = both from windows captured in the pass",
        "sae": sae_desc, "d_sae": sae.cfg.d_sae, "tokens": int(ts.tokens.numel()), "batch_size": bs,
        "torch_threads": threads, "runs": rows,
        "median_ratio_before": med("before", "ratio"), "median_ratio_after": med("after", "ratio"),
        "median_build_s": {"before": med("before", "cards_build_s"), "after": med("after", "cards_build_s")},
        "exact_ablation_latents": args.ablate,
        "median_exact_ablation_s": {"before": med("before", "exact_ablation_s"), "after": med("after", "exact_ablation_s")},
        "goal": "ratio <= 1.5",
    }


CHECK_CHILD = [sys.executable, "-m", "saekit", "check"]


def _check_once(sae_dir: str, tokens: int, out: Path, extra: list[str], launcher: list[str] | None = None,
                cwd: str | None = None) -> dict:
    env = {**os.environ, "SAEKIT_QUIET": "1", "SOURCE_DATE_EPOCH": "1700000000",
           "SAEKIT_HOME": str(out.parent / f"home-{out.name}")}
    cmd = [*(launcher or CHECK_CHILD), sae_dir, "--tokens", str(tokens), "--no-log", "--out", str(out),
           "--downstream-latents", "4", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    rec = json.loads((out / "eval.json").read_text())
    return {**rec["timings"]["phases"], "torch_threads": rec["check_config"]["torch_threads"]}


def _versions(args) -> list[tuple[str, str, str | None]]:
    """(label, python, cwd): the interpreter of ``--before`` (run from /tmp) first, then this checkout."""
    out = [("before", args.before, "/tmp")] if args.before else []
    return out + [("after" if args.before else "this", sys.executable, str(ROOT))]


def _same_cards(out: Path, a: str, b: str) -> bool:
    return (out / a / "feature_cards.jsonl").read_bytes() == (out / b / "feature_cards.jsonl").read_bytes()


def under_load(args) -> dict:
    from saekit.harness.train import ensure_demo_sae

    sae_dir = str(ensure_demo_sae("test"))
    out = Path(tempfile.mkdtemp())
    busy = [sys.executable, "-c", "while True: pass"]
    result = {"what": "saekit check (test SAE, every latent's card), idle vs one competing busy loop, one run",
              "tokens": args.tokens, "goal": "slowdown <= 2.5x"}
    for label, python, cwd in _versions(args):
        rows = {}
        l0 = load()
        rows["idle"] = _check_once(sae_dir, args.tokens, out / f"{label}-idle", [], [python, "-m", "saekit", "check"], cwd)
        rows["idle"]["load_before"] = l0
        comp = subprocess.Popen(busy)
        try:
            l1 = load()
            rows["one_competitor"] = _check_once(sae_dir, args.tokens, out / f"{label}-busy", [],
                                                 [python, "-m", "saekit", "check"], cwd)
            rows["one_competitor"]["load_before"] = l1
        finally:
            comp.kill()
            comp.wait()
        ratio = {k: round(rows["one_competitor"][k] / rows["idle"][k], 2)
                 for k in ("eval", "cards_pass", "cards") if k in rows["idle"] and rows["idle"][k]}
        total = {k: sum(v for n, v in rows[k].items() if n not in ("load_before", "torch_threads")) for k in rows}
        ratio["check_total"] = round(total["one_competitor"] / total["idle"], 2)  # every phase, load to cards
        result[label] = {"phases_s": rows, "slowdown": ratio}
    if args.before:
        result["same_cards_before_after"] = _same_cards(out, "before-idle", "after-idle")
    return result


def ranks(args) -> dict:
    from saekit.harness.train import ensure_demo_sae

    sae_dir = str(ensure_demo_sae("test"))
    out = Path(tempfile.mkdtemp())
    result = {"what": "saekit check under torchrun, 1 vs 2 ranks (gloo, CPU, batch size 1), each configuration run "
                      "--repeats times, alternating, median phase times; speedup = time(1 rank, default threads) / "
                      "time(2 ranks); speedup_same_cores_per_rank = time(1 rank, 1 thread) / time(2 ranks, 1 thread "
                      "each): the sharding's own scaling; thread_scaling = time(1 rank, 1 thread) / time(1 rank, "
                      "default threads): what threads alone gain on this machine, the bound on what ranks add over "
                      "them; cards_total = cards_pass + cards (assembly and exact ablation of 4 latents); "
                      "check_total = every phase",
              "tokens": args.tokens, "repeats": args.repeats,
              "goal": "cards_total speedup >= 1.6 (2 ranks over 1 rank)"}
    keys = ("eval", "cards_pass", "cards", "cards_total", "check_total")
    # 1 rank with its default threads (every CPU), 1 rank on one thread (a rank's share of
    # the CPUs when there are 2), 2 ranks (one thread each)
    configs = (("1_ranks", 1, []), ("1_rank_1_thread", 1, ["--threads", "1"]), ("2_ranks", 2, []))
    for label, python, cwd in _versions(args):
        runs: dict[str, list[dict]] = {key: [] for key, _, _ in configs}
        for rep in range(args.repeats):
            for key, n, extra in configs:
                launcher = [python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                            "-m", "saekit", "check"]
                l0 = load()
                ph = _check_once(sae_dir, args.tokens, out / f"{label}-{key}-{rep}", ["--batch-size", "1", *extra],
                                 launcher, cwd)
                ph["cards_total"] = ph["cards_pass"] + ph["cards"]
                ph["check_total"] = sum(ph.get(k, 0.0) for k in ("load_sae", "load_model", "tokenize", "eval",
                                                                 "weight_metrics", "cards_pass", "cards"))
                runs[key].append({**ph, "load_before": l0, "load_after": load()})
        med = {key: {k: statistics.median(r[k] for r in rs) for k in keys} for key, rs in runs.items()}
        result[label] = {
            "runs": runs,
            "median_s": med,
            "torch_threads": {key: sorted({r["torch_threads"] for r in rs}) for key, rs in runs.items()},
            "speedup": {k: round(med["1_ranks"][k] / med["2_ranks"][k], 2) for k in keys},
            "speedup_same_cores_per_rank": {k: round(med["1_rank_1_thread"][k] / med["2_ranks"][k], 2) for k in keys},
            "thread_scaling": {k: round(med["1_rank_1_thread"][k] / med["1_ranks"][k], 2) for k in keys},
            "same_cards_1_2_ranks": all(_same_cards(out, f"{label}-1_ranks-{i}", f"{label}-2_ranks-{i}")
                                        for i in range(args.repeats)),
        }
    if args.before:
        result["same_cards_before_after"] = _same_cards(out, "before-1_ranks-0", "after-1_ranks-0")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ablate", type=int, default=16, help="cost: latents ablated exactly (the check's default 16)")
    ap.add_argument("--load", action="store_true", help="idle vs one competing CPU-bound process")
    ap.add_argument("--ranks", action="store_true", help="1 vs 2 torchrun ranks")
    ap.add_argument("--before", default=None, metavar="PYTHON",
                    help="--ranks/--load: also run the check with this interpreter from /tmp (e.g. the main checkout's)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    stamp = datetime.now(timezone.utc)
    result = {"date": stamp.isoformat(timespec="seconds"), "device": "cpu", "machine": machine(),
              "load_at_start": load(), "command": " ".join(sys.argv)}
    if args.load:
        result["load_test"] = under_load(args)
    elif args.ranks:
        result["ranks"] = ranks(args)
    else:
        result["cards_cost"] = cards_cost(args)
    result["load_at_end"] = load()
    kind = "load" if args.load else "ranks" if args.ranks else "cost"
    path = args.out or RESULTS / f"check_{kind}_{stamp:%Y%m%dT%H%M}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
