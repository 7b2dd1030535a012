"""The content-addressed local cache of registry artifacts, and the index of pinned references.

    <home>/cache/sha256/<sha256>/                 one verified artifact folder per content
    <home>/cache/index/<registry key>/<name>/<version>.json   name/version -> sha256 and file hashes

An entry enters the cache only after each of its files matched its recorded sha256
(``add``), and is checked again before it is used (``verified``); a bad entry is evicted.
The index records what the registry last said each ``NAME/VERSION`` holds. Only content
pinned by its hash (``NAME@sha256:PREFIX``) loads from it without asking the registry:
a name can be deleted and re-created with other weights, so ``NAME/VERSION`` is confirmed
with the registry first (registry.store), and each answer overwrites the entry here.
Nothing here talks to MLflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from saekit.registry import artifact as art
from saekit.registry.backend import without_password
from saekit.registry.refs import Ref
from saekit.schemas import IntegrityError, NotFoundError, safeio
from saekit.schemas.settings import Settings, current


def root(settings: Settings | None = None) -> Path:
    """The cache folder (``<home>/cache``)."""
    return (settings or current()).home / "cache"


def path(sha256: str, settings: Settings | None = None) -> Path:
    """Where the artifact with ``sha256`` is (or would be) cached."""
    return root(settings) / "sha256" / sha256


# --- the index of pinned references --------------------------------------------------------


def _registry_key(uri: str) -> str:
    """A stable folder name for one registry (password stripped before hashing)."""
    return art.sha256_bytes(without_password(uri).encode())[:16]


def _index_dir(uri: str, name: str, settings: Settings | None) -> Path:
    return root(settings) / "index" / _registry_key(uri) / name


def remember(uri: str, name: str, version: int, sha256: str, files: dict[str, str],
             settings: Settings | None = None) -> None:
    """Record what the registry says name/version holds, replacing an older answer (the name
    may have been deleted and re-created since)."""
    dest = _index_dir(uri, name, settings) / f"{version}.json"
    data = json.dumps({"name": name, "version": version, "sha256": sha256, "files": files}).encode()
    with contextlib.suppress(OSError):
        if dest.read_bytes() == data:
            return
    dest.parent.mkdir(parents=True, exist_ok=True)
    safeio.write_bytes(dest, data)


def forget(uri: str, name: str, version: int, settings: Settings | None = None) -> None:
    """Drop name/version from the index (the registry no longer has it)."""
    with contextlib.suppress(FileNotFoundError):
        (_index_dir(uri, name, settings) / f"{version}.json").unlink()


def recall(uri: str, ref: Ref, settings: Settings | None = None) -> dict[str, Any] | None:
    """A pinned reference's ``{name, version, sha256, files}`` as the registry last said it,
    without asking it; None when not pinned, not indexed or ambiguous. Only a sha256 hit
    may be loaded on this word alone (see the module doc)."""
    if not ref.pinned or ref.kind not in ("version", "sha256"):
        return None
    folder = _index_dir(uri, ref.name, settings)
    if ref.kind == "version":
        paths = [folder / f"{ref.version}.json"]
    else:
        paths = sorted(folder.glob("*.json"), key=lambda p: int(p.stem)) if folder.is_dir() else []
    hits = []
    for p in paths:
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if ref.kind == "version" or d["sha256"].startswith(ref.sha256_prefix):
            hits.append(d)
    if not hits or len({d["sha256"] for d in hits}) > 1:
        return None
    return hits[0]


# --- the content-addressed entries -----------------------------------------------------------


def verified(sha256: str, files: dict[str, str], settings: Settings | None = None) -> Path | None:
    """The cache entry of ``sha256`` if every file matches ``files`` (its recorded hashes),
    else evict it and return None."""
    folder = path(sha256, settings)
    if folder.is_dir():
        try:
            if files and art.combine(files) == sha256:
                art.verify_files(folder, files, where=str(folder))
                return folder
            if not files and art.artifact_sha256(folder) == sha256:
                return folder
        except (IntegrityError, NotFoundError):
            pass
        evict(sha256, settings)
    return None


def evict(sha256: str, settings: Settings | None = None) -> None:
    """Remove the cache entry of ``sha256`` (atomically out of the way, then deleted)."""
    folder = path(sha256, settings)
    if folder.exists():
        trash = folder.with_name(f".evicted.{sha256[:12]}.{os.getpid()}.{random.randrange(1 << 30)}")
        try:
            os.replace(folder, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def staging(sha256: str, settings: Settings | None = None) -> Iterator[Path]:
    """A temporary folder next to the cache entries (same file system, so ``add`` is a rename)."""
    target = path(sha256, settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}.", dir=target.parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def add(local: Path, sha256: str, files: dict[str, str], *, where: str, settings: Settings | None = None) -> Path:
    """Verify ``local`` (a staged folder) against ``files`` and ``sha256``, drop anything else
    in it, and move it into the cache; the cache entry."""
    art.verify_files(local, files, where=f"{where} in the registry store")
    if art.combine(files) != sha256:
        raise IntegrityError("recorded file hashes do not add up to the version's sha256", where=where)
    keep = {name.split("/", 1)[0] for name in files}  # a set's files sit in layer folders
    for stray in set(p.name for p in local.iterdir()) - keep:
        path_ = local / stray
        shutil.rmtree(path_) if path_.is_dir() and not path_.is_symlink() else path_.unlink()
    target = path(sha256, settings)
    if verified(sha256, files, settings) is None:  # a valid entry stays (readers may be using it)
        try:
            os.replace(local, target)
        except OSError:  # another process filled it meanwhile; theirs is verified too
            if verified(sha256, files, settings) is None:
                raise
    return target
