"""(b) of issue 24 on the docs example: does the graph predict what ablating its top features does?

    python3 benchmarks/graph_ablations.py                          # the docs prompt, 30 top features
    python3 benchmarks/graph_ablations.py --prompt "..." --top 50

SmolLM2-135M-Instruct with the docs' transcoder set (benchmarks/graphs.py train_config, every
MLP). Each of the ``--top`` most influential feature nodes is set to 0 in the replacement model
(saekit.circuits.interventions.ablate_top): frozen attention and norms, errors held, downstream
transcoders re-encoding. The change of the target logit is compared with the graph's direct
edge and with its sum over paths; Pearson correlations over the nodes, and the largest gap
between the frozen ablation and the direct edge (exact up to float error), the mean number of
other features that switched on or off per ablation (a diagnostic; "actual" re-encodes them
all) and each node's numbers go to benchmarks/results/graph_ablations_<date>.json with the
machine, the date and the set's training configuration.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
DOCS_PROMPT = "When Mary and John went to the store, John gave a drink to"


def main(argv: list[str] | None = None) -> int:
    from dataclasses import asdict

    from graphs import train_config

    from saekit.circuits.attribution import attribute
    from saekit.circuits.build import tokenize
    from saekit.circuits.interventions import ablate_top
    from saekit.circuits.replacement import ReplacementModel
    from saekit.harness.model import load_lm
    from saekit.harness.transcoder_train import ensure_transcoder_set
    from saekit.registry.transcoder_set import load_set

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", default=DOCS_PROMPT)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args(argv)
    model, tok = load_lm()
    cfg = train_config()
    tset = load_set(ensure_transcoder_set(cfg).folder)
    rm = ReplacementModel(model, tset)
    tokens = tokenize(tok, args.prompt)
    trace = rm.trace(tokens)
    graph = attribute(rm, tokens, trace=trace)
    target = tok.decode([int(graph.logit_tokens[0])])
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "platform": platform.platform(), "python": platform.python_version(), "device": "cpu"}
    date = dt.datetime.now(dt.timezone.utc)
    result = {
        "benchmark": "graph_ablations", "title": "Attribution graphs: ablations of the top features (SmolLM2-135M)",
        "command": "python3 benchmarks/graph_ablations.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine, "date": date.isoformat(timespec="seconds"), "loadavg_1m": round(os.getloadavg()[0], 2),
        "transcoders": asdict(cfg),
        "prompt": args.prompt, "target_token": target, "active_features": graph.n_features,
    }
    print(f"target logit {target!r}; top {args.top} features ablated one at a time")
    for by in ("influence", "direct"):
        d = ablate_top(rm, trace, graph, n=args.top, by=by).as_dict()
        print(f"  top by {by}: Pearson r of the actual change with the graph's path sum "
              f"{d['pearson_paths_vs_actual']:.4f}, with its direct edge {d['pearson_direct_vs_actual']:.4f}; "
              f"max |frozen ablation - direct edge| {d['max_abs_frozen_minus_direct']:.2e}; "
              f"{d['mean_switched']:.0f} other features switched on or off per ablation")
        result[f"top_by_{by}"] = {
            "ablated": d["n"], "pearson_paths_vs_actual": round(d["pearson_paths_vs_actual"], 4),
            "pearson_direct_vs_actual": round(d["pearson_direct_vs_actual"], 4),
            "max_abs_frozen_minus_direct": d["max_abs_frozen_minus_direct"],
            "mean_features_switched": round(d["mean_switched"], 1),
            "layers": sorted({x["layer"] for x in d["nodes"]}),
            "nodes": [{k: round(v, 5) if isinstance(v, float) else v for k, v in x.items()} for x in d["nodes"]],
        }
    out = ROOT / "benchmarks" / "results" / f"graph_ablations_{date:%Y%m%dT%H%M}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
