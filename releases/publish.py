"""Publish a built bundle to the Hugging Face Hub: one commit, one tag, recorded back on
the registry versions. Idempotent: the same bundle published again changes nothing.

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
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from saekit.registry import tags as T
from saekit.releases.bundle import SUMS, parse_sums, read_sums, verify
from saekit.schemas import GateFailedError, InputError, PublishError, safeio
from saekit.schemas.console import say
from saekit.schemas.masking import mask

_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


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


def _clean(err: Exception) -> str:
    """One line of an HTTP error, with secrets masked."""
    return mask((str(err).splitlines() or [err.__class__.__name__])[0])


def _remote_sums(api, repo_id: str, revision: str) -> dict[str, str] | None:
    """SHA256SUMS at a revision of the repo, or None when it has none."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from saekit.releases.hub import cache_dir

    try:
        path = hf_hub_download(repo_id, SUMS, revision=revision, endpoint=api.endpoint, cache_dir=cache_dir())
    except EntryNotFoundError:
        return None
    return parse_sums(Path(path).read_bytes(), where=f"{repo_id}@{revision}/{SUMS}")


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

    Refuses a bundle whose SHA256SUMS do not match or whose SAEs did not pass their gate.
    ``endpoint``: Hub URL (default HF_ENDPOINT or huggingface.co). ``record``: write
    saekit.hub_commit / hub_repo / hub_tag on the registry versions.
    """
    root = Path(bundle_dir)
    release = verify(root)
    for s in release.get("saes", []):
        if s.get("gate") != "pass":
            raise GateFailedError(f"gate did not pass for {s.get('sae_id')!r}; refusing to publish", where=str(root))
    if not release.get("saes"):
        raise InputError("release.json lists no SAEs", where=str(root))
    repo_id = repo_id or release.get("hub_repo")
    if not isinstance(repo_id, str) or not _REPO_RE.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id:
        raise InputError("expected ORG/NAME", where=repo_id)
    tag = release["tag"]
    if not re.fullmatch(r"v[0-9A-Za-z.+-]{1,100}", tag):
        raise InputError(f"release.json tag {tag!r} is not v<version>", where=str(root))
    sums = read_sums(root)
    files = sorted(sums) + [SUMS]
    if dry_run:
        return PublishResult(repo_id, tag, None, True, True, files,
                             message=f"dry run: would commit {len(files)} files to {repo_id} and tag {tag}")

    from saekit.registry.hub_source import hub_api, quiet_progress

    api = hub_api(endpoint)
    with quiet_progress():
        try:
            result = _publish(api, root, release, repo_id, tag, sums, files, private)
        except Exception as err:  # noqa: BLE001 - a dead endpoint, a timeout: one line naming it
            from saekit.releases.hub import is_network_error, unreachable

            if is_network_error(err):
                raise unreachable(err, repo_id, api.endpoint) from None
            raise
    result.url = mask(f"{api.endpoint}/{repo_id}/tree/{tag}")
    if record:
        result.registry_updated = _record(release, repo_id, tag, result.commit)
    say(f"publish: {result.message}")
    return result


def _publish(api, root: Path, release: dict[str, Any], repo_id: str, tag: str, sums: dict[str, str],
             files: list[str], private: bool) -> PublishResult:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import logging as hf_logging

    from saekit.registry.hub_source import check_listing

    try:
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
                    remote_files = set(check_listing([f.path for f in api.list_repo_tree(
                        repo_id, recursive=True, revision=head) if isinstance(f, RepoFile)], where=repo_id))
                with contextlib.ExitStack() as stack:
                    ops: list[Any] = [
                        # Open binary files: huggingface_hub uploads these with the LFS protocol.
                        CommitOperationAdd(path_in_repo=p, path_or_fileobj=stack.enter_context(safeio.open_regular(root, p)))
                        for p in files
                    ]
                    ops += [CommitOperationDelete(path_in_repo=p) for p in sorted(remote_files - set(files))
                            if p != ".gitattributes"]
                    verbosity = hf_logging.get_verbosity()
                    hf_logging.set_verbosity_error()  # the "falling back to HTTP upload" notice
                    try:
                        say(f"publish: committing {len(files)} files to {repo_id}")
                        info = api.create_commit(
                            repo_id,
                            ops,
                            commit_message=f"Release {release.get('release_id', '')} {tag}",
                            commit_description=f"saekit release bundle, {len(files)} files; see release.json and SHA256SUMS.",
                            parent_commit=head,
                        )
                    finally:
                        hf_logging.set_verbosity(verbosity)
                commit, changed = info.oid, True
            api.create_tag(repo_id, tag=tag, revision=commit, tag_message=f"saekit release {release.get('release_id', '')} {tag}")
            result = PublishResult(repo_id, tag, commit, True, False, files,
                                   message=f"published {repo_id}@{tag} (commit {commit[:12]})"
                                   + ("" if changed else "; files were already on main, tagged only"))
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status == 412:
            raise PublishError(f"{repo_id} changed since the parent commit we compared against; publish again",
                               where=repo_id) from None
        raise PublishError(f"Hub refused: {_clean(err)}", where=repo_id) from None
    return result


def _record(release: dict[str, Any], repo_id: str, tag: str, commit: str | None) -> list[str]:
    """Tag each registry version of the release with where it was published."""
    from saekit.registry import store
    from saekit.schemas import SaekitError

    done = []
    for s in release["saes"]:
        reg = s.get("registry") or {}
        try:
            info = store.resolve(f"{reg['name']}/{reg['version']}")
            if info.sha256 != s["sha256"]:
                continue
            want = {T.HUB_COMMIT: commit or "", T.HUB_REPO: repo_id, T.HUB_TAG: tag}
            if any(info.tags.get(k) != v for k, v in want.items()):
                store.record_tags(reg["name"], int(reg["version"]), want)
            done.append(f"{reg['name']}/{reg['version']}")
        except (SaekitError, KeyError):
            # Published from a machine whose registry does not hold the version: nothing to record.
            continue
    return done
