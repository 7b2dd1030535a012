"""saekit's settings: one object, read from the environment in one place.

``Settings.from_env`` is the only reader of ``SAEKIT_*`` variables (and of the two
huggingface_hub variables saekit passes on explicitly). The CLI builds one Settings from the
environment and its options and runs the command under it (``use_settings``); library code
takes ``settings=`` where it matters, else uses ``current()``: the settings in use, or the
environment as it is at that moment. Nothing in saekit writes ``SAEKIT_*`` variables.

Boolean variables have one meaning (``parse_bool``): 1/true/yes/on are true; unset, empty,
0/false/no/off are false (any case); anything else is an input error naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from saekit.schemas.errors import InputError

TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"", "0", "false", "no", "off"})
KERNELS = ("auto", "triton", "torch")


def parse_bool(name: str, value: str | None) -> bool:
    """The one meaning of a boolean variable (see the module doc)."""
    text = (value or "").strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise InputError(f"{name} must be one of 1, true, yes, on or 0, false, no, off; not {value!r}", where="environment")


def parse_seconds(name: str, value: str | None, default: float) -> float:
    """A timeout in seconds: a number > 0 and at most a day (unset or empty: ``default``)."""
    text = (value or "").strip()
    if not text:
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= 86400:  # also refuses nan and inf
        raise InputError(f"{name} must be a number of seconds > 0 and <= 86400, not {value!r}", where="environment")
    return seconds


@dataclasses.dataclass(frozen=True)
class Settings:
    """Where saekit keeps things and how it talks; see docs/settings.md."""

    home: Path = Path("~/.saekit").expanduser()
    """SAEKIT_HOME: the embedded registry, the load cache, check outputs, the demo's work folder."""
    cache_dir: Path = Path("~/.cache/saekit").expanduser()
    """SAEKIT_CACHE_DIR: converted models, trained demo SAEs, the MLflow database template."""
    registry_uri: str | None = None
    """SAEKIT_REGISTRY_URI: an MLflow tracking URI; None for the embedded SQLite under home."""
    quiet: bool = False
    """SAEKIT_QUIET: no progress output."""
    debug: bool = False
    """SAEKIT_DEBUG: keep MLflow's logging, warnings and progress bars."""
    kernels: str = "auto"
    """SAEKIT_KERNELS: auto (Triton on CUDA, torch elsewhere), triton or torch."""
    encode_tiles: str | None = None
    """SAEKIT_ENCODE_TILES: "BM,BN,BK,ROWS,WARPS,STAGES" for Triton tuning runs."""
    hub_endpoint: str | None = None
    """HF_ENDPOINT: the Hugging Face Hub to talk to (None: huggingface_hub's default)."""
    hub_cache: str | None = None
    """HF_HUB_CACHE: where hf:// downloads are cached (None: huggingface_hub's default)."""
    connect_timeout: float = 10.0
    """SAEKIT_CONNECT_TIMEOUT: seconds to open a connection (Hub, MLflow server, database)."""
    read_timeout: float = 60.0
    """SAEKIT_READ_TIMEOUT: seconds to wait for each answer (or each chunk of one) from a server."""

    def __post_init__(self) -> None:
        if self.kernels not in KERNELS:
            raise InputError(f"SAEKIT_KERNELS must be 'triton' or 'torch', not {self.kernels!r}", where="environment")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ``environ`` (default os.environ), then ``overrides`` (None: not given)."""
        env = os.environ if environ is None else environ

        def path(name: str, default: Path) -> Path:
            return Path(env[name]).expanduser() if env.get(name) else default

        values: dict[str, object] = {
            "home": path("SAEKIT_HOME", Path("~/.saekit").expanduser()),
            "cache_dir": path("SAEKIT_CACHE_DIR", Path("~/.cache/saekit").expanduser()),
            "registry_uri": env.get("SAEKIT_REGISTRY_URI") or None,
            "quiet": parse_bool("SAEKIT_QUIET", env.get("SAEKIT_QUIET")),
            "debug": parse_bool("SAEKIT_DEBUG", env.get("SAEKIT_DEBUG")),
            "kernels": env.get("SAEKIT_KERNELS") or "auto",
            "encode_tiles": env.get("SAEKIT_ENCODE_TILES") or None,
            "hub_endpoint": env.get("HF_ENDPOINT") or None,
            "hub_cache": env.get("HF_HUB_CACHE") or None,
            "connect_timeout": parse_seconds("SAEKIT_CONNECT_TIMEOUT", env.get("SAEKIT_CONNECT_TIMEOUT"),
                                             cls.connect_timeout),
            "read_timeout": parse_seconds("SAEKIT_READ_TIMEOUT", env.get("SAEKIT_READ_TIMEOUT"), cls.read_timeout),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        for key in ("home", "cache_dir"):
            values[key] = Path(values[key]).expanduser()  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    def replace(self, **changes: object) -> Settings:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def cache(self, *parts: str) -> Path:
        """A folder under cache_dir, created on demand."""
        path = self.cache_dir.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path


_ACTIVE: ContextVar[Settings | None] = ContextVar("saekit_settings", default=None)


def current() -> Settings:
    """The settings in use (``use_settings``), else read from the environment now."""
    return _ACTIVE.get() or Settings.from_env()


@contextmanager
def use_settings(settings: Settings) -> Iterator[Settings]:
    """Run a block under ``settings`` (the CLI runs every command under one)."""
    token = _ACTIVE.set(settings)
    try:
        yield settings
    finally:
        _ACTIVE.reset(token)


def cache_dir(*parts: str, settings: Settings | None = None) -> Path:
    """A folder under SAEKIT_CACHE_DIR (default ~/.cache/saekit), created on demand."""
    return (settings or current()).cache(*parts)
