"""Load a published SAE by ``hf://ORG/REPO@REV/SAE_ID`` (huggingface_hub's URI form):
download that SAE's folder pinned to the revision, verify every file against the release's
SHA256SUMS and the artifact against its sha256, then load it. A repo that is not a saekit
release (no SHA256SUMS) is read as a checkpoint of another library
(saekit.registry.hub_source: SAELens, sparsify, Gemma Scope, OpenAI), converted in memory.

The endpoint and cache are the settings' (``HF_ENDPOINT``, ``HF_HUB_CACHE``, read by
saekit.schemas.settings) at call time, not huggingface_hub's values from when it was
imported, so a process can point at a loopback Hub after the fact.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from saekit.registry.hub_source import (
    check_commit,
    check_listing,
    hub_api,
    is_network_error,
    quiet_progress,
    unreachable_message,
)
from saekit.schemas import IntegrityError, NotFoundError, PublishError, SAERef
from saekit.schemas.settings import current

if TYPE_CHECKING:
    from saekit.kernels import SAE
    from saekit.registry.refs import Ref


def cache_dir() -> str | None:
    """HF_HUB_CACHE of the settings in use (huggingface_hub reads it once, at import)."""
    return current().hub_cache


def endpoint() -> str | None:
    """The Hub endpoint to talk to: the settings' HF_ENDPOINT, or huggingface_hub's default."""
    value = current().hub_endpoint
    return value.rstrip("/") if value else None


def unreachable(err: Exception, where: str, url: str | None = None) -> PublishError:
    """A network failure talking to the Hub as one line naming the endpoint (masked)."""
    return PublishError(unreachable_message(err, url), where=where)


def _cached_blob(root: Path, rel: str, where: str) -> bytes:
    """A file of an HF cache snapshot: huggingface_hub stores it as a symlink into the
    repo's ``blobs/``; anything else (a link elsewhere, a device) is refused."""
    from saekit.schemas import UnsafePathError, safeio

    safeio.check_relpath(rel, where=where)
    path = root / rel
    blobs = (root.parent.parent / "blobs").resolve()
    if path.is_symlink():
        target = path.resolve()
        if target.parent != blobs:
            raise UnsafePathError(f"{rel}: links outside the Hub cache's blobs", where=where)
        return safeio.read_bytes(blobs, target.name)
    return safeio.read_bytes(root, rel)


def download_sae(ref: Ref) -> tuple[Path, dict, str]:
    """(local folder of the SAE, release.json, commit sha) for an hf:// reference, verified.

    The folder is a fresh staging copy (under a temporary folder the caller removes with
    ``shutil.rmtree(folder.parent)``) of exactly the verified bytes."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from saekit.registry.artifact import sha256_bytes
    from saekit.releases.bundle import RELEASE_JSON, SUMS, parse_sums

    repo, sae_id, rev = ref.hf_repo, ref.sae_id, ref.revision or "main"
    where = f"hf://{repo}@{rev}/{sae_id}"
    try:
        api = hub_api()
        with quiet_progress():
            info = api.repo_info(repo, revision=rev)
            commit = check_commit(rev, info.sha, where=where)
            check_listing([s.rfilename for s in info.siblings or []], where=where)
            local = snapshot_download(
                repo,
                revision=commit,  # pinned: the files all come from one commit
                allow_patterns=[f"{sae_id}/*", SUMS, RELEASE_JSON],
                endpoint=endpoint(),
                cache_dir=cache_dir(),
            )
    except RepositoryNotFoundError:
        raise NotFoundError(f"no repo {repo} on the Hub", where=where) from None
    except RevisionNotFoundError:
        raise NotFoundError(f"no revision {rev!r} in {repo}", where=where) from None
    except EntryNotFoundError as err:
        if isinstance(err, LocalEntryNotFoundError):  # not in the cache and the Hub unreachable
            raise unreachable(err, where) from None
        raise NotFoundError(f"missing file ({err.__class__.__name__})", where=where) from None
    except HfHubHTTPError as err:
        raise PublishError(f"Hub request failed ({(str(err).splitlines() or [''])[0]})", where=where) from None
    except Exception as err:  # noqa: BLE001 - a dead endpoint, a timeout, a reset connection
        if is_network_error(err):
            raise unreachable(err, where) from None
        raise
    from saekit.schemas import InputError, safeio

    root = Path(local)
    if root.name != commit:  # snapshot_download names the folder by the commit it was served
        raise IntegrityError(f"the Hub served another commit than {commit}", where=where)
    if not (root / SUMS).exists():
        raise IntegrityError(f"{SUMS} missing: not a saekit release", where=where)
    sums = parse_sums(_cached_blob(root, SUMS, where), where=where)
    wanted = [RELEASE_JSON] + sorted(p for p in sums if p.startswith(f"{sae_id}/"))
    if f"{sae_id}/cfg.json" not in sums and f"{sae_id}/set.json" not in sums:  # an SAE, or a transcoder set
        raise NotFoundError(f"no SAE folder {sae_id!r} in {repo}@{rev}", where=where)
    stage = Path(tempfile.mkdtemp(prefix="saekit-hf-"))
    try:
        blobs = {}
        for path in wanted:
            if not (root / path).exists() and not (root / path).is_symlink():
                raise IntegrityError(f"{path}: listed in {SUMS} but missing", where=where)
            data = _cached_blob(root, path, where)
            if sha256_bytes(data) != sums[path]:
                raise IntegrityError(f"{path}: sha256 mismatch against {SUMS}", where=where)
            blobs[path] = data
        try:
            release = safeio.load_json(blobs.pop(RELEASE_JSON), where=f"{where}: {RELEASE_JSON}")
        except InputError as err:
            raise IntegrityError(err.message, where=err.where) from None
        if not isinstance(release, dict):
            raise IntegrityError(f"{RELEASE_JSON} is not an object", where=where)
        folder = stage / "sae"
        for path, data in blobs.items():
            dest = folder / path[len(sae_id) + 1:]
            dest.parent.mkdir(parents=True, exist_ok=True)
            safeio.write_bytes(dest, data)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return folder, release, commit


def is_release(ref: Ref) -> bool:
    """Whether the repo at the reference's revision is a saekit release (SHA256SUMS or
    release.json at its root). A release missing its SHA256SUMS still loads as a release,
    and so is refused, never read unverified as another library's checkpoint."""
    from saekit.registry.hub_source import _hub_errors
    from saekit.releases.bundle import RELEASE_JSON, SUMS

    rev = ref.revision or "main"
    with _hub_errors(ref.text):
        info = hub_api().repo_info(ref.hf_repo, repo_type=ref.hf_type, revision=rev)
    check_commit(rev, info.sha, where=ref.text)
    names = check_listing([s.rfilename for s in info.siblings or []], where=ref.text)
    return any(name in (SUMS, RELEASE_JSON) for name in names)


def load_hf(ref: Ref) -> SAE:
    """Load ``hf://ORG/REPO@REV/SAE_ID`` verified (SHA256SUMS, then the artifact sha256);
    a repo of another library's checkpoints loads through saekit.registry.hub_source."""
    from saekit.registry.artifact import load_artifact

    if not is_release(ref):
        from saekit.registry.hub_source import load

        return load(ref)

    folder, release, commit = download_sae(ref)
    try:
        saes = release.get("saes") or release.get("sets")  # sets: saekit.releases.transcoder_release
        entry = next((s for s in saes if isinstance(s, dict) and s.get("sae_id") == ref.sae_id), None) \
            if isinstance(saes, list) else None
        if entry is None or not isinstance(entry.get("sha256"), str):
            raise NotFoundError(f"release.json lists no SAE {ref.sae_id!r}", where=ref.text)
        if (folder / "set.json").is_file():
            from saekit.registry.transcoder_set import load_set

            sae = load_set(folder, expected_sha256=entry["sha256"])
            sae.ref = SAERef(name=ref.sae_id, version=commit, sha256=entry["sha256"])
            return sae
        sae = load_artifact(folder, expected_sha256=entry["sha256"])
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
    sae.ref = SAERef(name=ref.sae_id, version=commit, sha256=entry["sha256"], d_sae=sae.cfg.d_sae)
    return sae
