"""SAE artifacts by name, on MLflow's model registry (the system of record).

One registered model per SAE lineage, one model version per artifact. A version's files
are logged as artifacts of an MLflow run under ``sae/``; the version's source points at
them. Version tags carry the identity (``saekit.sha256`` and the per-file hashes in
``saekit.files``) and the shape (architecture, d_in, d_sae, k, model, revision, hook,
schema version).

Visibility: a version becomes visible to ``resolve``/``load``/``list_versions`` only when
it carries ``saekit.ready = true``, which is set after its files were uploaded, downloaded
back and verified against their sha256. A registration that dies half way leaves a run or
an untagged version that no reader returns.

Where the registry lives is only a URI (``SAEKIT_REGISTRY_URI``): by default MLflow on
SQLite with a local artifact folder under SAEKIT_HOME; for a team, an MLflow tracking server
(``http://...``) on PostgreSQL with proxied artifacts. No code below branches on which.

Loading goes through a content-addressed cache under ``SAEKIT_HOME/cache``. Content pinned
by its hash (``NAME@sha256:...``) already cached loads without importing mlflow or
contacting the server. ``NAME/VERSION`` is asked of the registry every time: a name can be
deleted and re-created with other weights, so the local index is trusted only while the
registry still says the same sha256; an unreachable registry is said as such, naming the
``NAME@sha256:...`` that loads offline.

Parts: settings are ``schemas.settings`` (``current()``); the MLflow backend (client,
retries, error translation with secret masking; public MLflow API only) is
``registry.backend``; the content-addressed cache and the pinned-reference index are
``registry.cache``; tag names are ``registry.tags``. This module is the registry API on
top: resolve, list_versions, fetch, load_ref, register, set_alias, delete_alias, set_tags,
record_tags, log_check, check_files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterator

from saekit.registry import artifact as art
from saekit.registry import transcoder_set as tset
from saekit.registry import backend, cache
from saekit.registry import tags as T
from saekit.registry.refs import Ref, check_name, parse_ref
from saekit.schemas.settings import Settings, current
from saekit.schemas import (
    InputError,
    IntegrityError,
    NotFoundError,
    ReferenceSyntaxError,
    RegistryError,
    SaekitError,
    DataInfo,
    SAERef,
    safeio,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from saekit.kernels import SAE
    from saekit.kernels.transcoder import TranscoderSet

EXPERIMENT = backend.EXPERIMENT
ARTIFACT_PATH = "sae"
CHECKS_PATH = "checks"
# Tag names live in registry.tags; these names stay importable from here.
READY, SHA, FILES, GATE, GATE_FAILED = T.READY, T.SHA, T.FILES, T.GATE, T.GATE_FAILED
RESERVED_TAGS, RESERVED_PREFIXES, is_reserved = T.RESERVED_TAGS, T.RESERVED_PREFIXES, T.is_reserved


ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
# MLflow reserves "latest" and "v<N>" as alias names (mlflow/utils/validation.py).
_RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)


@dataclass
class VersionInfo:
    """One ready model version, as saekit sees it."""

    name: str
    version: int
    sha256: str
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None
    created_ms: int = 0
    description: str | None = None
    source: str | None = None

    @property
    def files(self) -> dict[str, str]:
        """Per-file sha256 recorded at registration."""
        return json.loads(self.tags.get(FILES, "{}"))

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- settings and the backend ------------------------------------------------------------
# Settings are schemas.settings (``current()`` unless given); the MLflow client, retries and
# error translation are registry.backend; the cache is registry.cache.


def home(settings: Settings | None = None) -> Path:
    return (settings or current()).home


def registry_uri(settings: Settings | None = None) -> str:
    """The MLflow tracking (and registry) URI: SAEKIT_REGISTRY_URI or the embedded SQLite."""
    return backend.tracking_uri(settings)


mask = backend.mask
_retry = backend.retry


def _backend() -> backend.Backend:
    return backend.connect(current())


def _client() -> MlflowClient:
    return _backend().client


def _where() -> str:
    return backend.where(registry_uri())


def _errors(what: str | None = None) -> contextlib.AbstractContextManager[None]:
    """Turn MLflow and connection errors into one-line saekit errors with masked URIs."""
    return backend.errors(what, uri=registry_uri())


def _cache_dir() -> Path:
    return cache.root()


# --- model versions <-> VersionInfo ------------------------------------------------------


def _info(mv: Any, aliases: list[str] | None = None) -> VersionInfo:
    tags = dict(mv.tags or {})
    return VersionInfo(
        name=mv.name,
        version=int(mv.version),
        sha256=tags.get(SHA, ""),
        aliases=sorted(aliases if aliases is not None else (getattr(mv, "aliases", None) or [])),
        tags=tags,
        run_id=mv.run_id,
        created_ms=int(mv.creation_timestamp or 0),
        description=mv.description or None,
        source=mv.source,
    )


def _is_ready(mv: Any) -> bool:
    return (mv.tags or {}).get(READY) == "true" and bool((mv.tags or {}).get(SHA))


def _search(client: MlflowClient, filter_string: str, *, newest_first: bool = True, page: int = 1000) -> list[Any]:
    out: list[Any] = []
    token = None
    while True:
        got = _retry(
            client.search_model_versions,
            filter_string,
            max_results=page,
            order_by=["version_number DESC" if newest_first else "version_number ASC"],
            page_token=token,
        )
        out.extend(got)
        token = got.token
        if not token or len(out) >= page:
            return out


def _ready_filter(name: str | None = None, sha: str | None = None, sha_prefix: str | None = None) -> str:
    parts = [f"tags.`{READY}` = 'true'"]
    if name:
        parts.insert(0, f"name = '{check_name(name)}'")
    if sha:
        parts.append(f"tags.`{SHA}` = '{sha}'")
    if sha_prefix:
        parts.append(f"tags.`{SHA}` LIKE '{sha_prefix}%'")
    return " AND ".join(parts)


def _aliases_of(client: MlflowClient, name: str) -> dict[int, list[str]]:
    rm = _retry(client.get_registered_model, name)
    out: dict[int, list[str]] = {}
    for alias, version in (rm.aliases or {}).items():
        out.setdefault(int(version), []).append(alias)
    return out


def _canonical(mvs: list[Any]) -> list[Any]:
    """Drop duplicate ready versions of the same content (a concurrent-registration race):
    the lowest version of each sha256 is the one that counts."""
    first: dict[tuple[str, str], int] = {}
    for mv in mvs:
        key = (mv.name, mv.tags.get(SHA, ""))
        first[key] = min(first.get(key, int(mv.version)), int(mv.version))
    return [mv for mv in mvs if first[(mv.name, mv.tags.get(SHA, ""))] == int(mv.version)]


# --- reading -----------------------------------------------------------------------------


def _as_ref(ref: str | Ref) -> Ref:
    ref = ref if isinstance(ref, Ref) else parse_ref(ref)
    if ref.kind in ("path", "hf", "saelens"):
        raise ReferenceSyntaxError("expected a registry reference, not a path, hf:// or saelens:", where=repr(ref.text))
    return ref


def resolve(ref: str | Ref) -> VersionInfo:
    """The ready version a reference names (asks the registry; downloads nothing)."""
    ref = _as_ref(ref)
    client = _client()
    name = ref.name
    with _errors(repr(ref.text)):
        try:
            if ref.kind == "alias":
                try:
                    mv = _retry(client.get_model_version_by_alias, name, ref.alias)
                except Exception as err:  # noqa: BLE001
                    if getattr(err, "error_code", None) == "INVALID_PARAMETER_VALUE" and "alias" in str(err).lower():
                        raise NotFoundError(f"{name!r} has no alias {ref.alias!r}", where=_where()) from None
                    raise
            elif ref.kind == "version":
                mv = _retry(client.get_model_version, name, str(ref.version))
            else:
                if ref.kind == "latest":
                    mvs = _search(client, _ready_filter(name), page=1)
                    what = "has no ready version"
                else:
                    mvs = _canonical(_search(client, _ready_filter(name, sha_prefix=ref.sha256_prefix),
                                             newest_first=False))
                    what = f"has no version with sha256 {ref.sha256_prefix}..."
                    if len({m.tags[SHA] for m in mvs}) > 1:
                        raise ReferenceSyntaxError(
                            f"sha256 prefix {ref.sha256_prefix} is ambiguous; give more digits", where=repr(ref.text)
                        )
                if not mvs:
                    _retry(client.get_registered_model, name)  # NotFound if the name does not exist
                    raise NotFoundError(f"{name!r} {what}", where=_where())
                mv = _retry(client.get_model_version, name, mvs[0].version)  # with its aliases
        except Exception as err:  # noqa: BLE001
            if getattr(err, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                if ref.kind == "version" and "version" in str(err).lower():
                    raise NotFoundError(f"no version {ref.version} of {name!r}", where=_where()) from None
                raise NotFoundError(f"no registered SAE named {name!r}", where=_where()) from None
            raise
        if not _is_ready(mv):
            raise NotFoundError(f"version {mv.version} of {name!r} is not ready (registration incomplete)",
                                where=_where())
    info = _info(mv)
    _remember(info)
    return info


def list_versions(name: str | None = None) -> list[VersionInfo]:
    """Every ready version (of ``name``, or of every SAE), oldest first per name."""
    client = _client()
    with _errors(repr(name) if name else None):
        if name:
            try:
                aliases = {name: _aliases_of(client, name)}
            except Exception as err:  # noqa: BLE001
                if getattr(err, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                    raise NotFoundError(f"no registered SAE named {name!r}", where=_where()) from None
                raise
        mvs = _canonical(_search(client, _ready_filter(name), newest_first=False))
        if not name:
            aliases = {n: _aliases_of(client, n) for n in sorted({mv.name for mv in mvs})}
    infos = [_info(mv, aliases[mv.name].get(int(mv.version), [])) for mv in mvs]
    return sorted(infos, key=lambda i: (i.name, i.version))


# --- the local index of pinned references and the content-addressed cache ---------------


def _remember(info: VersionInfo) -> None:
    """Record what the registry says name/version holds (replacing an older answer)."""
    cache.remember(registry_uri(), info.name, info.version, info.sha256, info.files)


def _recall(ref: Ref) -> VersionInfo | None:
    """The version of a ``NAME@sha256:PREFIX`` reference from the local index, without asking
    the registry: content pinned by its hash is the same whatever the registry says now."""
    d = cache.recall(registry_uri(), ref) if ref.kind == "sha256" else None
    if d is None:
        return None
    return VersionInfo(d["name"], int(d["version"]), d["sha256"], tags={FILES: json.dumps(d["files"])})


def _confirmed(ref: Ref) -> VersionInfo:
    """``resolve(ref)``, keeping the local index in step: a version the registry no longer
    has is forgotten; when the registry cannot be reached, the error names the sha256-pinned
    reference that loads offline (if the index knows one)."""
    try:
        return resolve(ref)
    except NotFoundError:
        if ref.kind == "version":
            cache.forget(registry_uri(), ref.name, ref.version)
        raise
    except RegistryError as err:
        known = cache.recall(registry_uri(), ref) if ref.kind == "version" else None
        if known is None:
            raise
        raise RegistryError(
            f"{err.message}; {ref.text} is confirmed with the registry before it loads; "
            f"load {ref.name}@sha256:{known['sha256'][:16]} for the cached copy it named last",
            where=err.where,
        ) from None


def cache_path(sha256: str) -> Path:
    return cache.path(sha256)


def _cached_ok(info: VersionInfo) -> Path | None:
    """The cache entry of ``info`` if every file matches its recorded sha256, else evict it."""
    return cache.verified(info.sha256, info.files)


def _upload_file(run_id: str, local: Path, artifact_path: str) -> None:
    """Upload one file under the run's artifact root (one PUT through the server's proxy)."""
    _backend().upload_file(run_id, local, artifact_path)


def _download(info: VersionInfo) -> Path:
    """Download a version's files, verify each against its recorded sha256, move into the cache."""
    expected = info.files
    where = f"{info.name}/{info.version}"
    if not expected:
        raise IntegrityError("version has no recorded file hashes", where=where)
    with cache.staging(info.sha256) as staging:
        b = _backend()
        with _errors(where):
            local = staging / ARTIFACT_PATH
            local.mkdir()
            if info.source:
                for fname in expected:  # one file each, by name (a set's in their layer folders)
                    into = local / Path(fname).parent
                    into.mkdir(parents=True, exist_ok=True)
                    b.download_file(f"{info.source.rstrip('/')}/{fname}", into)
            else:
                local = b.download_run_folder(info.run_id, ARTIFACT_PATH, staging)
        return cache.add(local, info.sha256, expected, where=where)


def fetch(ref: str | Ref) -> Path:
    """A local, verified folder holding the artifact a reference names (content-addressed cache)."""
    ref = ref if isinstance(ref, Ref) else parse_ref(ref)
    if ref.kind == "path":
        return ref.path
    info = _recall(ref)
    folder = _cached_ok(info) if info is not None else None
    if folder is None:
        info = _confirmed(ref)
        folder = _cached_ok(info) or _download(info)
    return folder


def load_folder(folder: Path, *, expected_sha256: str | None = None) -> SAE | TranscoderSet:
    """An artifact folder in memory: a TranscoderSet for a set (set.json), else the SAE
    (or Transcoder) of a canonical artifact."""
    if tset.is_set(folder):
        return tset.load_set(folder, expected_sha256=expected_sha256)
    return art.load_artifact(folder, expected_sha256=expected_sha256)


def _set_ref(obj: Any, ref: SAERef) -> None:
    """``obj.ref`` = ref; a set's layers get ``NAME/layer_i`` refs with their own sha256."""
    obj.ref = ref
    if _is_set(obj):
        for layer in obj.layers:
            tc = obj[layer]
            tc.ref = tc.ref.model_copy(update={"name": f"{ref.name}/layer_{layer}", "version": ref.version})


def _is_set(obj: Any) -> bool:
    from saekit.kernels.transcoder import TranscoderSet  # torch only once a set is in memory

    return isinstance(obj, TranscoderSet)


def _load_cached(info: VersionInfo) -> SAE | None:
    """The cached artifact of ``info``, verified against its sha256; None (and evicted) if
    missing or corrupt."""
    if not cache_path(info.sha256).is_dir():
        return None
    try:
        return load_folder(cache_path(info.sha256), expected_sha256=info.sha256)
    except (IntegrityError, NotFoundError):
        cache.evict(info.sha256)  # corrupt cache entry: fetched again
        return None


def _d_sae(obj: Any) -> int:
    return obj[obj.layers[0]].cfg.d_sae if _is_set(obj) else obj.cfg.d_sae


def load_ref(ref: Ref | str) -> SAE | TranscoderSet:
    """Fetch (cache first) and load an SAE (a TranscoderSet for a set), verified against its
    sha256; sets ``.ref``."""
    ref = ref if isinstance(ref, Ref) else parse_ref(ref)
    if ref.kind == "path":
        sae = load_folder(ref.path)
        _set_ref(sae, SAERef(name=ref.path.resolve().name, sha256=artifact_sha256(ref.path), d_sae=_d_sae(sae)))
        return sae
    if ref.kind == "hf":
        raise ReferenceSyntaxError("hf:// references load through saekit.load", where=repr(ref.text))
    info = _recall(ref)  # pinned by sha256 and indexed: no registry round trip, no mlflow import
    sae = _load_cached(info) if info is not None else None
    if sae is None:
        info = _confirmed(ref)
        sae = _load_cached(info) or load_folder(_download(info), expected_sha256=info.sha256)
    _set_ref(sae, SAERef(name=info.name, version=str(info.version), sha256=info.sha256, d_sae=_d_sae(sae)))
    return sae


def artifact_sha256(folder: Path) -> str:
    """sha256 of an artifact folder: one SAE or transcoder, or a transcoder set."""
    if tset.is_set(folder):
        return art.combine(tset.validate_set(folder)[2])
    return art.artifact_sha256(folder)


# --- writing -----------------------------------------------------------------------------


def _meta_tags(cfg: Any, sha: str, hashes: dict[str, str], info: Any = None) -> dict[str, str]:
    """Identity and shape tags; for a set (``info``: its TranscoderSetInfo) the first layer's
    shape, the layers and the kind."""
    tags = {
        T.KIND: "transcoder_set" if info is not None else "",
        T.LAYERS: ",".join(str(e.layer) for e in info.layers) if info is not None else "",
        T.D_OUT: "" if cfg.d_out is None else str(cfg.d_out),
        T.HOOK_OUT: cfg.hook_name_out or "",
        SHA: sha,
        FILES: json.dumps(hashes, sort_keys=True),
        T.ARCHITECTURE: cfg.architecture,
        T.D_IN: str(cfg.d_in),
        T.D_SAE: str(cfg.d_sae),
        T.K: "" if cfg.k is None else str(cfg.k),
        T.DTYPE: cfg.dtype,
        T.MODEL: cfg.model_name or "",
        T.MODEL_REVISION: cfg.model_revision or "",
        T.HOOK: cfg.hook_name or "",
        T.SCHEMA_VERSION: cfg.schema_version,
    }
    return {k: v for k, v in tags.items() if v != ""}


def _check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias) or _RESERVED_ALIAS.fullmatch(alias):
        raise ReferenceSyntaxError(
            "alias must be 1-64 of letters, digits, '_', '-', start with a letter, and not be 'latest' or 'v<N>'",
            where=repr(alias),
        )
    return alias


def _check_tags(tags: dict[str, str] | None, *, allow_reserved: bool = False) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (tags or {}).items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_.\-/ :]{1,250}", key):
            raise InputError("tag keys are 1-250 of letters, digits, '_', '.', '-', '/', ' ', ':'", where=repr(key))
        if not allow_reserved and (key in RESERVED_TAGS or is_reserved(key)):
            raise InputError(
                f"tags under {' and '.join(p + '*' for p in RESERVED_PREFIXES)} are set by saekit only "
                "(registration, check, release)",
                where=repr(key),
            )
        value = str(value)
        T.check_text(key, value)
        if len(value) > 5000:
            raise InputError("tag value longer than 5000 characters", where=repr(key))
        out[key] = value
    return out


def register(
    name: str,
    artifact: Path | str | SAE | TranscoderSet,
    *,
    tags: dict[str, str] | None = None,
    description: str | None = None,
    alias: str | None = None,
) -> VersionInfo:
    """Register a canonical artifact folder (or an in-memory SAE, Transcoder or TranscoderSet)
    as a new version of ``name``; a transcoder set (folder with set.json) is one version.

    Identical content already registered under ``name`` returns that version (its alias,
    if given, is moved onto it, and ``tags`` are set on it). The new version is visible only once its files are
    uploaded and verified.
    """
    check_name(name)
    if alias is not None:
        _check_alias(alias)
    user_tags = _check_tags(tags)
    with tempfile.TemporaryDirectory(prefix="saekit-register-") as tmp:
        folder = Path(tmp) / "artifact"
        given = Path(artifact).expanduser() if isinstance(artifact, (str, os.PathLike)) else None
        if given is not None:
            _stage(given, folder)
        elif _is_set(artifact):
            tset.save_set(artifact, folder)
        else:
            art.save_artifact(artifact, folder)
        set_info = None
        with _shown_as(folder, given):
            if tset.is_set(folder):
                set_info, cfg, hashes = tset.validate_set(folder)
            else:
                cfg, hashes = art.validate_artifact(folder)  # header, cfg, shapes, NaN; no torch needed
        sha = art.combine(hashes)
        client = _client()
        with _errors(repr(name)):
            existing = _canonical(_search(client, _ready_filter(name, sha=sha), newest_first=False))
            if existing:
                info = _info(existing[0])
                for key, value in user_tags.items():  # the caller's tags land on it too
                    _retry(client.set_model_version_tag, name, str(info.version), key, value)
                info.tags.update(user_tags)
            else:
                info = _register_new(client, name, folder, hashes, sha, cfg, user_tags, description, set_info)
            if alias:
                _retry(client.set_registered_model_alias, name, alias, str(info.version))
            if alias or existing:
                info.aliases = sorted(_aliases_of(client, name).get(info.version, []))
    _remember(info)
    return info


@contextlib.contextmanager
def _shown_as(staged: Path, given: Path | None) -> Iterator[None]:
    """Errors about the staging copy name the folder the user gave instead (the one they can
    open and fix); the copy is gone when the error is read."""
    try:
        yield
    except SaekitError as err:
        if given is not None:
            err.where, err.message = (None if t is None else t.replace(str(staged), str(given))
                                      for t in (err.where, err.message))
            err.args = (f"{err.where}: {err.message}" if err.where else err.message,)
        raise


def _stage(src: Path, dest: Path) -> Path:
    """Copy an artifact folder's files under the file rule (regular files inside it, no
    links), so what is validated is exactly what is uploaded."""
    if not src.is_dir():
        raise NotFoundError("no such artifact folder", where=str(src))
    dest.mkdir()
    if tset.is_set(src):
        tset.stage_set(src, dest)
        return dest
    for name in art.IDENTITY_FILES + art.OPTIONAL_FILES:
        if name in art.IDENTITY_FILES or safeio.exists(src, name):
            safeio.copy_file(src, name, dest / name)
    return dest


def _register_new(client, name, folder, hashes, sha, cfg, user_tags, description, set_info=None) -> VersionInfo:
    from mlflow.entities import RunStatus

    b = _backend()
    b.ensure_model(name)
    run = _retry(client.create_run, b.experiment_id(), run_name=name, tags={T.NAME: name, SHA: sha})
    run_id = run.info.run_id
    source = f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}"
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        for fname in sorted(hashes):  # a set's layer files under sae/layer_i
            _upload_file(run_id, folder / fname, str(PurePosixPath(ARTIFACT_PATH, fname).parent))
        # Verify the upload by reading it back; the verified copy becomes the cache entry.
        _download(VersionInfo(name, 0, sha, tags={FILES: json.dumps(hashes)}, run_id=run_id, source=source))
        tags = {**user_tags, **_meta_tags(cfg, sha, hashes, set_info)}
        mv = _create_version(client, name, source, run_id=run_id, tags=tags, description=description)
        _retry(client.set_model_version_tag, name, mv.version, READY, "true")
        status = RunStatus.to_string(RunStatus.FINISHED)
    finally:
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, status)
    # Two writers racing with identical content both get here; the lowest version wins
    # and the other withdraws its duplicate.
    same = _search(client, _ready_filter(name, sha=sha), newest_first=False)
    winner = min(same, key=lambda m: int(m.version)) if same else mv
    if int(winner.version) != int(mv.version):
        with contextlib.suppress(Exception):
            client.delete_model_version(name, mv.version)
        return _info(winner)
    info = _info(mv, [])
    info.tags = {**tags, READY: "true"}
    return info


def _create_version(client: MlflowClient, name: str, source: str, **kwargs: Any) -> Any:
    """A new model version of ``name``. A name deleted since this process created it
    (``Backend.ensure_model`` remembers) is created again: re-creating a name is supported."""
    try:
        return _retry(client.create_model_version, name, source, await_creation_for=0, **kwargs)
    except Exception as err:  # noqa: BLE001
        if backend.error_code(err) != "RESOURCE_DOES_NOT_EXIST":
            raise
    with contextlib.suppress(Exception):  # another process may have created it meanwhile
        _retry(client.create_registered_model, name)
    return _retry(client.create_model_version, name, source, await_creation_for=0, **kwargs)


def set_alias(name: str, alias: str, version: int | str) -> None:
    """Point ``name@alias`` at a ready version (moves it if it exists)."""
    check_name(name)
    _check_alias(alias)
    resolve(f"{name}/{int(version)}")  # must exist and be ready
    with _errors(f"{name}@{alias}"):
        _retry(_client().set_registered_model_alias, name, alias, str(int(version)))


def delete_alias(name: str, alias: str) -> None:
    """Remove ``name@alias``; NotFoundError if it does not exist."""
    check_name(name)
    _check_alias(alias)
    client = _client()
    with _errors(f"{name}@{alias}"):
        aliases = _aliases_of(client, name)
        if not any(alias in names for names in aliases.values()):
            raise NotFoundError(f"{name!r} has no alias {alias!r}", where=_where())
        _retry(client.delete_registered_model_alias, name, alias)


def set_tags(name: str, version: int | str, tags: dict[str, str]) -> None:
    """Set user tags on a ready version (saekit.* and metric.* are refused)."""
    _set_tags(name, version, _check_tags(tags))


def record_tags(name: str, version: int | str, tags: dict[str, str]) -> None:
    """Write saekit's own tags (the check's verdict and metrics, a release's Hub commit, a
    Hub source's provenance) on a ready version, with the backend's retries and its error
    translation (one-line saekit errors, masked URIs).

    Called only by the code that earns them (log_check, releases.publish,
    registry.hub_source); neither the CLI nor saekit.register reaches it. This is the one way
    in for them: no module outside this one and registry.backend uses their private names.
    """
    _set_tags(name, version, _check_tags(tags, allow_reserved=True))


def _set_tags(name: str, version: int | str, clean: dict[str, str]) -> None:
    info = resolve(f"{name}/{int(version)}")
    client = _client()
    with _errors(info.ref):
        for key, value in clean.items():
            _retry(client.set_model_version_tag, name, str(info.version), key, value)


def log_check(
    name: str,
    version: int | str,
    *,
    metrics: dict[str, float],
    files: list[Path],
    tags: dict[str, str],
    params: dict[str, Any] | None = None,
    data: DataInfo | None = None,
) -> str | None:
    """Record a check on a version: metrics on its MLflow run, files under ``checks/``, version
    tags. With ``params`` (the check's configuration) or ``data`` (its token set) the check
    also gets its own MLflow run, a child of the version's (MLflow params cannot change once
    logged, and a version is checked many times): params (nested keys flattened with '.'),
    the dataset as an MLflow dataset input and the metrics. Returns that run's id."""
    info = resolve(f"{name}/{int(version)}")
    if not info.run_id:
        raise RegistryError("version has no MLflow run to log to", where=info.ref)
    for path in files:
        if not Path(path).is_file():
            raise NotFoundError("no such file", where=str(path))
    client = _client()
    check_run = None
    with _errors(info.ref):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key=str(k), value=float(v), timestamp=now, step=0) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            _retry(client.log_batch, info.run_id, metrics=batch[i : i + 1000])
        for path in files:
            _retry(client.log_artifact, info.run_id, str(path), CHECKS_PATH)
        if params is not None or data is not None:
            check_run = _log_check_run(client, info, batch, params or {}, data, tags.get(T.EVAL_ID))
    if check_run is not None:
        tags = {**tags, T.CHECK_RUN: check_run}
    record_tags(name, info.version, tags)
    return check_run


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested configuration as MLflow params: ``{'cards.latents': '10', ...}``, None left out."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_params(v, key + "."))
        elif v is not None:
            out[key] = json.dumps(v) if isinstance(v, list) else str(v)
    return out


def _dataset_input(data: DataInfo) -> Any:
    """The token set as an MLflow dataset input: the Hub dataset at its commit (or the local
    or built-in source), digest = the windows' fingerprint (MLflow keeps 36 characters; the
    whole sha256 is the input's ``saekit.fingerprint`` tag)."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    if data.revision and data.dataset_id:
        from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

        source = HuggingFaceDatasetSource(path=data.dataset_id, split=data.split, revision=data.revision)
    else:
        from mlflow.data.code_dataset_source import CodeDatasetSource

        source = CodeDatasetSource(tags={"saekit.source": data.source})
    ds = MetaDataset(source=source, name=data.dataset_id or data.source, digest=data.fingerprint[:36])
    return DatasetInput(dataset=ds._to_mlflow_entity(), tags=[
        InputTag(key="mlflow.data.context", value="eval"), InputTag(key="saekit.fingerprint", value=data.fingerprint)])


def _log_check_run(client: MlflowClient, info: VersionInfo, metrics: list[Any], params: dict[str, Any],
                   data: DataInfo | None, eval_id: str | None) -> str:
    from mlflow.entities import Param, RunStatus

    tags = {T.NAME: info.name, "mlflow.parentRunId": info.run_id, **({T.EVAL_ID: eval_id} if eval_id else {})}
    run = _retry(client.create_run, _backend().experiment_id(), run_name=f"check {info.name}/{info.version}", tags=tags)
    run_id = run.info.run_id
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        flat = [Param(key=k, value=v[:6000]) for k, v in sorted(flat_params(params).items())]
        for i in range(0, len(flat), 100):
            _retry(client.log_batch, run_id, params=flat[i : i + 100])
        for i in range(0, len(metrics), 1000):
            _retry(client.log_batch, run_id, metrics=metrics[i : i + 1000])
        if data is not None:
            _retry(client.log_inputs, run_id, datasets=[_dataset_input(data)])
        status = RunStatus.to_string(RunStatus.FINISHED)
    finally:
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, status)
    return run_id


def check_files(name: str, version: int | str) -> dict[str, Path]:
    """Filename -> local path of the files last logged by ``log_check`` ({} if none)."""
    info = resolve(f"{name}/{int(version)}")
    if not info.run_id:
        return {}
    client = _client()
    with _errors(info.ref):
        listed = _retry(client.list_artifacts, info.run_id, CHECKS_PATH)
        if not listed:
            return {}
        dest = _cache_dir() / "checks" / info.name / str(info.version)
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True, exist_ok=True)
        local = Path(_retry(client.download_artifacts, info.run_id, CHECKS_PATH, str(dest)))
    return {p.name: p for p in sorted(local.iterdir()) if p.is_file()}
