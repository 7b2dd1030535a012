"""Read a release manifest (YAML) into a validated ReleaseManifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saekit.schemas import InputError, NotFoundError, ReleaseManifest, safeio


def load_manifest(path: str | Path) -> ReleaseManifest:
    """Parse and validate a manifest file; one-line InputError naming the file and field."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError("no such manifest file", where=str(path))
    raw = safeio.read_bytes(path.parent, path.name, max_bytes=safeio.YAML_MAX_BYTES)
    data: Any = safeio.load_yaml(raw, where=str(path))
    return parse_manifest(data, where=str(path))
