"""Helpers of the adversarial tests: run the real ``saekit`` CLI in a child process and
measure what it did (exit code, stderr lines, peak RSS, time).
(A uniquely named module: tests/*/conftest.py files all import as ``conftest``.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Run one command in a grandchild and report its own peak RSS: RUSAGE_CHILDREN of a fresh
# wrapper process covers exactly that one child.
_WRAPPER = r"""
import json, resource, subprocess, sys, time
t = time.monotonic()
p = subprocess.run(sys.argv[2:], capture_output=True, timeout=float(sys.argv[1]))
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stdout.write(json.dumps({"rc": p.returncode, "out": p.stdout.decode("utf-8", "replace"),
                             "err": p.stderr.decode("utf-8", "replace"), "maxrss_kib": ru.ru_maxrss,
                             "seconds": time.monotonic() - t}))
"""

SECRET = "hunter2-Sup3rSecret"
TOKEN = "hf_SecretTokenAbcdef123456"


@dataclass
class Result:
    rc: int
    out: str
    err: str
    peak_mib: float
    seconds: float

    def one_line_error(self, code: int) -> str:
        """Assert exit ``code``, exactly one stderr line starting 'error:', no traceback; the line."""
        assert self.rc == code, f"exit {self.rc}, expected {code}; stderr: {self.err[-2000:]}"
        lines = self.err.strip("\n").split("\n")
        assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{self.err[-3000:]}"
        assert lines[0].startswith("error: "), lines[0]
        assert "Traceback" not in self.err and "Traceback" not in self.out
        assert SECRET not in self.err + self.out and TOKEN not in self.err + self.out
        return lines[0]


def env(home: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SAEKIT_", "HF_", "MLFLOW_", "PYTEST_"))}
    base.update({"SAEKIT_HOME": str(home), "SAEKIT_QUIET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                 "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home / "hf"), "HF_TOKEN": TOKEN})
    if os.environ.get("SAEKIT_CACHE_DIR"):
        base["SAEKIT_CACHE_DIR"] = os.environ["SAEKIT_CACHE_DIR"]
    base.update(extra)
    return base


def saekit(*args: str, home: Path, cwd: Path | None = None, timeout: float = 300, **extra_env: str) -> Result:
    """``saekit ARGS`` in a child process; its peak RSS measured with getrusage."""
    cmd = [sys.executable, "-c", _WRAPPER, str(timeout), sys.executable, "-m", "saekit", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env(home, **extra_env), cwd=cwd, timeout=timeout + 30)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    return Result(d["rc"], d["out"], d["err"], d["maxrss_kib"] / 1024, d["seconds"])


def python(code: str, *, home: Path, cwd: Path | None = None, timeout: float = 300, **extra_env: str) -> Result:
    """Python ``code`` in a child process, measured like :func:`saekit`."""
    cmd = [sys.executable, "-c", _WRAPPER, str(timeout), sys.executable, "-c", code]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env(home, **extra_env), cwd=cwd, timeout=timeout + 30)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    return Result(d["rc"], d["out"], d["err"], d["maxrss_kib"] / 1024, d["seconds"])


def tree_contains(root: Path, needle: bytes) -> list[str]:
    """Files under ``root`` (links not followed) whose bytes contain ``needle``."""
    hits = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if p.is_symlink() or not p.is_file():
                continue
            if needle in p.read_bytes():
                hits.append(str(p))
    return hits


def log_measure(name: str, r: Result) -> None:
    """Measurements go to the test log (pytest -s shows them; the report quotes them)."""
    print(f"[measure] {name}: exit {r.rc}, peak RSS {r.peak_mib:.0f} MiB, {r.seconds:.1f} s")


__all__ = ["Result", "SECRET", "TOKEN", "env", "saekit", "python", "tree_contains", "log_measure", "time"]
