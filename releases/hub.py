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

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from saekit.schemas import IntegrityError, NotFoundError, PublishError, SAERef
from saekit.schemas.settings import current

if TYPE_CHECKING:
    from saekit.kernels import SAE
    from saekit.registry.refs import Ref


def cache_dir() -> str | None:
    """HF_HUB_CACHE of the settings in use (huggingface_hub reads it once, at import)."""
    return current().hub_cache


@contextmanager
def quiet_progress() -> Iterator[None]:
    """huggingface_hub's progress bars off while saekit is quiet (SAEKIT_QUIET, --quiet)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if not current().quiet or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


def endpoint() -> str | None:
    """The Hub endpoint to talk to: the settings' HF_ENDPOINT, or huggingface_hub's default."""
    value = current().hub_endpoint
    return value.rstrip("/") if value else None


def download_sae(ref: Ref) -> tuple[Path, dict, str]:
    """(local folder of the SAE, release.json, commit sha) for an hf:// reference, verified."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from saekit.registry.artifact import sha256_file
    from saekit.releases.bundle import RELEASE_JSON, SUMS, parse_sums

    repo, sae_id, rev = ref.hf_repo, ref.sae_id, ref.revision or "main"
    where = f"hf://{repo}@{rev}/{sae_id}"
    try:
        api = HfApi(endpoint=endpoint())
        with quiet_progress():
            commit = api.repo_info(repo, revision=rev).sha
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
        raise NotFoundError(f"missing file ({err.__class__.__name__})", where=where) from None
    except HfHubHTTPError as err:
        raise PublishError(f"Hub request failed ({str(err).splitlines()[0]})", where=where) from None
    root = Path(local)
    if not (root / SUMS).is_file():
        raise IntegrityError(f"{SUMS} missing: not a saekit release", where=where)
    sums = parse_sums((root / SUMS).read_text(), where=where)
    folder = root / sae_id
    if not (folder / "cfg.json").is_file():
        raise NotFoundError(f"no SAE folder {sae_id!r} in {repo}@{rev}", where=where)
    for path in [RELEASE_JSON] + sorted(p.relative_to(root).as_posix() for p in folder.rglob("*") if p.is_file()):
        if path not in sums:
            raise IntegrityError(f"{path}: not listed in {SUMS}", where=where)
        if sha256_file(root / path) != sums[path]:
            raise IntegrityError(f"{path}: sha256 mismatch against {SUMS}", where=where)
    release = json.loads((root / RELEASE_JSON).read_text())
    return folder, release, commit


def is_release(ref: Ref) -> bool:
    """Whether the repo at the reference's revision is a saekit release (SHA256SUMS or
    release.json at its root). A release missing its SHA256SUMS still loads as a release,
    and so is refused, never read unverified as another library's checkpoint."""
    from huggingface_hub import HfApi

    from saekit.registry.hub_source import _hub_errors
    from saekit.releases.bundle import RELEASE_JSON, SUMS

    with _hub_errors(ref.text):
        info = HfApi(endpoint=endpoint()).repo_info(ref.hf_repo, repo_type=ref.hf_type, revision=ref.revision or "main")
    return any(s.rfilename in (SUMS, RELEASE_JSON) for s in info.siblings or [])


def load_hf(ref: Ref) -> SAE:
    """Load ``hf://ORG/REPO@REV/SAE_ID`` verified (SHA256SUMS, then the artifact sha256);
    a repo of another library's checkpoints loads through saekit.registry.hub_source."""
    from saekit.registry.artifact import load_artifact

    if not is_release(ref):
        from saekit.registry.hub_source import load

        return load(ref)

    folder, release, commit = download_sae(ref)
    entry = next((s for s in release.get("saes", []) if s.get("sae_id") == ref.sae_id), None)
    if entry is None:
        raise NotFoundError(f"release.json lists no SAE {ref.sae_id!r}", where=ref.text)
    sae = load_artifact(folder, expected_sha256=entry["sha256"])
    sae.ref = SAERef(name=ref.sae_id, version=commit, sha256=entry["sha256"], d_sae=sae.cfg.d_sae)
    return sae
