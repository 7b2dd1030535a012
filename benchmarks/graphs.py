"""Time and peak memory of ``saekit graph`` on SmolLM2-135M-Instruct, and how both grow with the
prompt's length and with the number of active features.

    python3 benchmarks/graphs.py                     # lengths 4 8 16 24 (all layers), layers 10 20 30 at 16 tokens
    python3 benchmarks/graphs.py --lengths 8 16 --layers 30

The transcoder set is the docs example's (docs/graphs.md: ``saekit train transcoders --width 768
--activation relu --l1 0.1 --corpus fortunes --tokens 32768 --steps 400 --batch-size 512``,
cached under SAEKIT_CACHE_DIR, trained on first use). Active features grow with the prompt
(every position after the first has the transcoders' L0 of them per layer) and with the
layers the set covers (a set limited to the first L layers leaves the rest as error nodes),
so the two sweeps separate the two. Each configuration runs in a fresh
process: ``peak_rss_mib`` is its high-water resident memory, ``graph_rss_mib`` how much the
graph (trace, backward passes, pruning, files) raised it above the model and set loaded.
Side by side in one run; the ratios against the 16-token, all-layer graph are printed.
Results go to benchmarks/results/graphs_<date>.json with the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT_WORDS = ("The capital of France is Paris, and the capital of Germany is Berlin; the capital of Italy is Rome "
                "and the capital of Spain is Madrid, while the capital of Japan is").split(" ")


def train_config():
    from saekit.harness.transcoder_train import TCTrainConfig

    # ReLU (continuous) transcoders on everyday English: ablating a feature then moves the
    # downstream codes as the graph's linear paths predict (benchmarks/graph_ablations.py);
    # the former TopK set (pydoc, 4,096 tokens, 120 steps) reached r = 0.2-0.6
    return TCTrainConfig(width=768, n_tokens=32768, steps=400, batch_size=512, corpus="fortunes", activation="relu",
                         l1_coeff=0.1)


def prompt_of(tok, n_tokens: int) -> str:
    """The longest prefix of PROMPT_WORDS with at most n_tokens tokens (BOS included)."""
    best = PROMPT_WORDS[0]
    for i in range(1, len(PROMPT_WORDS) + 1):
        text = " ".join(PROMPT_WORDS[:i])
        if len(tok(text, add_special_tokens=False)["input_ids"]) + 1 <= n_tokens:
            best = text
    return best


def one(n_tokens: int, n_layers: int, batch_size: int) -> dict:
    """One graph in this process (the child)."""
    import torch

    from saekit.circuits.build import build_graph
    from saekit.harness.model import load_lm
    from saekit.harness.transcoder_train import ensure_transcoder_set
    from saekit.kernels.transcoder import TranscoderSet
    from saekit.registry.transcoder_set import load_set

    model, tok = load_lm()
    full = load_set(ensure_transcoder_set(train_config()).folder)
    tset = TranscoderSet({i: full[i] for i in full.layers if i < n_layers}, model_name=full.model_name,
                         model_revision=full.model_revision)
    prompt = prompt_of(tok, n_tokens)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        res = build_graph(prompt, tset, model, tok, out=Path(out) / "g", batch_size=batch_size)
        wall = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (Path(out) / "g").iterdir())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tokens": len(res.prompt_tokens), "layers_covered": n_layers, "prompt": prompt,
            "active_features": res.graph.n_features, "nodes": int(res.graph.adjacency.shape[0]),
            "kept_features": res.meta["counts"]["kept_features"], "seconds": round(wall, 2),
            **{f"{k}_s": round(v, 2) for k, v in res.meta["timings_s"].items()},
            "peak_rss_mib": round(peak), "graph_rss_mib": round(peak - before), "files_mib": round(size / 2**20, 1),
            "replacement_score": round(res.replacement_score, 4), "completeness_score": round(res.completeness_score, 4),
            "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[4, 8, 16, 24])
    ap.add_argument("--layers", type=int, nargs="+", default=[10, 20, 30])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--one", type=int, nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.batch_size)))
        return 0

    from saekit.harness.transcoder_train import ensure_transcoder_set

    ensure_transcoder_set(train_config())  # trained (once) before anything is timed
    configs = [(n, 30) for n in args.lengths] + [(16, layers) for layers in args.layers if layers != 30]
    load_start = [round(x, 2) for x in os.getloadavg()]
    rows = []
    for n, layers in configs:
        r = subprocess.run([sys.executable, __file__, "--one", str(n), str(layers), "--batch-size",
                            str(args.batch_size)], capture_output=True, text=True, check=True)
        row = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['tokens']:>3} tokens, {layers:>2} layers: {row['active_features']:>6} features, "
              f"{row['seconds']:>7.1f} s, peak {row['peak_rss_mib']:>6} MiB (+{row['graph_rss_mib']} for the graph)")
    base = next((r for r in rows if r["tokens"] <= 16 and r["layers_covered"] == 30 and r["tokens"] >= 14), rows[0])
    for r in rows:
        r["time_ratio"] = round(r["seconds"] / base["seconds"], 2)
        r["graph_memory_ratio"] = round(r["graph_rss_mib"] / max(base["graph_rss_mib"], 1), 2)
    print(f"ratios against {base['tokens']} tokens, all layers:")
    for r in rows:
        print(f"  {r['tokens']:>3} tokens, {r['layers_covered']:>2} layers ({r['active_features']} features): "
              f"time x{r['time_ratio']}, graph memory x{r['graph_memory_ratio']}")
    date = dt.datetime.now(dt.timezone.utc)
    result = {
        "benchmark": "graphs", "title": "Attribution graphs (`saekit graph`) on SmolLM2-135M-Instruct",
        "command": "python3 benchmarks/graphs.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "platform": platform.platform(), "python": platform.python_version(), "device": "cpu"},
        "date": date.isoformat(timespec="seconds"), "loadavg_1m": load_start[0],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "transcoders": "ReLU, width 768, L1 0.1, fortunes corpus, every MLP (benchmarks/graphs.py train_config)",
        "batch_size": args.batch_size, "runs": rows,
    }
    out = ROOT / "benchmarks" / "results" / f"graphs_{date:%Y%m%dT%H%M}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
