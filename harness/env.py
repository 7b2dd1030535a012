"""Where the harness keeps its caches, and its progress output (silenced by SAEKIT_QUIET=1)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """A folder under SAEKIT_CACHE_DIR (default ~/.cache/saekit), created on demand."""
    root = Path(os.environ.get("SAEKIT_CACHE_DIR") or Path.home() / ".cache" / "saekit").expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def quiet() -> bool:
    return os.environ.get("SAEKIT_QUIET", "") not in ("", "0", "false")


class Progress:
    """A one-line progress counter on stderr: ``activations 12/40 (3.1 s)``."""

    def __init__(self, desc: str, total: int | None = None):
        self.desc, self.total, self.n = desc, total, 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        self.enabled = not quiet()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.5 or (self.total and self.n >= self.total)):
            self._last = now
            of = f"/{self.total}" if self.total else ""
            sys.stderr.write(f"\r{self.desc} {self.n}{of} ({now - self.t0:.1f} s)")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write(f"\r{self.desc} {self.n} done in {time.perf_counter() - self.t0:.1f} s\n")
            sys.stderr.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def say(msg: str) -> None:
    """One line of progress on stderr unless quiet."""
    if not quiet():
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()
