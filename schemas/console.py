"""What saekit shows a terminal: progress on stderr (silenced by the ``quiet`` setting) and
the one escaping of text that may hold names, paths, card keys or tag values.

Every line saekit prints goes through :func:`printable` (progress here, ``error:`` lines and
command output in saekit.cli), so a file or key named ``"x\nok: bundle matches SHA256SUMS"``
or ``"\x1b[2J"`` shows as those escapes and cannot forge a line or drive the terminal. Names
that name things (SAE names, aliases, sae_ids, tags) refuse these characters outright
(:func:`has_control`, used by registry.refs, registry.tags and schemas.release).
"""

from __future__ import annotations

import re
import sys
import time

from saekit.schemas.settings import Settings, current


# C0 and C1 controls, DEL, Unicode's line and paragraph separators, and its bidirectional
# overrides: what ends a line, moves the cursor back, starts a terminal escape sequence (ESC,
# or C1's CSI \x9b), or shows text in another order than it is read ("Trojan Source").
_OTHERS = "\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
CONTROL = re.compile(f"[\x00-\x1f{_OTHERS}]")
# Escaped when shown: the same less the tab, which tables use and which only moves forward.
_SHOWN_ESCAPED = re.compile(f"[\x00-\x08\x0a-\x1f{_OTHERS}]")


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control character (the rule for names; tab included)."""
    return CONTROL.search(text) is not None


def printable(text: object) -> str:
    """``text`` as one terminal line: control characters escaped repr-style (``\\n``,
    ``\\x1b``, ``\\u2028``), everything else (tabs, printable Unicode) as it is."""
    return _SHOWN_ESCAPED.sub(lambda m: repr(m.group())[1:-1], str(text))


def quiet(settings: Settings | None = None) -> bool:
    """Whether progress output is off (SAEKIT_QUIET, ``saekit --quiet``)."""
    return (settings or current()).quiet


class Progress:
    """A one-line progress counter on stderr: ``activations 12/40 (3.1 s)``."""

    def __init__(self, desc: str, total: int | None = None, *, unit: str | None = None,
                 settings: Settings | None = None):
        """``unit``: also show the rate, ``3.2 latents/s``."""
        self.desc, self.total, self.n, self.unit = printable(desc), total, 0, unit
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
        sys.stderr.write(printable(msg) + "\n")
        sys.stderr.flush()
