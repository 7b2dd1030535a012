"""Between folders and the registry: register a checkpoint of any supported format, and copy
a registered version into a folder. What ``saekit register --from`` and ``saekit pull`` do."""

from __future__ import annotations

import tempfile
from pathlib import Path

from saekit.registry import artifact, store
from saekit.registry.formats import import_checkpoint
from saekit.schemas import safeio


def register_checkpoint(
    name: str,
    path: Path | str,
    *,
    from_format: str | None = None,
    tags: dict[str, str] | None = None,
    description: str | None = None,
    alias: str | None = None,
    model_name: str | None = None,
    hook_name: str | None = None,
    model_revision: str | None = None,
    hook_name_out: str | None = None,
) -> store.VersionInfo:
    """Register ``path`` as a new version of ``name``: a canonical artifact folder, or with
    ``from_format`` (saelens, sparsify, gemmascope, openai) a checkpoint imported first into
    a temporary canonical folder (see saekit.registry.formats); a transcoder set is one
    version. ``hook_name_out``: a transcoder's output module, where it differs from hook_name."""
    with tempfile.TemporaryDirectory(prefix="saekit-import-") as tmp:
        folder = Path(path)
        if from_format and from_format != "saekit":
            folder = Path(tmp) / "artifact"
            import_checkpoint(
                from_format, Path(path), folder, model_name=model_name, hook_name=hook_name,
                model_revision=model_revision, hook_name_out=hook_name_out,
            )
        return store.register(name, folder, tags=tags, description=description, alias=alias)


def pull(ref: str, dest: Path | str) -> tuple[str, list[str]]:
    """Copy the artifact ``ref`` (fetched through the cache and verified) into ``dest``;
    returns the copy's sha256 and the names of the files copied."""
    folder = store.fetch(ref)
    dest = Path(dest)
    # the verified cache entry: regular files only (a transcoder set's in its layer folders)
    names = [name for name in safeio.list_files(folder) if "/" not in name or store.tset.is_set(folder)]
    # a link at dest is refused, never written through; a user's own file is never replaced
    safeio.check_new_or_same({dest / name: safeio.sha256(folder, name) for name in names})
    for name in names:
        safeio.copy_file(folder, name, dest / name)
    return store.artifact_sha256(dest), names
