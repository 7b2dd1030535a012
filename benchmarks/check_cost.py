"""The whole check's cost against one plain forward+backward of the LM, before and after, in one run.

    python benchmarks/check_cost.py                       # the issue's reference case (below)
    python benchmarks/check_cost.py --before d1d4811      # "before" = that commit's code
    python benchmarks/check_cost.py --tokens 512 --repeats 1

The reference case (issue 22): a JumpReLU SAE on SmolLM2-135M's layer 3 (576 -> 1,536,
weights drawn by sae-lens' own class with a fixed seed), 2,048 tokens (16 windows of 128),
a card for every latent, the check's default exact ablations (16 latents, at most half the
windows: 8 here).

In one process, each repeat alternating: the plain forward+backward of the LM over the
check's own windows (weights frozen, the embedding output the leaf, so the backward runs
through every layer), then ``saekit check`` with the code of ``--before`` (a commit, checked
out into a temporary git worktree with its own editable install); then the plain pass again
and the check with this checkout's code. Each check's ratio is to the mean of the plain
passes run right before and right after it (the machine may be shared and its speed drift:
the load average is recorded beside each). A check's cost is the sum of its record's phases over the tokens (the pass(es),
weight metrics, exact ablations, cards): model loading and tokenizing are left out, as the
plain pass has them outside its timing too. Every run uses the same torch thread count.

The two checks' outputs are compared too: the cards byte for byte, and every record metric
(equal bits, or the relative difference). Where this checkout's defaults differ from the
before commit's (issue 22: ``--ablation-windows`` 1, 4 before; ``--downstream-latents`` at most half
the windows, 16 before), the first repeat also
runs this checkout's check with ``--same-settings`` (the old defaults) and compares that one's
outputs with before's: same settings, same outputs.
Results: benchmarks/results/check_cost_<date>.json (device, date, load average).
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
PASS_PHASES_SKIP = ("load_sae", "load_model", "tokenize")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def reference_sae(folder: Path) -> Path:
    """The reference JumpReLU SAE, written by sae-lens (fixed seed)."""
    import sae_lens as sl
    import torch
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(hook_name="model.layers.3", model_name="HuggingFaceTB/SmolLM2-135M-Instruct")
    sae = sl.JumpReLUSAE(sl.JumpReLUSAEConfig(d_in=576, d_sae=1536, dtype="float32", metadata=meta))
    g = torch.Generator().manual_seed(7)
    scale = {"W_enc": 576**-0.5, "W_dec": 576**-0.5, "b_enc": 0.5, "b_dec": 0.1}
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) * 2 + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * scale.get(name, 0.1))
    sae.save_model(folder)
    return folder


def before_python(commit: str, where: Path) -> str:
    """An interpreter importing saekit from ``commit``: a detached worktree + editable install."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), commit], check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(where / ".venv")], check=True)
    py = str(where / ".venv" / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "-e", str(where)], check=True, capture_output=True)
    return py


def plain_fwd_bwd(args) -> float:
    """Seconds of one forward+backward of the LM over the check's windows (weights frozen)."""
    import torch.nn.functional as F

    from saekit.harness.datasets import token_set
    from saekit.harness.model import load_lm

    model, tok = load_lm()
    ts = token_set(tok, n_tokens=args.tokens, context_size=args.context, seed=0, split="eval", prepend_bos=True,
                   model_id="HuggingFaceTB/SmolLM2-135M-Instruct")
    emb = model.get_input_embeddings()
    leaf = emb.register_forward_hook(lambda _m, _a, out: out.detach().requires_grad_(True))
    t = time.perf_counter()
    try:
        for i in range(0, ts.tokens.shape[0], args.batch_size):
            toks = ts.tokens[i : i + args.batch_size]
            logits = model(toks).logits
            F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), toks[:, 1:].reshape(-1),
                            reduction="sum").backward()
    finally:
        leaf.remove()
    return time.perf_counter() - t


def bracketed(args, check) -> dict:
    """``check()``'s result with its ratio to the plain pass, which runs right before and
    right after it: the ratio is to the mean of the two, so a machine whose speed drifts over
    the minutes (a shared one) biases neither side."""
    got = {"load_before": load(), "plain_fwd_bwd_s": [round(plain_fwd_bwd(args), 2)]}
    got.update(check())
    got["plain_fwd_bwd_s"].append(round(plain_fwd_bwd(args), 2))
    got["ratio"] = round(got["cost_s"] / statistics.mean(got["plain_fwd_bwd_s"]), 3)
    return got


def run_check(python: str, sae_dir: Path, out: Path, args, cwd: str, extra: tuple[str, ...] = ()) -> dict:
    cmd = [python, "-m", "saekit", "check", str(sae_dir), "--tokens", str(args.tokens), "--context",
           str(args.context), "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--out", str(out),
           "--no-log", "--json", *extra]
    env = {**os.environ, "SAEKIT_QUIET": "1", "SOURCE_DATE_EPOCH": "0"}
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=cwd)
    phases = json.loads((out / "eval.json").read_text())["timings"]["phases"]
    return {"phases_s": {k: round(v, 2) for k, v in phases.items()},
            "cost_s": round(sum(v for k, v in phases.items() if k not in PASS_PHASES_SKIP), 2)}


def compare(a: Path, b: Path) -> dict:
    """Cards byte for byte; record metrics bitwise, else their relative difference."""
    ra, rb = (json.loads((p / "eval.json").read_text()) for p in (a, b))
    diffs = {}
    for cat, ms in ra["eval_result_metrics"].items():
        for k, v in ms.items():
            w = rb["eval_result_metrics"].get(cat, {}).get(k)
            if v != w:
                diffs[k] = abs(v - w) / max(abs(v), 1e-30) if isinstance(w, (int, float)) else "missing"
    ua = (ra.get("eval_result_unstructured") or {}).get("feature_cards", {})
    ub = (rb.get("eval_result_unstructured") or {}).get("feature_cards", {})
    return {
        "cards_identical": (a / "feature_cards.jsonl").read_bytes() == (b / "feature_cards.jsonl").read_bytes(),
        "metrics_differing_rel": diffs,
        "details_identical": ra["eval_result_details"] == rb["eval_result_details"],
        "agreement_identical": ua == ub,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every run (the plain pass's too)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--before", default="main", help="git commit whose code is 'before' (default: main)")
    ap.add_argument("--before-python", default=None, help="an interpreter importing the 'before' saekit instead")
    ap.add_argument("--sae", type=Path, default=None, help="SAE folder (default: the reference JumpReLU SAE)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--same-settings", default="--ablation-windows 4 --downstream-latents 16",
                    help="options that give this checkout's check the 'before' commit's defaults: with them it runs "
                         "once more (first repeat) and its outputs are compared with before's ('' to skip)")
    args = ap.parse_args()

    import torch

    from saekit.harness.record import _cpu_name

    torch.set_num_threads(args.threads)  # the plain pass's; the checks get --threads
    tmp = Path(tempfile.mkdtemp(prefix="check_cost_"))
    sae_dir = args.sae or reference_sae(tmp / "sae")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", args.before], check=True, capture_output=True,
                            text=True).stdout.strip()
    worktree = None
    if args.before_python:
        py_before = args.before_python
    else:
        worktree = tmp / "before"
        py_before = before_python(commit, worktree)
    runs = []
    try:
        for rep in range(args.repeats):
            row = {}
            for name, py in (("before", py_before), ("after", sys.executable)):
                row[name] = bracketed(args, lambda: run_check(py, sae_dir, tmp / f"{name}{rep}", args, "/"))
            row["load_after"] = load()
            row["outputs"] = compare(tmp / f"before{rep}", tmp / f"after{rep}")
            if rep == 0 and args.same_settings.strip():
                same = tmp / "after_same_settings"
                row["after_same_settings"] = {"options": args.same_settings, **bracketed(
                    args, lambda: run_check(sys.executable, sae_dir, same, args, "/", tuple(args.same_settings.split())))}
                row["outputs_same_settings"] = compare(tmp / f"before{rep}", same)
            runs.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if worktree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], capture_output=True)
    med = lambda name: statistics.median(r[name]["ratio"] for r in runs)  # noqa: E731
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": "cpu",
        "machine": {"cpu": _cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "command": "benchmarks/check_cost.py " + " ".join(sys.argv[1:]),
        "what": "the whole check (every phase over the tokens: passes, weight metrics, exact ablations, card "
                "assembly) / one plain forward+backward of the LM over the same windows (weights frozen; the mean "
                "of the passes right before and right after the check), same threads, alternating in one run; "
                "before = the code of commit 'before_commit'",
        "sae": "JumpReLU 576 -> 1536 at model.layers.3 (sae-lens class, seed 7)" if args.sae is None else str(args.sae),
        "tokens": args.tokens, "context": args.context, "batch_size": args.batch_size, "torch_threads": args.threads,
        "before_commit": commit,
        "runs": runs,
        "median_ratio": {"before": med("before"), "after": med("after")},
        "goal": "after ratio <= 2.5",
    }
    out = args.out or RESULTS / f"check_cost_{datetime.now(timezone.utc):%Y%m%dT%H%M}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["median_ratio"]), "->", out)


if __name__ == "__main__":
    main()
