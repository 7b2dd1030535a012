"""A small TopK transcoder set for all 30 MLPs of SmolLM2-135M: training time per layer and
for the set, the set check's time, peak memory; side by side in one run.

    python benchmarks/transcoders.py                       # width 1152, k 16, 8192 tokens, 200 steps
    python benchmarks/transcoders.py --layers 0,1 --steps 20 --check-tokens 256   # a quick look

Three child processes, each measuring its own peak RSS (ru_maxrss), run one after the other:
- ``forward``: one plain forward pass of the model's blocks (no LM head) over the training
  tokens (the floor any trainer pays to see the activations), and its peak memory;
- ``train``: saekit.harness.transcoder_train.train_layers on every layer (activations
  streamed block by block, no cache), the set written with registry.transcoder_set.save_set;
  per layer the seconds spent running its block and fitting its transcoder;
- ``check``: saekit.harness.transcoder_check.check_set on the trained set (cards included).
Ratios printed: streaming's activation time over the plain forward, the set's training time
over one layer's mean, peak memory of training over the forward's. Results JSON (device,
date) under benchmarks/results/transcoders_<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_forward(a: argparse.Namespace) -> dict:
    import torch

    from saekit.harness.model import load_lm
    from saekit.harness.text import token_set

    model, tok = load_lm()
    rss_model = _rss_mb()
    ts = token_set(tok, n_tokens=a.tokens, context_size=a.context, split="train", seed=0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, ts.tokens.shape[0], 16):
            model.model(ts.tokens[i : i + 16], use_cache=False)  # the blocks, no LM head: activations only
    return {"forward_s": time.perf_counter() - t0, "rss_after_model_mb": rss_model, "peak_rss_mb": _rss_mb()}


def child_train(a: argparse.Namespace) -> dict:
    from saekit.harness.model import DEFAULT_MODEL_ID, lm_info, load_lm
    from saekit.harness.transcoder_train import TCTrainConfig, train_layers
    from saekit.kernels.transcoder import Transcoder, TranscoderSet
    from saekit.registry.transcoder_set import save_set
    from saekit.schemas import SAEConfig

    load_lm()
    rss_model = _rss_mb()
    layers = None if a.layers == "all" else tuple(int(t) for t in a.layers.split(","))
    cfg = TCTrainConfig(width=a.width, k=a.k, n_tokens=a.tokens, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                        context_size=a.context, layers=layers)
    rows, tcs = [], {}
    t0 = last = time.perf_counter()
    for fit in train_layers(cfg):
        now = time.perf_counter()
        rows.append({"layer": fit.layer, "fit_s": fit.seconds, "activations_s": now - last - fit.seconds,
                     "train_fvu": fit.train_fvu, "n_tokens": fit.n_tokens})
        last = now
        tcs[fit.layer] = Transcoder(SAEConfig(architecture="topk_transcoder", d_in=576, d_sae=a.width, d_out=576,
                                              k=a.k, model_name=DEFAULT_MODEL_ID, model_revision=lm_info().revision,
                                              hook_name=f"model.layers.{fit.layer}.mlp"), fit.tensors)
    total = time.perf_counter() - t0
    t = time.perf_counter()
    save_set(TranscoderSet(tcs), Path(a.folder))
    size = sum(p.stat().st_size for p in Path(a.folder).rglob("*") if p.is_file())
    return {"layers": rows, "total_s": total, "save_s": time.perf_counter() - t, "set_bytes": size,
            "rss_after_model_mb": rss_model, "peak_rss_mb": _rss_mb()}


def child_check(a: argparse.Namespace) -> dict:
    from saekit.harness.model import load_lm
    from saekit.harness.transcoder_check import check_set
    from saekit.registry.transcoder_set import load_set

    load_lm()
    tset = load_set(Path(a.folder))
    t0 = time.perf_counter()
    res = check_set(tset, n_tokens=a.check_tokens, context_size=a.context, batch_size=4,
                    out_dir=Path(a.folder).parent / "check")
    total = time.perf_counter() - t0
    return {"total_s": total, "loadavg_end": os.getloadavg(),
            "phases": res.record.timings.phases, "n_tokens": res.record.data.n_tokens,
            "metrics": res.metrics, "per_layer_fvu": {str(i): res.layer_metrics(i)["fvu"] for i in res.layers},
            "peak_rss_mb": _rss_mb()}


def random_check(a: argparse.Namespace) -> None:
    """``--random-check``: the check phase alone, on a random TopK set of the same shapes (its
    cost does not depend on the weights), written as transcoders_check_<date>.json."""
    import torch

    from saekit.harness.model import DEFAULT_MODEL_ID
    from saekit.kernels.transcoder import Transcoder, TranscoderSet
    from saekit.registry.transcoder_set import save_set
    from saekit.schemas import SAEConfig

    g = torch.Generator().manual_seed(0)
    layers = range(30) if a.layers == "all" else [int(t) for t in a.layers.split(",")]
    tcs = {i: Transcoder(SAEConfig(architecture="topk_transcoder", d_in=576, d_sae=a.width, d_out=576, k=a.k,
                                   model_name=DEFAULT_MODEL_ID, hook_name=f"model.layers.{i}.mlp"),
                         {"W_enc": torch.randn(576, a.width, generator=g) / 24, "b_enc": torch.zeros(a.width),
                          "W_dec": torch.randn(a.width, 576, generator=g) / a.width**0.5 * 0.1,
                          "b_dec": torch.zeros(576)}) for i in layers}
    tmp = Path(tempfile.mkdtemp(prefix="saekit-tc-check-"))
    save_set(TranscoderSet(tcs), tmp / "set")
    a.folder = str(tmp / "set")
    load0 = os.getloadavg()
    res = child_check(a)
    res.pop("metrics")
    res.pop("per_layer_fvu")
    result = {"benchmark": "transcoders_check", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": "cpu", "torch_threads": torch.get_num_threads(), "loadavg_start": load0,
              "loadavg_end": os.getloadavg(),
              "config": {"layers": len(tcs), "width": a.width, "k": a.k, "check_tokens": a.check_tokens,
                         "context": a.context, "weights": "random"}, "check": res,
              "ratios": {"check_s_per_layer": res["total_s"] / len(tcs)}}
    from saekit.harness.record import _cpu_name

    result["cpu"] = _cpu_name()
    print(json.dumps(result, indent=2))
    path = RESULTS / f"transcoders_check_{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", default="all")
    p.add_argument("--width", type=int, default=1152)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--check-tokens", type=int, default=1024)
    p.add_argument("--child", choices=["forward", "train", "check"])
    p.add_argument("--folder")
    p.add_argument("--random-check", action="store_true", help="Only the check, on a random set of these shapes.")
    a = p.parse_args()
    if a.random_check:
        random_check(a)
        return
    if a.child:
        import torch

        torch.manual_seed(0)
        print(json.dumps({"forward": child_forward, "train": child_train, "check": child_check}[a.child](a)))
        return

    import torch

    tmp = Path(tempfile.mkdtemp(prefix="saekit-tc-bench-"))
    folder = tmp / "set"
    base = [sys.executable, __file__] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
                                         if k not in ("child", "folder", "random_check")] + [f"--folder={folder}"]
    env = {**os.environ, "SAEKIT_QUIET": "1", "SAEKIT_HOME": str(tmp / "home")}
    out = {}
    for phase in ("forward", "train", "check"):
        print(f"{phase} ...", flush=True)
        r = subprocess.run(base + [f"--child={phase}"], capture_output=True, text=True, env=env)
        if r.returncode:
            sys.exit(f"{phase} failed:\n{r.stderr[-3000:]}")
        out[phase] = json.loads(r.stdout.strip().splitlines()[-1])
    tr, fw, ck = out["train"], out["forward"], out["check"]
    n = len(tr["layers"])
    fit_mean = sum(r["fit_s"] for r in tr["layers"]) / n
    act_total = sum(r["activations_s"] for r in tr["layers"])
    ratios = {
        "streamed_activations_over_plain_forward": act_total / fw["forward_s"],
        "set_training_over_mean_layer_fit": tr["total_s"] / fit_mean,
        "train_peak_rss_over_forward_peak_rss": tr["peak_rss_mb"] / fw["peak_rss_mb"],
        "check_s_per_layer": ck["total_s"] / n,
    }
    result = {
        "benchmark": "transcoders",
        "loadavg_end": os.getloadavg(),  # 2 cores shared with other work: times scale with it
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "config": {k: v for k, v in vars(a).items() if k not in ("child", "folder", "random_check")},
        "forward": fw, "train": tr, "check": ck, "ratios": ratios,
    }
    from saekit.harness.record import _cpu_name

    result["cpu"] = _cpu_name() or result["cpu"]
    print(f"model: SmolLM2-135M-Instruct; {n} layers; width {a.width}, k {a.k}, {a.tokens} tokens, {a.steps} steps "
          f"of {a.batch_size}")
    print(f"plain forward over the training tokens: {fw['forward_s']:.1f} s, peak RSS {fw['peak_rss_mb']:.0f} MB")
    print(f"training, whole set: {tr['total_s']:.1f} s (activations {act_total:.1f} s, fits "
          f"{sum(r['fit_s'] for r in tr['layers']):.1f} s); per layer: fit {fit_mean:.2f} s mean, "
          f"activations {act_total / n:.2f} s mean; peak RSS {tr['peak_rss_mb']:.0f} MB; set on disk "
          f"{tr['set_bytes'] / 2**20:.1f} MiB")
    print(f"check of the set on {ck['n_tokens']} tokens: {ck['total_s']:.1f} s, peak RSS {ck['peak_rss_mb']:.0f} MB; "
          f"set fvu {ck['metrics']['fvu']:.4f}, ce_loss_score {ck['metrics']['ce_loss_score']:.4f}")
    for k, v in ratios.items():
        print(f"  {k}: {v:.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"transcoders_{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
