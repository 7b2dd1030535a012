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
    data: Any = safeio.load_yaml(raw, where=str(path))  # bounded, no aliases
    return parse_manifest(data, where=str(path))


def parse_manifest(data: Any, *, where: str = "manifest") -> ReleaseManifest:
    """Validate a manifest given as a mapping (YAML scalars such as ``version: 1.0`` are refused)."""
    from pydantic import ValidationError

    if not isinstance(data, dict):
        raise InputError("a manifest is a mapping (release_id, version, license, base_model, saes, ...)", where=where)
    try:
        return ReleaseManifest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "manifest"
        more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
        msg = first["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
        raise InputError(f"{loc}: {msg}{more}", where=where) from None


def dump_manifest(manifest: ReleaseManifest) -> str:
    """The manifest as YAML (stable key order), e.g. for the demo's generated manifest."""
    import yaml

    return yaml.safe_dump(manifest.model_dump(mode="json", exclude_none=True), sort_keys=False)
