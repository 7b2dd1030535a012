"""Registry load speed and registry write load, side by side in one run.

    python benchmarks/load.py                 # load speed: saekit.load vs sae_lens.SAE.load_from_disk
    python benchmarks/load.py --registry-load # 8 processes x 25 registrations on the embedded SQLite

Load speed: a 576x4608 TopK SAE (k=32, fp32; SmolLM2-135M's width, 8x expansion) is
registered in a fresh embedded registry and pulled into the cache once. Then each
measurement is a new Python process that goes from nothing to a usable SAE object
(imports included) and encodes one token: ``saekit.load("bench@sha256:...")`` (pinned, cached:
no registry contact, sha256 verified) against ``sae_lens.SAE.load_from_disk`` on the
same folder. The two alternate, ``--repeats`` times each; medians and the ratio are printed
and saved under benchmarks/results/load_<date>.json. Also times ``python -c "import saekit"``.
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

SAEKIT_CHILD = """
import time, json
t0 = time.perf_counter()
import torch
tt = time.perf_counter()
import saekit, saekit.registry.store, saekit.kernels
t1 = time.perf_counter()
sae = saekit.load({ref!r})
t2 = time.perf_counter()
import torch
sae.encode(torch.zeros(1, sae.cfg.d_in))
t3 = time.perf_counter()
print(json.dumps({{"torch": tt - t0, "import": t1 - tt, "load": t2 - t1, "total": t2 - t0, "first_encode": t3 - t2}}))
"""

SAELENS_CHILD = """
import time, json, warnings
warnings.filterwarnings("ignore")
t0 = time.perf_counter()
import torch
tt = time.perf_counter()
from sae_lens import SAE
t1 = time.perf_counter()
sae = SAE.load_from_disk({folder!r})
t2 = time.perf_counter()
import torch
sae.encode(torch.zeros(1, sae.cfg.d_in))
t3 = time.perf_counter()
print(json.dumps({{"torch": tt - t0, "import": t1 - tt, "load": t2 - t1, "total": t2 - t0, "first_encode": t3 - t2}}))
"""


def _child(code: str, env: dict[str, str]) -> dict[str, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"child failed: {r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["process_wall"] = wall
    return out


def _median(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rows), 4) for k in rows[0]}


def _environment() -> dict[str, str]:
    import torch

    try:
        import sae_lens

        lens = sae_lens.__version__
    except Exception:  # noqa: BLE001
        lens = "not installed"
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cores": str(os.cpu_count()),
        "loadavg_1m": f"{os.getloadavg()[0]:.2f}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sae_lens": lens,
    }


def bench_load(repeats: int) -> dict:
    import torch

    from saekit.kernels import SAE
    from saekit.schemas import SAEConfig

    home = Path(tempfile.mkdtemp(prefix="saekit-bench-"))
    env = {**os.environ, "SAEKIT_HOME": str(home), "SAEKIT_QUIET": "1"}
    env.pop("SAEKIT_REGISTRY_URI", None)
    os.environ.update({"SAEKIT_HOME": str(home)})
    os.environ.pop("SAEKIT_REGISTRY_URI", None)
    import saekit
    from saekit.registry import store

    g = torch.Generator().manual_seed(0)
    d_in, d_sae, k = 576, 4608, 32
    cfg = SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k,
                    model_name="HuggingFaceTB/SmolLM2-135M-Instruct", hook_name="model.layers.6")
    W = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    sae = SAE(cfg, {"W_enc": W, "b_enc": torch.zeros(d_sae), "W_dec": W.T.contiguous(), "b_dec": torch.zeros(d_in)})
    info = saekit.register("bench", sae)
    folder = store.fetch(f"bench/{info.version}")  # the cached, verified canonical folder
    ref = f"bench@sha256:{info.sha256[:16]}"  # pinned by content: no registry contact (NAME/VERSION asks it)

    rows_saekit, rows_lens, rows_import = [], [], []
    _child(SAEKIT_CHILD.format(ref=ref), env)  # warm the OS page cache for both
    _child(SAELENS_CHILD.format(folder=str(folder)), env)
    for _ in range(repeats):
        rows_saekit.append(_child(SAEKIT_CHILD.format(ref=ref), env))
        rows_lens.append(_child(SAELENS_CHILD.format(folder=str(folder)), env))
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import saekit"], env=env, check=True, cwd=ROOT)
        rows_import.append({"import_saekit_process": time.perf_counter() - t0})
    a, b = _median(rows_saekit), _median(rows_lens)
    result = {
        "benchmark": "load",
        "sae": {"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": k, "dtype": "float32",
                "weights_bytes": (folder / "sae_weights.safetensors").stat().st_size},
        "reference": f"{ref} (pinned, cached, sha256 verified; no registry contact)",
        "repeats": repeats,
        "saekit_load": a,
        "sae_lens_load_from_disk": b,
        "ratio_total_sae_lens_over_saekit": round(b["total"] / a["total"], 2),
        "ratio_load_only_sae_lens_over_saekit": round(b["load"] / a["load"], 2),
        "python_c_import_saekit_s": _median(rows_import)["import_saekit_process"],
        "environment": _environment(),
    }
    print(f"576x4608 TopK, pinned cached ref, new process each ({repeats} repeats, medians):")
    print(f"  {'seconds':26}{'torch':>9}{'library':>9}{'load':>9}{'total':>9}{'process':>9}")
    for label, r in (("saekit.load", a), ("sae_lens load_from_disk", b)):
        print(f"  {label:26}{r['torch']:9.3f}{r['import']:9.3f}{r['load']:9.3f}{r['total']:9.3f}"
              f"{r['process_wall']:9.3f}")
    print(f"  ratio sae-lens/saekit: total {result['ratio_total_sae_lens_over_saekit']}x, "
          f"load only {result['ratio_load_only_sae_lens_over_saekit']}x")
    print(f"  python -c 'import saekit': {result['python_c_import_saekit_s']:.3f} s (process wall)")
    return result


REG_WORKER = """
import json, sys, time
from pathlib import Path
import saekit
folders, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
ok, errors, t0 = [], [], time.time()
for folder in folders:
    try:
        info = saekit.register("load", folder)
        ok.append([info.version, info.sha256])
    except Exception as e:
        errors.append(f"{type(e).__name__}: {str(e)[:200]}")
out.write_text(json.dumps({"ok": ok, "errors": errors, "seconds": time.time() - t0}))
"""


def bench_registry_load(procs: int, per_proc: int) -> dict:
    """procs processes x per_proc registrations against SAEKIT_REGISTRY_URI (default: embedded SQLite)."""
    sys.path.insert(0, str(ROOT))
    from tests.registry.conftest import make_artifact

    home = Path(tempfile.mkdtemp(prefix="saekit-regload-"))
    env = {**os.environ, "SAEKIT_HOME": str(home), "SAEKIT_QUIET": "1"}
    os.environ["SAEKIT_HOME"] = str(home)
    uri = os.environ.get("SAEKIT_REGISTRY_URI")
    from saekit.registry import store
    from saekit.schemas.masking import mask

    store.list_versions()  # create the registry before the writers race to
    jobs = []
    for p in range(procs):
        folders = [str(make_artifact(home / "src" / f"{p}-{i}", seed=p * 1000 + i)) for i in range(per_proc)]
        (home / f"in{p}.json").write_text(json.dumps(folders))
        jobs.append((home / f"in{p}.json", home / f"out{p}.json"))
    script = home / "worker.py"
    script.write_text(REG_WORKER)
    t0 = time.time()
    running = [subprocess.Popen([sys.executable, str(script), str(i), str(o)], env=env) for i, o in jobs]
    for r in running:
        r.wait()
    wall = time.time() - t0
    outs = [json.loads(o.read_text()) for _, o in jobs]
    ok = [tuple(v) for o in outs for v in o["ok"]]
    errors = [e for o in outs for e in o["errors"]]
    listed = store.list_versions("load") if ok else []
    result = {
        "benchmark": "registry_load",
        "registry": mask(uri) if uri else "embedded SQLite (default)",
        "processes": procs,
        "per_process": per_proc,
        "wall_s": round(wall, 1),
        "registered": len(ok),
        "failed": len(errors),
        "distinct_versions": len({v for v, _ in ok}),
        "ready_versions_listed": len(listed),
        "versions_per_s": round(len(ok) / wall, 2),
        "error_examples": sorted(set(e[:160] for e in errors))[:5],
        "environment": _environment(),
    }
    print(json.dumps(result, indent=2))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--registry-load", action="store_true", help="measure concurrent registration instead")
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--per-proc", type=int, default=25)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    if args.registry_load:
        result = bench_registry_load(args.procs, args.per_proc)
        kind = "registry_" + ("server" if os.environ.get("SAEKIT_REGISTRY_URI") else "sqlite")
    else:
        result = bench_load(args.repeats)
        kind = "speed"
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"load_{kind}_{datetime.now(timezone.utc):%Y%m%d}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"saved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
