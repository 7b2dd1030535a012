"""saekit: register, check, document and release sparse autoencoders.

    sae = saekit.load("smollm2-res-l6@production")

Stays light to import: mlflow, transformers and triton load only when used.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from saekit.schemas.version import __version__

if TYPE_CHECKING:
    from saekit.harness.check import CheckResult
    from saekit.kernels import SAE


def load(ref: str | os.PathLike, *, device: str | None = None) -> SAE:
    """Load an SAE by reference (see saekit.registry.refs), verified against its sha256."""
    from saekit.registry.refs import parse_ref

    parsed = parse_ref(ref)  # a Path is a local folder; a string names one only as ./x or /abs
    if parsed.kind == "hf":
        from saekit.releases.hub import load_hf

        sae = load_hf(parsed)
    elif parsed.kind == "saelens":
        from saekit.registry.hub_source import load as load_hub

        sae = load_hub(parsed)
    else:
        from saekit.registry.store import load_ref

        sae = load_ref(parsed)
    return sae.to(device) if device else sae


def register(name: str, artifact: Any, **kwargs: Any):
    """Register an artifact folder or in-memory SAE as a new version of ``name``.

    ``artifact`` may also be ``hf://ORG/REPO[@REV]/PATH`` or ``saelens:RELEASE/SAE_ID``: the
    checkpoint is fetched, converted and registered with its source pinned (a glob in PATH
    returns the list of versions, one per match).
    """
    if isinstance(artifact, str) and artifact.startswith(("hf://", "saelens:")):
        from saekit.registry import hub_source

        infos = hub_source.register(artifact, name, **kwargs)
        return infos if hub_source.is_glob(artifact) else infos[0]
    from saekit.registry.store import register as _register

    return _register(name, artifact, **kwargs)


def check(ref: str | os.PathLike, **kwargs: Any) -> CheckResult:
    """Check an SAE against a real model: metrics, cards, benchmark record and gate verdict
    (see saekit.harness.check.check for the options)."""
    from saekit.harness.check import check as _check

    return _check(ref, loader=load, **kwargs)


__all__ = ["load", "register", "check", "__version__"]
