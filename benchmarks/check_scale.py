"""A wide SAE's check with every latent's card: time per phase and peak memory.

    python benchmarks/check_scale.py                       # 576 -> 131,072 (TopK k=64), 4,096 tokens
    python benchmarks/check_scale.py --d-sae 16384 --tokens 1024

The issue's target is a lab's 131k-latent SAE over 10M tokens on a GPU node; no GPU is lent
here, so this runs the same ``saekit check`` (one process, every CPU) on this machine with an
SAE of that width: random weights (seeded; decoder rows unit-norm, encoder its transpose), so
the latents fire spread out like a wide SAE's, not like a trained one's, and the metrics mean
nothing. What it measures: that every phase runs at that width, how long each takes, the
check's peak resident memory (the child's ru_maxrss), and the size of the cards file. The
cards pass grows with the tokens; the eval phase holds SAEBench's weight metrics too, whose
max cosines grow with d_sae squared, not with the tokens; card assembly (examples,
histograms, the ``W_dec @ W_U`` logit effects, one card per latent) grows with the latents.
Results: benchmarks/results/check_scale_<date>.json
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

from check_load import RESULTS, load, machine  # this folder's benchmark helpers


def random_sae(folder: Path, d_sae: int, k: int, seed: int) -> str:
    import torch

    from saekit.kernels.sae import SAE
    from saekit.registry.artifact import save_artifact
    from saekit.schemas import SAEConfig

    d_in = 576  # SmolLM2-135M's residual width
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=1)
    cfg = SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k,
                    model_name="HuggingFaceTB/SmolLM2-135M-Instruct", hook_name="model.layers.6")
    sae = SAE(cfg, {"W_enc": W_dec.T.contiguous(), "b_enc": torch.zeros(d_sae), "W_dec": W_dec,
                    "b_dec": torch.zeros(d_in)})
    return save_artifact(sae, folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-sae", type=int, default=131072)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    stamp = datetime.now(timezone.utc)
    work = Path(tempfile.mkdtemp(prefix="saekit-scale-"))
    sha = random_sae(work / "sae", args.d_sae, args.k, args.seed)
    env = {**os.environ, "SAEKIT_QUIET": "1", "SAEKIT_HOME": str(work / "home")}
    cmd = [sys.executable, "-m", "saekit", "check", str(work / "sae"), "--tokens", str(args.tokens), "--no-log",
           "--out", str(work / "check")]
    load0 = load()
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    rec_path = work / "check" / "eval.json"
    if not rec_path.is_file():  # the gate may fail (random weights); a missing record may not
        raise SystemExit(f"check failed (exit {r.returncode}): {r.stderr[-2000:]}")
    rec = json.loads(rec_path.read_text())
    cards = work / "check" / "feature_cards.jsonl"
    n_cards = sum(1 for _ in cards.open("rb"))
    phases = {k: round(v, 2) for k, v in rec["timings"]["phases"].items()}
    result = {
        "date": stamp.isoformat(timespec="seconds"), "device": "cpu",
        "machine": machine(), "load_at_start": load0, "load_at_end": load(),
        "command": " ".join(["benchmarks/check_scale.py", *sys.argv[1:]]),
        "what": "saekit check, one process, every latent's card, of a random-weight TopK SAE on SmolLM2-135M "
                "layer 6 (576 -> d_sae). eval = the metric pass over the tokens plus SAEBench's weight metrics, "
                "whose max cosines among decoder rows and among encoder columns take 2 * d_sae^2 * d_in "
                "multiply-adds whatever the token count; cards_pass grows with the tokens; cards = assembly and "
                "16 exact ablations, grows with the latents",
        "sae": {"d_in": 576, "d_sae": args.d_sae, "k": args.k, "weights": f"random, seed {args.seed}",
                "sha256": sha},
        "tokens": rec["check_config"]["n_tokens"],
        "torch_threads": rec["check_config"]["torch_threads"],
        "exit_code": r.returncode,
        "wall_s": round(wall, 1),
        "phases_s": phases,
        "cards_ms_per_latent": round(phases["cards"] / args.d_sae * 1e3, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "n_cards": n_cards,
        "cards_file_mib": round(cards.stat().st_size / 2**20, 1),
    }
    path = args.out or RESULTS / f"check_scale_{stamp:%Y%m%dT%H%M}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
