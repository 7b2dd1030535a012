"""Progress output on stderr, shared by every layer; silenced by the ``quiet`` setting."""

from __future__ import annotations

import sys
import time

from saekit.schemas.settings import Settings, current


def quiet(settings: Settings | None = None) -> bool:
    """Whether progress output is off (SAEKIT_QUIET, ``saekit --quiet``)."""
    return (settings or current()).quiet


class Progress:
    """A one-line progress counter on stderr: ``activations 12/40 (3.1 s)``."""

    def __init__(self, desc: str, total: int | None = None, *, unit: str | None = None,
                 settings: Settings | None = None):
        """``unit``: also show the rate, ``3.2 latents/s``."""
        self.desc, self.total, self.n, self.unit = desc, total, 0, unit
        self.t0 = time.perf_counter()
        self._last = 0.0
        self.enabled = not quiet(settings)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.5 or (self.total and self.n >= self.total)):
            self._last = now
            of = f"/{self.total}" if self.total else ""
            rate = f", {self.n / (now - self.t0):.2f} {self.unit}/s" if self.unit and now > self.t0 else ""
            sys.stderr.write(f"\r{self.desc} {self.n}{of} ({now - self.t0:.1f} s{rate})")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write(f"\r{self.desc} {self.n} done in {time.perf_counter() - self.t0:.1f} s\n")
            sys.stderr.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def say(msg: str, *, settings: Settings | None = None) -> None:
    """One line of progress on stderr unless quiet."""
    if not quiet(settings):
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()
