"""The canonical transcoder set artifact on disk: write it, validate it, read it back verified.

A set is one folder, one registry version:

    set.json                  {"saekit": TranscoderSetInfo}: schema version, model, revision,
                              and per layer its folder, hook_in, hook_out and sha256
    layer_{i}/cfg.json        each layer a canonical (SAELens-loadable) transcoder artifact
    layer_{i}/sae_weights.safetensors

Identity: the sha256 of the SHA256SUMS-style listing of set.json and every layer's two files
(saekit.registry.artifact.combine), so a change in any layer changes the set's sha256, and a
mismatch names the file. Each layer keeps its own artifact sha256 (recorded in set.json).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from saekit.registry import artifact as art
from saekit.schemas import (
    SAERef,
    ArtifactFormatError,
    InputError,
    IntegrityError,
    NotFoundError,
    SAEConfig,
    TranscoderSetInfo,
    safeio,
)

if TYPE_CHECKING:
    from saekit.kernels.transcoder import Transcoder, TranscoderSet

SET_FILE = art.SET_FILE
MAX_SET_JSON = 1 << 20  # bytes: a thousand layers' entries fit many times over


def is_set(folder: Path) -> bool:
    """Whether ``folder`` holds a transcoder set (a set.json) rather than one artifact."""
    return safeio.exists(folder, SET_FILE)


def set_json_bytes(info: TranscoderSetInfo) -> bytes:
    return (json.dumps({"saekit": info.model_dump(mode="json")}, indent=2, sort_keys=True) + "\n").encode()


def read_info(folder: Path, *, data: bytes | None = None) -> TranscoderSetInfo:
    """set.json of a set folder, validated; one-line error naming the file."""
    from pydantic import ValidationError

    where = str(Path(folder) / SET_FILE)
    if data is None:
        data = safeio.read_bytes(folder, SET_FILE, max_bytes=MAX_SET_JSON)
    raw = safeio.load_json(data, where=where)
    if not isinstance(raw, dict) or not isinstance(raw.get("saekit"), dict):
        raise ArtifactFormatError('expected {"saekit": {...}} (a saekit transcoder set)', where=where)
    try:
        return TranscoderSetInfo.model_validate(raw["saekit"])
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "saekit"
        raise ArtifactFormatError(f"saekit.{loc}: {first['msg']}", where=where) from None


def layer_files(info: TranscoderSetInfo) -> list[str]:
    """Every file of the set, relative to its folder (set.json first)."""
    return [SET_FILE] + [f"{e.path}/{name}" for e in info.layers for name in art.IDENTITY_FILES]


def _check_layer(info_layer: Any, cfg: SAEConfig, model: tuple[str | None, str | None], where: str) -> None:
    if not cfg.is_transcoder:
        raise ArtifactFormatError(f"layer {info_layer.layer} is a {cfg.architecture} SAE, not a transcoder", where=where)
    hook_out = cfg.hook_name_out or cfg.hook_name
    if (info_layer.hook_in, info_layer.hook_out) != (cfg.hook_name, hook_out):
        raise ArtifactFormatError(
            f"layer {info_layer.layer}: set.json says hooks {info_layer.hook_in} -> {info_layer.hook_out}, "
            f"its cfg.json {cfg.hook_name} -> {hook_out}", where=where)
    if (cfg.model_name, cfg.model_revision) != model and cfg.model_name is not None:
        raise ArtifactFormatError(
            f"layer {info_layer.layer} is for model {cfg.model_name}@{cfg.model_revision}, the set for "
            f"{model[0]}@{model[1]}", where=where)


def validate_set(folder: Path) -> tuple[TranscoderSetInfo, SAEConfig, dict[str, str]]:
    """Check a set folder without building tensors: set.json, and every layer as
    ``artifact.validate_artifact`` checks one artifact, its sha256 against set.json.
    Returns the info, the first layer's config and the per-file sha256 of the whole set."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError("no such transcoder set folder", where=str(folder))
    data = safeio.read_bytes(folder, SET_FILE, max_bytes=MAX_SET_JSON)
    info = read_info(folder, data=data)
    hashes = {SET_FILE: art.sha256_bytes(data)}
    first: SAEConfig | None = None
    for entry in info.layers:
        sub = folder / entry.path
        cfg, sub_hashes = art.validate_artifact(sub)
        got = art.combine(sub_hashes)
        if got != entry.sha256:
            raise IntegrityError(f"sha256 mismatch (set.json says {entry.sha256[:12]}, the files {got[:12]})",
                                 where=str(sub))
        _check_layer(entry, cfg, (info.model_name, info.model_revision), str(sub))
        first = first or cfg
        for name in art.IDENTITY_FILES:
            hashes[f"{entry.path}/{name}"] = sub_hashes[name]
    assert first is not None  # min_length=1
    return info, first, hashes


def save_set(tset: TranscoderSet, folder: Path) -> str:
    """Write ``tset`` as a canonical set folder; returns its sha256 (see ``write_set``)."""
    return write_set(((layer, tset[layer]) for layer in tset.layers), folder,
                     model_name=tset.model_name, model_revision=tset.model_revision)


def write_set(layers: Iterable[tuple[int, Transcoder]], folder: Path, *, model_name: str | None = None,
              model_revision: str | None = None) -> str:
    """Write transcoders, one layer at a time (only one needs to be in memory), as a canonical
    set folder; returns its sha256. Written beside its final place and renamed in, so a reader
    never sees half a set; an existing non-empty folder is refused (nothing is replaced)."""
    folder = Path(folder)
    if folder.is_symlink() or (folder.exists() and (not folder.is_dir() or any(folder.iterdir()))):
        raise InputError("exists and is not an empty folder; a set is written to a new folder", where=str(folder))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        entries: dict[int, dict[str, Any]] = {}
        for layer, tc in layers:
            if layer in entries:
                raise InputError(f"two transcoders for layer {layer}", where=str(folder))
            if not entries:  # the set's model is the layers' unless given
                model_name = model_name if model_name is not None else tc.cfg.model_name
                model_revision = model_revision if model_revision is not None else tc.cfg.model_revision
            cfg = tc.cfg
            if model_name is not None and cfg.model_name is None:
                cfg = cfg.model_copy(update={"model_name": model_name})
            if model_revision is not None and cfg.model_revision is None:
                cfg = cfg.model_copy(update={"model_revision": model_revision})
            if cfg is not tc.cfg:
                tc = type(tc)(cfg, tc.tensors, ref=tc.ref)
            sha = art.save_artifact(tc, tmp / f"layer_{layer}")
            entries[layer] = {"layer": layer, "path": f"layer_{layer}", "hook_in": tc.hook_in,
                              "hook_out": tc.hook_out, "sha256": sha}
        if not entries:
            raise InputError("a transcoder set needs at least one layer", where=str(folder))
        info = TranscoderSetInfo(model_name=model_name, model_revision=model_revision,
                                 layers=[entries[i] for i in sorted(entries)])
        (tmp / SET_FILE).write_bytes(set_json_bytes(info))
        _, _, hashes = validate_set(tmp)
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return art.combine(hashes)


def stage_set(src: Path, dest: Path) -> None:
    """Copy a set folder's files (set.json and each layer's two files, regular files only)."""
    info = read_info(src)
    for name in layer_files(info):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        safeio.copy_file(src, name, dest / name)


def load_set(folder: Path, *, expected_sha256: str | None = None) -> TranscoderSet:
    """Read a set folder; with ``expected_sha256``, verify every file first."""
    from saekit.kernels.transcoder import Transcoder, TranscoderSet

    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError("no such transcoder set folder", where=str(folder))
    if expected_sha256 is not None:
        info = read_info(folder)
        hashes = {name: safeio.sha256(folder, name) for name in layer_files(info)}
        if art.combine(hashes) != expected_sha256:
            raise IntegrityError(f"sha256 mismatch (expected {expected_sha256[:12]}, got "
                                 f"{art.combine(hashes)[:12]})", where=str(folder))
    else:
        info, _, _ = validate_set(folder)
    layers: dict[int, Transcoder] = {}
    for entry in info.layers:
        tc = art.load_artifact(folder / entry.path, expected_sha256=entry.sha256)
        if not isinstance(tc, Transcoder):
            raise ArtifactFormatError(f"layer {entry.layer} is not a transcoder", where=str(folder / entry.path))
        tc.ref = SAERef(name=entry.path, sha256=entry.sha256, d_sae=tc.cfg.d_sae)
        layers[entry.layer] = tc
    return TranscoderSet(layers, model_name=info.model_name, model_revision=info.model_revision)
