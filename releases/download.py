"""Load a published SAE by ``hf://ORG/REPO@REV/SAE_ID`` (huggingface_hub's URI form):
download that SAE's folder pinned to the revision, verify every file against the release's
SHA256SUMS and the artifact against its sha256, then load it. A repo that is not a saekit
release (no SHA256SUMS) is read as a checkpoint of another library
(saekit.registry.hub_source: SAELens, sparsify, Gemma Scope, OpenAI), converted in memory.

The Hub is reached through saekit.registry.hub (the settings' endpoint and cache at call
time, requests bounded in time, failures as one line).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from saekit.registry.hub import cache_dir, check_commit, check_listing, endpoint, hub_api, hub_errors, quiet_progress
from saekit.releases.bundle import RELEASE_JSON, SUMS, parse_release, parse_sums
from saekit.schemas import IntegrityError, NotFoundError, SAERef
from saekit.schemas.release import ReleaseBundle

if TYPE_CHECKING:
    from saekit.kernels import SAE
    from saekit.registry.refs import Ref


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


def download_sae(ref: Ref) -> tuple[Path, ReleaseBundle | dict, str]:
    """(local folder of the SAE, release.json, commit sha) for an hf:// reference, verified.

    The folder is a fresh staging copy (under a temporary folder the caller removes with
    ``shutil.rmtree(folder.parent)``) of exactly the verified bytes."""
    from huggingface_hub import snapshot_download

    from saekit.registry.artifact import sha256_bytes

    repo, sae_id, rev = ref.hf_repo, ref.sae_id, ref.revision or "main"
    where = f"hf://{repo}@{rev}/{sae_id}"
    with hub_errors(where), quiet_progress():
        info = hub_api().repo_info(repo, revision=rev)
        commit = check_commit(rev, info.sha, where=where)
        check_listing([s.rfilename for s in info.siblings or []], where=where)
        local = snapshot_download(
            repo,
            revision=commit,  # pinned: the files all come from one commit
            allow_patterns=[f"{sae_id}/*", SUMS, RELEASE_JSON],
            endpoint=endpoint(),
            cache_dir=cache_dir(),
        )
    from saekit.schemas import safeio

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
        data = blobs.pop(RELEASE_JSON)
        if f"{sae_id}/set.json" in sums:  # a transcoder set: its own release.json (a dict, checked there)
            from saekit.releases.transcoder_release import parse_set_release

            release = parse_set_release(data, where=f"{where}: {RELEASE_JSON}")
        else:
            release = parse_release(data, sums, where=f"{where}: {RELEASE_JSON}")
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
    rev = ref.revision or "main"
    with hub_errors(ref.text):
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
        if isinstance(release, dict):  # a transcoder set release (saekit.releases.transcoder_release)
            from saekit.releases.transcoder_release import load_released_set

            return load_released_set(folder, release, ref.sae_id, commit, where=ref.text)
        entry = next((s for s in release.saes if s.sae_id == ref.sae_id), None)
        if entry is None:
            raise NotFoundError(f"release.json lists no SAE {ref.sae_id!r}", where=ref.text)
        sae = load_artifact(folder, expected_sha256=entry.sha256)
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
    sae.ref = SAERef(name=ref.sae_id, version=commit, sha256=entry.sha256, d_sae=sae.cfg.d_sae)
    return sae
