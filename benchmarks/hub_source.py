"""Registering from the Hub, measured on the loopback Hub (real huggingface_hub client).

Seeds a Gemma Scope-layout repo (layer_N/width_16k/average_l0_L/params.npz, real width,
small d_in), registers it by glob, re-runs the glob (resume: nothing new), loads each
version by name and compares encode with Gemma Scope's JumpReLU formula; times an
unreachable endpoint's one-line failure.

    python benchmarks/hub_source.py [--layers 4] [--d-in 64] [--out benchmarks/results/hub_source.json]
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
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-in", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    width = 16 * 1024
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.update(SAEKIT_HOME=str(tmp / "home"), SAEKIT_QUIET="1", HF_HUB_DISABLE_XET="1",
                          HF_HUB_CACHE=str(tmp / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
        import numpy as np
        import torch
        from huggingface_hub import HfApi

        import saekit
        from saekit.testing.loopback_hub import serve

        server = serve(tmp / "hub")
        os.environ["HF_ENDPOINT"] = server.url
        params = {}
        for layer in range(args.layers):
            rng = np.random.default_rng(layer)
            p = {"W_enc": rng.standard_normal((args.d_in, width)).astype(np.float32),
                 "W_dec": rng.standard_normal((width, args.d_in)).astype(np.float32),
                 "b_enc": (rng.standard_normal(width) * 0.1).astype(np.float32),
                 "b_dec": (rng.standard_normal(args.d_in) * 0.1).astype(np.float32),
                 "threshold": (rng.random(width) * 2).astype(np.float32)}
            d = tmp / "gs" / f"layer_{layer}" / "width_16k" / f"average_l0_{10 + layer}"
            d.mkdir(parents=True)
            np.savez(d / "params.npz", **p)
            params[layer] = p
        api = HfApi(endpoint=server.url, token="hf_x")
        api.create_repo("google/gemma-scope-2b-pt-res")
        api.upload_folder(repo_id="google/gemma-scope-2b-pt-res", folder_path=str(tmp / "gs"))
        ref = "hf://google/gemma-scope-2b-pt-res/layer_*/width_16k/*"

        t = time.perf_counter()
        versions = saekit.register("gs", ref)
        t_register = time.perf_counter() - t
        t = time.perf_counter()
        again = saekit.register("gs", ref)
        t_resume = time.perf_counter() - t
        x = torch.randn(512, args.d_in, generator=torch.Generator().manual_seed(0))
        diffs = []
        for v, layer in zip(versions, range(args.layers)):
            sae = saekit.load(f"gs/{v.version}")
            p = {k: torch.from_numpy(a) for k, a in params[layer].items()}
            pre = x @ p["W_enc"] + p["b_enc"]
            want = (pre > p["threshold"]) * torch.relu(pre)
            diffs.append(float((sae.encode_dense(x) - want).abs().max()))
        server.stop()

        env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}
        t = time.perf_counter()
        dead = subprocess.run([sys.executable, "-m", "saekit", "register", "hf://org/repo/sae", "--name", "x"],
                              capture_output=True, text=True, env=env)
        t_dead = time.perf_counter() - t
    result = {
        "benchmark": "hub_source", "title": "Registering SAEs from the Hub (glob over a loopback Hub)",
        "command": "python3 benchmarks/hub_source.py", "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, {platform.system()}", "date": time.strftime("%Y-%m-%d"),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "saes": args.layers, "d_in": args.d_in, "d_sae": width,
        "register_glob_s": round(t_register, 2), "per_sae_s": round(t_register / args.layers, 2),
        "rerun_glob_s": round(t_resume, 2), "rerun_versions": [v.version for v in again],
        "versions": [v.version for v in versions], "max_abs_encode_diff_vs_formula": max(diffs),
        "unreachable_endpoint": {"exit": dead.returncode, "stderr": dead.stderr.strip(),
                                 "seconds_incl_python_start": round(t_dead, 2)},
        "cpu_threads": torch.get_num_threads(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
