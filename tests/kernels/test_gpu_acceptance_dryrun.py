"""benchmarks/gpu_acceptance.py --dry-run: every stage of the GPU acceptance run at tiny shapes
under Triton's interpreter, in a subprocess, so CI proves the script works without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_acceptance_dry_run(tmp_path: Path):
    pytest.importorskip("triton")
    out = tmp_path / "gpu_acceptance.json"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SAEKIT_KERNELS")}
    env.update(SAEKIT_HOME=str(tmp_path / "home"), SAEKIT_QUIET="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_acceptance.py"), "--dry-run", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    assert proc.stdout.splitlines()[0].startswith("device: "), "the device is printed first"
    r = json.loads(out.read_text())
    assert r["kind"] == "saekit.gpu_acceptance" and r["dry_run"] is True and r["ok"] is True, log
    st = r["stages"]
    assert set(st) == {"tests", "bench", "check", "determinism"}
    assert all(s["ok"] for s in st.values()), {k: s.get("error") for k, s in st.items()}

    # tests: the gpu-marked kernel tests collect and skip cleanly without CUDA
    t = st["tests"]
    assert t["failures"] == 0 and t["errors"] == 0 and t["tests"] >= 10

    # determinism: every EvalStats field identical bit for bit, on the Triton path
    d = st["determinism"]
    assert d["backend"] == "triton" and all(d["identical"].values()) and len(d["identical"]) == 10
    assert d["sse_hex"][0] == d["sse_hex"][1]

    # check: every metric of the CPU record against the Triton path's, within tolerance
    c = st["check"]
    names = {m["metric"] for m in c["metrics"]}
    assert {"explained_variance", "mse", "cossim", "l0", "l1", "dead_fraction", "total_tokens_evaluated"} <= names
    assert all(m["ok"] for m in c["metrics"]) and c["differing"] == []
    assert c["device_kernels"] == "triton"

    # bench: saekit's methods ran beside the reference, the GEMM and the peers
    (row,) = st["bench"]["shapes"]
    assert row["backend"] == "triton" and row["candidate_buffer_mb"] > 0
    for method in ("gemm", "saekit.encode", "saekit.enc+dec", "saekit.eval", "reference.eval", "torch.enc+dec"):
        assert row["methods"][method]["ms"] > 0, method
    assert row["methods"]["saekit.eval"]["fire_counts_exact"] is True
    assert row["methods"]["saekit.encode"]["index_overlap"] == 1.0

    # goals: listed with their values, not judged in a dry run; GPU numbers owed
    assert [g["goal"] for g in r["goals"]] == [
        "eval_speedup", "eval_peak_mem_ratio", "encode_pct_of_gemm", "encdec_over_saelens", "encdec_over_sparsify"]
    assert all(g["pass"] is None for g in r["goals"])
    assert r["owed"] and r["goals_ok"] is None
