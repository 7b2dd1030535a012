"""Time and peak memory of ``saekit graph`` on SmolLM2-135M-Instruct, and how both grow with the
prompt's length and with the number of active features.

    python3 benchmarks/graphs.py                     # lengths 4 8 16 24 (all layers), layers 10 20 30 at 16 tokens
    python3 benchmarks/graphs.py --lengths 8 16 --layers 30
    python3 benchmarks/graphs.py --bounded 64 128 --max-feature-nodes 512   # only these, with the bound

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

``--bounded`` measures prompts whose dense graph is refused (or huge) with ``max_feature_nodes``
(circuit-tracer's bound: rows for the logits and the N features of most estimated influence
only). Each row records the dense graph's size and whether attribute() refuses it, from the
same check attribute() runs; results go to graphs_bounded_<date>.json.
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
                "and the capital of Spain is Madrid, while the capital of Japan is Tokyo. Travellers who visit these "
                "cities often start in the old town, walk along the river, and stop at a small cafe for coffee and "
                "bread before the museums open. In the afternoon they take a train to the next country, where the "
                "language, the money and the food change, but the long walks and the late dinners stay the same. "
                "After two weeks on the road, most of them agree that the city they liked best was the one they "
                "had planned to skip, and that the next trip should start there. When they come home, they tell "
                "their friends that the best meal of the whole journey was in").split(" ")


def train_config():
    from saekit.harness.transcoder_train import TCTrainConfig

    # ReLU (continuous) transcoders on everyday English: ablating a feature then moves the
    # downstream codes as the graph's linear paths predict (benchmarks/graph_ablations.py);
    # the former TopK set (pydoc, 4,096 tokens, 120 steps) reached r = 0.2-0.6
    return TCTrainConfig(width=768, n_tokens=32768, steps=400, batch_size=512, corpus="fortunes", activation="relu",
                         l1_coeff=0.1)


def prompt_of(tok, n_tokens: int) -> str:
    """The longest prefix of PROMPT_WORDS with at most n_tokens tokens (BOS included); the words
    after the first sentence only serve the long prompts of --bounded."""
    best = PROMPT_WORDS[0]
    for i in range(1, len(PROMPT_WORDS) + 1):
        text = " ".join(PROMPT_WORDS[:i])
        if len(tok(text, add_special_tokens=False)["input_ids"]) + 1 <= n_tokens:
            best = text
    return best


def dense_check(res) -> dict:
    """What the dense graph of the same prompt would hold, and whether attribute() refuses it."""
    from saekit.circuits.attribution import check_size
    from saekit.schemas import InputError

    g = res.graph
    n_active, n_other = g.info["active_features"], g.adjacency.shape[0] - g.n_features - g.n_logits
    n = n_active + n_other + g.n_logits
    try:
        check_size(n_active, n_active, n_other, g.n_logits)
        refused = None
    except InputError as err:
        refused = str(err)
    return {"dense_nodes": n, "dense_adjacency_gib": round(n * n * 4 / 2**30, 2), "dense_refused": refused}


def one(n_tokens: int, n_layers: int, batch_size: int, max_feature_nodes: int | None = None) -> dict:
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
        res = build_graph(prompt, tset, model, tok, out=Path(out) / "g", batch_size=batch_size,
                          max_feature_nodes=max_feature_nodes)
        wall = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (Path(out) / "g").iterdir())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    bound = {"max_feature_nodes": max_feature_nodes, "feature_nodes": res.graph.n_features, **dense_check(res)} \
        if max_feature_nodes else {}
    return {"tokens": len(res.prompt_tokens), "layers_covered": n_layers, "prompt": prompt,
            "active_features": res.graph.info["active_features"], **bound,
            "nodes": int(res.graph.adjacency.shape[0]),
            "kept_features": res.meta["counts"]["kept_features"], "seconds": round(wall, 2),
            **{f"{k}_s": round(v, 2) for k, v in res.meta["timings_s"].items()},
            "peak_rss_mib": round(peak), "graph_rss_mib": round(peak - before), "files_mib": round(size / 2**20, 1),
            "replacement_score": round(res.replacement_score, 4), "completeness_score": round(res.completeness_score, 4),
            "torch_threads": torch.get_num_threads()}


def child(n_tokens: int, n_layers: int, batch_size: int, max_feature_nodes: int | None = None) -> dict:
    """One configuration in a fresh process: its row."""
    bound = ["--max-feature-nodes", str(max_feature_nodes)] if max_feature_nodes else []
    r = subprocess.run([sys.executable, __file__, "--one", str(n_tokens), str(n_layers), "--batch-size",
                        str(batch_size), *bound], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def record(argv: list[str] | None, load_start: list[float], **fields) -> dict:
    date = dt.datetime.now(dt.timezone.utc)
    return {
        **{k: fields.pop(k) for k in ("benchmark", "title")},
        "command": "python3 benchmarks/graphs.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "platform": platform.platform(), "python": platform.python_version(), "device": "cpu"},
        "date": date.isoformat(timespec="seconds"), "loadavg_1m": load_start[0],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "transcoders": "ReLU, width 768, L1 0.1, fortunes corpus, every MLP (benchmarks/graphs.py train_config)",
        **fields,
    }


def save(result: dict, stem: str) -> None:
    out = ROOT / "benchmarks" / "results" / f"{stem}_{dt.datetime.fromisoformat(result['date']):%Y%m%dT%H%M}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def sweep(args, argv: list[str] | None) -> None:
    """Every active feature a node: prompt lengths over every layer, then covered layers."""
    configs = [(n, 30) for n in args.lengths] + [(16, layers) for layers in args.layers if layers != 30]
    load_start = [round(x, 2) for x in os.getloadavg()]
    rows = []
    for n, layers in configs:
        row = child(n, layers, args.batch_size)
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
    save(record(argv, load_start, benchmark="graphs",
                title="Attribution graphs (`saekit graph`) on SmolLM2-135M-Instruct",
                batch_size=args.batch_size, runs=rows), "graphs")


def bounded(args, argv: list[str] | None) -> None:
    """Long prompts with max_feature_nodes: time, peak memory, and the dense graph's size."""
    load_start = [round(x, 2) for x in os.getloadavg()]
    rows = []
    for n in args.bounded:
        row = child(n, 30, args.batch_size, args.max_feature_nodes)
        rows.append(row)
        print(f"{row['tokens']:>3} tokens: {row['feature_nodes']} of {row['active_features']} features, "
              f"{row['seconds']:>7.1f} s, peak {row['peak_rss_mib']:>6} MiB (+{row['graph_rss_mib']} for the graph); "
              f"dense {row['dense_nodes']}^2 = {row['dense_adjacency_gib']} GiB"
              + (", refused" if row["dense_refused"] else ""))
    save(record(argv, load_start, benchmark="graphs_bounded",
                title="Attribution graphs of long prompts with `--max-feature-nodes` on SmolLM2-135M-Instruct",
                batch_size=args.batch_size, max_feature_nodes=args.max_feature_nodes, runs=rows), "graphs_bounded")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[4, 8, 16, 24])
    ap.add_argument("--layers", type=int, nargs="+", default=[10, 20, 30])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--bounded", type=int, nargs="+", help="only these prompt lengths, with --max-feature-nodes")
    ap.add_argument("--max-feature-nodes", type=int, default=512)
    ap.add_argument("--one", type=int, nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        bound = args.max_feature_nodes if "--max-feature-nodes" in (argv or sys.argv) else None
        print(json.dumps(one(args.one[0], args.one[1], args.batch_size, bound)))
        return 0

    from saekit.harness.transcoder_train import ensure_transcoder_set

    ensure_transcoder_set(train_config())  # trained (once) before anything is timed
    if args.bounded:
        bounded(args, argv)
    else:
        sweep(args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
