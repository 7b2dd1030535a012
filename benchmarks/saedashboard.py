"""Feature data for every latent: saekit's cards against SAEDashboard's, same SAE, same tokens.

    python benchmarks/saedashboard.py --tokens 2048 --sd-python /tmp/sdenv/bin/python

SAEDashboard (sae-dashboard 0.8.0) pins TransformerLens 2.x and transformers < 4.57, which
clash with saekit's, so it runs in an environment of its own:

    python3 -m venv /tmp/sdenv && /tmp/sdenv/bin/pip install torch==2.13.0 \\
        sae-dashboard==0.8.0 "numpy>=2,<2.3"

Both run as child processes, one after the other in this run, on the demo SAE (576 -> 4608,
TopK k=32, from the cache: run ``saekit demo`` first), the same token windows (saekit's
check token set, written to a safetensors file), every latent, the same torch threads.

- saekit: the cards pass (one spliced forward + one backward per batch: stats, histogram,
  top-k and quantile samples, attribution for every latent) and the assembly of every
  latent's card (examples, logit effects); exact ablation is not run (SAEDashboard's
  ablation experiments are off too).
- SAEDashboard: ``SaeVisRunner.run`` (feature tables, activation and logit histograms, logit
  tables, top and quantile sequences) on a HookedSAETransformer built from the same checkpoint
  (benchmarks/saedashboard_child.py, which checks its logits against transformers').

Time is the work itself (model and SAE loading excluded, reported apart); memory is each
child's peak resident set. Results: benchmarks/results/saedashboard_<date>.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from check_load import get_sae, load, machine  # noqa: E402

LAYER = 6


def saekit_child(tokens_path: str, out: str, threads: int) -> None:
    """saekit's cards for every latent over the given windows (run in a child process)."""
    import torch
    from safetensors.torch import load_file

    from saekit.harness.cards import build_cards
    from saekit.schemas.benchmark import DEFAULT_NEGATIVE_EXAMPLES
    from saekit.harness.sweep import sweep
    from saekit.harness.model import load_lm
    from saekit.harness.text import special_token_ids, token_set
    from saekit.schemas import SAERef

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model, tok = load_lm()
    sae, _ = get_sae()
    ids = load_file(tokens_path)["tokens"].long()
    ts = token_set(tok, n_tokens=int(ids.numel()), context_size=ids.shape[1], seed=0)  # with its documents
    if not torch.equal(ts.tokens, ids):
        raise SystemExit("the token set differs from the one given to SAEDashboard")
    special = torch.tensor(special_token_ids(tok))
    t_load = time.perf_counter() - t0
    t = time.perf_counter()
    st = sweep(sae, model, ts, hook_name=f"model.layers.{LAYER}", batch_size=4, special=special, metrics=False,
               negatives=DEFAULT_NEGATIVE_EXAMPLES).stats
    cards = build_cards(sae, model, tok, st, ts, sae_ref=SAERef(name="bench"), hook_name=f"model.layers.{LAYER}",
                        latents=list(range(sae.cfg.d_sae)), batch_size=4)
    t_run = time.perf_counter() - t
    Path(out).write_text(json.dumps({
        "load_s": round(t_load, 2), "run_s": round(t_run, 2), "features": len(cards), "tokens": int(ids.numel()),
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--sd-python", default="/tmp/sdenv/bin/python", help="Python of SAEDashboard's environment.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--saekit-child", nargs=2, metavar=("TOKENS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.saekit_child:
        return saekit_child(*args.saekit_child, args.threads)

    from safetensors.torch import save_file

    from saekit.harness.model import load_lm
    from saekit.harness.text import token_set

    sae, sae_desc = get_sae()
    if not sae_desc.startswith("demo SAE"):
        raise SystemExit("no cached demo SAE: run `saekit demo` first")
    model, tok = load_lm()
    ts = token_set(tok, n_tokens=args.tokens, context_size=128, seed=0)
    tmp = Path(tempfile.mkdtemp())
    save_file({"tokens": ts.tokens.contiguous()}, str(tmp / "tokens.safetensors"))
    model_dir = Path(model.name_or_path)
    sae_dir = str(next((Path(os.environ.get("SAEKIT_CACHE_DIR") or Path.home() / ".cache" / "saekit")
                        / "saes").glob("smollm2-res-l6-topk-demo-*")))  # the folder get_sae loaded
    del model

    env = {**os.environ, "SAEKIT_QUIET": "1", "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    rows = {}
    for name, cmd in (
        ("saekit", [sys.executable, __file__, "--threads", str(args.threads), "--saekit-child",
                    str(tmp / "tokens.safetensors"), str(tmp / "saekit.json")]),
        ("saedashboard", [args.sd_python, str(HERE / "saedashboard_child.py"), str(model_dir), sae_dir,
                          str(tmp / "tokens.safetensors"), str(LAYER), str(tmp / "saedashboard.json"), str(args.threads)]),
    ):
        l0 = load()
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise SystemExit(f"{name} failed:\n{r.stderr[-3000:]}")
        rows[name] = {**json.loads((tmp / f"{name}.json").read_text()), "wall_s": round(time.perf_counter() - t, 2),
                      "load_before": l0, "load_after": load()}
        print(name, json.dumps(rows[name]), flush=True)
    ratio = {"time": round(rows["saedashboard"]["run_s"] / rows["saekit"]["run_s"], 2),
             "peak_memory": round(rows["saedashboard"]["peak_rss_mib"] / rows["saekit"]["peak_rss_mib"], 2)}
    print(f"SAEDashboard / saekit: time {ratio['time']}x, peak memory {ratio['peak_memory']}x")
    now = datetime.now(timezone.utc)
    result = {
        "date": now.isoformat(timespec="seconds"), "device": "cpu", "machine": machine(),
        "command": "benchmarks/saedashboard.py " + " ".join(sys.argv[1:]),
        "what": "feature data for every latent of the demo SAE over the same windows: saekit cards (pass with "
                "attribution + assembly) vs SAEDashboard SaeVisRunner.run, each in its own process",
        "load_at_start": rows["saekit"]["load_before"], "load_at_end": rows["saedashboard"]["load_after"],
        "sae": sae_desc, "tokens": int(ts.tokens.numel()), "runs": rows,
        "ratio_saedashboard_over_saekit": ratio,
    }
    out = HERE / "results" / f"saedashboard_{now:%Y%m%dT%H%M}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
