"""Publish a built bundle to the Hugging Face Hub: one commit, one tag, recorded back on
the registry versions. Idempotent: the same bundle published again changes nothing.

Only a bundle saekit built from checked SAEs goes up: every file is read once, from one open
descriptor, into a private unnamed temporary copy while it is hashed; the hashes must match
SHA256SUMS, release.json must parse as saekit's ReleaseBundle, and every SAE must be, in the
registry now, the version whose check record passed (releases.gate.checked_record). The
copies are what is uploaded: the bytes hashed are the bytes sent, whatever happens to the
folder meanwhile.

Only through huggingface_hub: ``create_repo(exist_ok=True)``, ``create_commit`` with
``parent_commit`` pinned to the head we compared against (a concurrent push fails loudly
instead of being overwritten), ``create_tag``. Large files go by the LFS protocol: they are
handed to huggingface_hub as open binary files, which its commit API uploads with the
regular LFS "basic" transfer (huggingface_hub 2.4 ``_commit_api._upload_files``: buffered IO
is not sent through Xet). The token comes from huggingface_hub's usual places (HF_TOKEN,
the saved login); saekit never reads, prints or stores it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from saekit.registry import tags as T
from saekit.registry.hub import cache_dir, check_listing as check_hub_listing, hub_api, hub_errors, quiet_progress
from saekit.releases.bundle import MAX_SUMS_BYTES, RELEASE_JSON, SUMS, check_listing, parse_release, parse_sums
from saekit.releases.gate import checked_record
from saekit.schemas import GateFailedError, InputError, IntegrityError, NotFoundError, PublishError, safeio
from saekit.schemas.console import say
from saekit.schemas.masking import mask
from saekit.schemas.release import GatePolicy, ReleaseBundle, ReleaseManifest

_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# The Hub takes no file over 50 GB (https://huggingface.co/docs/hub/en/repositories-recommendations);
# the private copy of a bigger bundle file is not made.
MAX_FILE_BYTES = 50 * 10**9


class TagConflictError(PublishError):
    """The release's tag already exists on the Hub with different content: ``tag v1.0.0 already exists on org/x ...``."""


@dataclass
class PublishResult:
    """What a publish did (or, with dry_run, would do)."""

    repo_id: str
    tag: str
    commit: str | None
    """Commit sha the tag points to (None on a dry run)."""
    changed: bool
    """False when the Hub already held exactly this bundle at the tag."""
    dry_run: bool
    files: list[str] = field(default_factory=list)
    url: str | None = None
    registry_updated: list[str] = field(default_factory=list)
    """name/version of each registry version tagged with the Hub commit."""
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _remote_sums(api, repo_id: str, revision: str) -> dict[str, str] | None:
    """SHA256SUMS at a revision of the repo, or None when it has none."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = hf_hub_download(repo_id, SUMS, revision=revision, endpoint=api.endpoint, cache_dir=cache_dir())
    except EntryNotFoundError:
        return None
    return parse_sums(Path(path).read_bytes(), where=f"{repo_id}@{revision}/{SUMS}")


@dataclass
class _Snapshot:
    """A bundle as read once: SHA256SUMS' bytes and entries, release.json's bytes, and a private
    copy of every other file (unnamed temporary files, positioned at their start)."""

    sums_bytes: bytes
    sums: dict[str, str]
    release_bytes: bytes
    copies: dict[str, IO[bytes]]


def _snapshot(root: Path, stack: contextlib.ExitStack) -> _Snapshot:
    """Read the bundle at ``root`` once, checking it as it is copied (see the module docstring)."""
    if not root.is_dir():
        raise NotFoundError("no such bundle folder", where=str(root))
    if not safeio.exists(root, SUMS):
        raise NotFoundError(f"no {SUMS}: not a saekit bundle", where=str(root))
    sums_bytes = safeio.read_bytes(root, SUMS, max_bytes=MAX_SUMS_BYTES)
    sums = parse_sums(sums_bytes, where=str(root / SUMS))
    check_listing(set(safeio.list_files(root)) - {SUMS}, sums, where=str(root))
    copies: dict[str, IO[bytes]] = {}
    for rel, want in sums.items():
        copy = stack.enter_context(tempfile.TemporaryFile())  # unnamed: nothing else can open it
        digest, size = hashlib.sha256(), 0
        with safeio.open_regular(root, rel) as src:
            for block in iter(lambda: src.read(1 << 22), b""):
                size += len(block)
                if size > MAX_FILE_BYTES:
                    raise InputError(f"{rel}: larger than the Hub's {MAX_FILE_BYTES} bytes per file", where=str(root))
                digest.update(block)
                copy.write(block)
        if digest.hexdigest() != want:
            raise IntegrityError(f"{rel}: sha256 mismatch ({SUMS} {want[:12]}, file {digest.hexdigest()[:12]})",
                                 where=str(root))
        copy.seek(0)
        copies[rel] = copy
    data = copies[RELEASE_JSON].read(safeio.JSON_LIMITS.max_file_bytes + 1)
    copies[RELEASE_JSON].seek(0)
    if len(data) > safeio.JSON_LIMITS.max_file_bytes:
        raise IntegrityError("larger than the JSON limit", where=str(root / RELEASE_JSON))
    return _Snapshot(sums_bytes, sums, data, copies)


def _check_registry(snap: _Snapshot, where: str) -> None:
    """Every SAE release.json lists is, in the registry now, the version it names, with the
    same sha256 as the bundle's cfg.json and weights, and a passing check record
    (checked_record) that is the bundle's eval.json. Asked before anything else release.json
    says is trusted, so that a hand-written bundle is refused naming its SAE (GateFailedError)."""
    from pydantic import ValidationError

    from saekit.registry import store
    from saekit.registry.artifact import IDENTITY_FILES, combine

    try:
        release = safeio.load_json(snap.release_bytes, where=f"{where}/{RELEASE_JSON}")
    except InputError as err:
        raise IntegrityError(err.message, where=err.where) from None
    saes = release.get("saes") if isinstance(release, dict) else None
    if not isinstance(saes, list) or not saes:
        raise IntegrityError("lists no SAEs", where=f"{where}/{RELEASE_JSON}")
    try:
        gate = ReleaseManifest.model_validate(release.get("manifest")).gate
    except ValidationError:
        gate = GatePolicy()  # the model check after this refuses the bundle anyway
    for sae in saes:
        sae = sae if isinstance(sae, dict) else {}
        pin = sae.get("registry") if isinstance(sae.get("registry"), dict) else {}
        sid, pinned, sha = sae.get("sae_id"), f"{pin.get('name')}/{pin.get('version')}", str(sae.get("sha256"))
        label = f"sae_id {sid!r}"

        def refuse(why: str) -> GateFailedError:
            return GateFailedError(f"gate failed for {label} ({pinned}): {why}; refusing to publish", where=where)

        if not isinstance(sid, str) or not isinstance(pin.get("name"), str) or type(pin.get("version")) is not int:
            raise refuse("release.json names no registry version for it")
        try:
            info = store.resolve(pinned)
        except (NotFoundError, InputError):
            raise refuse("no such version in this registry (publish from the registry the bundle was built "
                         "from)") from None
        if info.sha256 != sha:
            raise refuse(f"release.json says sha256 {sha[:12]!r}, the registry {info.sha256[:12]}")
        try:
            bundled = combine({name: snap.sums[f"{sid}/{name}"] for name in IDENTITY_FILES})
        except KeyError:
            raise refuse(f"the bundle has no {' and '.join(IDENTITY_FILES)} for it") from None
        if bundled != info.sha256:
            raise refuse(f"the bundle's files hash to sha256 {bundled[:12]}, not the version's {info.sha256[:12]}")
        try:
            info, _, checks = checked_record(gate, label, info, run_checks=False, where=where)
        except GateFailedError as err:
            raise GateFailedError(f"{err.message}; refusing to publish", where=where) from None
        if safeio.sha256(checks["eval.json"].parent, "eval.json") != snap.sums.get(f"{sid}/eval.json"):
            raise refuse("the bundle's eval.json is not the registry's check record (rebuild the bundle)")


def publish(
    bundle_dir: str | os.PathLike,
    repo_id: str | None = None,
    *,
    dry_run: bool = False,
    endpoint: str | None = None,
    private: bool = False,
    record: bool = True,
) -> PublishResult:
    """Publish ``bundle_dir`` to ``repo_id`` (default: the manifest's hub_repo) and tag it
    ``v<version>``.

    Refuses a bundle whose SHA256SUMS do not match, that saekit did not build, or whose SAEs
    are not, in the registry now, versions with a passing check record (see the module
    docstring); a dry run checks all of that too. ``endpoint``: Hub URL (default HF_ENDPOINT
    or huggingface.co). ``record``: write saekit.hub_commit / hub_repo / hub_tag on the
    registry versions.
    """
    root = Path(bundle_dir)
    with contextlib.ExitStack() as stack:
        snap = _snapshot(root, stack)
        _check_registry(snap, str(root))
        release = parse_release(snap.release_bytes, snap.sums, where=str(root / RELEASE_JSON))
        repo_id = repo_id or release.hub_repo
        if not _REPO_RE.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id:
            raise InputError("expected ORG/NAME", where=repo_id)
        tag = release.tag
        if not re.fullmatch(r"v[0-9A-Za-z.+-]{1,100}", tag):
            raise InputError(f"release.json tag {tag!r} is not v<version>", where=str(root))
        files = sorted(snap.sums) + [SUMS]
        if dry_run:
            return PublishResult(repo_id, tag, None, True, True, files,
                                 message=f"dry run: would commit {len(files)} files to {repo_id} and tag {tag}")
        api = hub_api(endpoint)
        with quiet_progress(), hub_errors(repo_id, failure=PublishError, url=api.endpoint):
            result = _publish(api, root, snap, release, repo_id, tag, private)
    result.url = mask(f"{api.endpoint}/{repo_id}/tree/{tag}")
    if record:
        result.registry_updated = _record(release, repo_id, tag, result.commit)
    say(f"publish: {result.message}")
    return result


def _publish(api, root: Path, snap: _Snapshot, release: ReleaseBundle, repo_id: str, tag: str,
             private: bool) -> PublishResult:
    """The Hub side of publish; huggingface_hub's failures are translated by the caller (hub_errors)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import logging as hf_logging

    sums = snap.sums
    files = sorted(sums) + [SUMS]
    api.create_repo(repo_id, exist_ok=True, private=private)
    refs = api.list_repo_refs(repo_id)
    tags = {t.name: t.target_commit for t in refs.tags}
    branches = {b.name: b.target_commit for b in refs.branches}
    if tag in tags:
        remote = _remote_sums(api, repo_id, tags[tag])
        if remote != sums:
            raise TagConflictError(
                f"tag {tag} already exists on {repo_id} with different content; bump the release version",
                where=str(root),
            )
        result = PublishResult(repo_id, tag, tags[tag], False, False, files,
                               message=f"{repo_id}@{tag} already holds this bundle (commit {tags[tag][:12]}); nothing changed")
    else:
        head = branches.get("main")
        if head is not None and _remote_sums(api, repo_id, head) == sums:
            commit, changed = head, False  # committed before, the tag was not made
        else:
            remote_files = set()
            if head is not None:
                remote_files = set(check_hub_listing([f.path for f in api.list_repo_tree(
                    repo_id, recursive=True, revision=head) if isinstance(f, RepoFile)], where=repo_id))
            # The private copies (open binary files: huggingface_hub uploads these with the
            # LFS protocol) and SHA256SUMS' bytes, exactly what was hashed.
            ops: list[Any] = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=snap.copies[p]) for p in sorted(sums)]
            ops.append(CommitOperationAdd(path_in_repo=SUMS, path_or_fileobj=snap.sums_bytes))
            ops += [CommitOperationDelete(path_in_repo=p) for p in sorted(remote_files - set(files))
                    if p != ".gitattributes"]
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # the "falling back to HTTP upload" notice
            try:
                say(f"publish: committing {len(files)} files to {repo_id}")
                info = api.create_commit(
                    repo_id,
                    ops,
                    commit_message=f"Release {release.release_id} {tag}",
                    commit_description=f"saekit release bundle, {len(files)} files; see release.json and SHA256SUMS.",
                    parent_commit=head,
                )
            finally:
                hf_logging.set_verbosity(verbosity)
            commit, changed = info.oid, True
        api.create_tag(repo_id, tag=tag, revision=commit, tag_message=f"saekit release {release.release_id} {tag}")
        result = PublishResult(repo_id, tag, commit, True, False, files,
                               message=f"published {repo_id}@{tag} (commit {commit[:12]})"
                               + ("" if changed else "; files were already on main, tagged only"))
    return result


def _record(release: ReleaseBundle, repo_id: str, tag: str, commit: str | None) -> list[str]:
    """Tag each registry version of the release with where it was published."""
    from saekit.registry import store
    from saekit.schemas import SaekitError

    done = []
    for s in release.saes:
        pinned = f"{s.registry.name}/{s.registry.version}"
        try:
            info = store.resolve(pinned)
            if info.sha256 != s.sha256:
                continue
            want = {T.HUB_COMMIT: commit or "", T.HUB_REPO: repo_id, T.HUB_TAG: tag}
            if any(info.tags.get(k) != v for k, v in want.items()):
                store.record_tags(s.registry.name, s.registry.version, want)
            done.append(pinned)
        except SaekitError:
            # Published from a machine whose registry does not hold the version: nothing to record.
            continue
    return done
