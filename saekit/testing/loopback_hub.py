"""A loopback Hugging Face Hub: the part of the Hub HTTP API that huggingface_hub uses to
create a repo, commit (regular files inline, large files by the legacy LFS "basic" transfer),
tag, list refs and trees, resolve revisions and download files.

The real Hub cannot be reached from where saekit is built and tested, so publishing and
``hf://`` loading are exercised against this server, always through the real
``huggingface_hub`` client (``HfApi(endpoint=...)`` or ``HF_ENDPOINT``). The request and
response shapes follow huggingface_hub 2.4's callers: ``hf_api.create_repo`` (POST
/api/repos/create), ``_commit_api._fetch_upload_modes`` (POST .../preupload/REV),
``lfs.post_lfs_batch_info`` (POST REPO.git/info/lfs/objects/batch), ``_commit_api._send_commit``
(NDJSON POST .../commit/REV), ``hf_api.create_tag``, ``hf_api.list_repo_refs``,
``hf_api.model_info``, ``hf_api.list_repo_tree`` and ``file_download.get_hf_file_metadata``
(HEAD /REPO/resolve/REV/PATH with X-Repo-Commit, ETag, X-Linked-Etag, X-Linked-Size).

Storage: one folder per repo with content-addressed blobs (``objects/<sha256>``), one JSON
file per commit (parent, message, path -> blob) whose id is the sha1 of that JSON, and
``refs.json`` (branches and tags).

This is a TEST DOUBLE, not a Hub: it binds to 127.0.0.1 only, has no users, accepts any
token (it never stores or logs one) and lets any local process write any repo. What it
does guarantee is that nothing a client sends reaches outside its root folder: repo ids
are validated as the Hub validates them (``ORG/NAME``, letters, digits, ``. _ -``, no
``..`` or ``--``, at most 96 characters each), file paths in commits are plain relative
paths, LFS oids are 64 hex digits and must be the sha256 of the bytes uploaded, a file
is answered with the size of the bytes stored (never a size a client declared), and
request bodies are bounded (``MAX_BODY``).

Dataset repos live beside model repos, as on the Hub: ``repo_type="dataset"`` calls go to
``/api/datasets/ORG/NAME/...``, ``/datasets/ORG/NAME.git/info/lfs/...`` and
``/datasets/ORG/NAME/resolve/REV/PATH`` (huggingface_hub 2.4 builds them from
``constants.REPO_TYPES_URL_PREFIXES``), with the same checks; a model and a dataset may
share an ``ORG/NAME``. Inside ``RepoStore`` a repo is named by its key: ``ORG/NAME`` for a
model, ``datasets/ORG/NAME`` for a dataset (``repo_key``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# Files the Hub stores with LFS: binary content (a NUL in the sample the client sends, as
# the Hub decides) or anything over 10 MB, or a safetensors file (.gitattributes default).
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".npz", ".png")
_LFS_MIN_SIZE = 10 * 1024 * 1024
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"
_REPO = r"(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95})"
_REPO_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_OID = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_BODY = 2 << 30  # bytes of one request body (an LFS upload included)
# Files a browser would run as a page or script if served under their own type. The Hub
# (huggingface.co/REPO/resolve/REV/PATH) does not render them on its origin: a repository's
# index.html shows as text or downloads. The loopback does the same, so a test that opens a
# resolve URL sees what a Hub user sees (to view a release's browser: download it, or put it
# in a static Space; docs/releases.md).
_ACTIVE_SUFFIXES = (".html", ".htm", ".xhtml", ".svg", ".js", ".mjs", ".xml")


def _content_type(path: str) -> str:
    if path.lower().endswith(_ACTIVE_SUFFIXES):
        return "text/plain; charset=utf-8"
    return "application/octet-stream"


def check_repo_id(repo: str) -> str:
    """``ORG/NAME`` as the Hub accepts it (huggingface_hub.utils.validate_repo_id)."""
    parts = repo.split("/") if isinstance(repo, str) else []
    if (
        len(parts) != 2
        or not all(_REPO_PART.fullmatch(p) for p in parts)
        or ".." in repo
        or "--" in repo
        or repo.endswith(".git")
    ):
        raise HubRequestError(400, f"invalid repo id {repo!r}: expected ORG/NAME of letters, digits, '.', '_', '-'")
    return repo


REPO_TYPES = ("model", "dataset")


def repo_key(repo: str, repo_type: str = "model") -> str:
    """The store's name of a repo: ``ORG/NAME`` (model) or ``datasets/ORG/NAME`` (dataset)."""
    if repo_type not in REPO_TYPES:
        raise HubRequestError(400, f"the loopback hub holds model and dataset repos, not {str(repo_type)[:40]!r}")
    check_repo_id(repo)
    if repo_type == "model" and repo.split("/")[0] in ("datasets", "spaces", "models"):
        # the Hub reserves these names: /datasets/ORG/NAME/... must mean one repo only
        raise HubRequestError(400, f"invalid repo id {repo!r}: {repo.split('/')[0]!r} is a reserved name")
    return repo if repo_type == "model" else f"datasets/{repo}"


def check_path(path: str) -> str:
    """A file path inside a repo: relative, no '.', '..' or empty segment, no backslash."""
    if (
        not isinstance(path, str)
        or not path
        or len(path) > 1000
        or path.startswith("/")
        or "\\" in path
        or _CONTROL.search(path)
        or any(p in ("", ".", "..") for p in path.split("/"))
    ):
        raise HubRequestError(400, f"invalid path in repo: {path!r}")
    return path


def check_oid(oid: str) -> str:
    """An LFS oid: the sha256 of the object, 64 lowercase hex digits."""
    if not isinstance(oid, str) or not _OID.fullmatch(oid):
        raise HubRequestError(400, f"invalid LFS oid {str(oid)[:80]!r}: expected 64 hex digits (sha256)")
    return oid


def git_blob_oid(data: bytes) -> str:
    """git's object id of a blob (what the Hub reports as a regular file's oid and ETag)."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class HubRequestError(Exception):
    """An HTTP error answer with the Hub's X-Error-Code header."""

    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


@dataclass
class _Entry:
    sha256: str
    size: int
    lfs: bool
    oid: str  # git blob oid (regular) or sha1 of the LFS pointer (what git would store)


class RepoStore:
    """Repos on disk: blobs by sha256, commits as JSON, branches and tags."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()

    # -- layout ------------------------------------------------------------------------
    def _dir(self, repo: str) -> Path:
        """``repo``: a ``repo_key``; a dataset's folder is under ``datasets/``, a model's under ``repos/``."""
        if repo.startswith("datasets/"):
            return self.root / "datasets" / check_repo_id(repo.removeprefix("datasets/"))
        return self.root / "repos" / check_repo_id(repo)

    def _blob(self, sha256: str) -> Path:
        check_oid(sha256)
        return self.root / "objects" / sha256[:2] / sha256

    def exists(self, repo: str) -> bool:
        return (self._dir(repo) / "refs.json").is_file()

    def refs(self, repo: str) -> dict[str, dict[str, str]]:
        if not self.exists(repo):
            raise HubRequestError(404, f"Repository {repo} not found", "RepoNotFound")
        return json.loads((self._dir(repo) / "refs.json").read_text())

    def _write_refs(self, repo: str, refs: dict) -> None:
        tmp = self._dir(repo) / "refs.json.tmp"
        tmp.write_text(json.dumps(refs, indent=1, sort_keys=True))
        tmp.replace(self._dir(repo) / "refs.json")

    def put_blob(self, data: bytes, expected_sha256: str | None = None) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if expected_sha256 is not None and sha != expected_sha256:
            raise HubRequestError(400, f"content sha256 {sha} does not match oid {expected_sha256}")
        path = self._blob(sha)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp%d" % threading.get_ident())
            tmp.write_bytes(data)
            tmp.replace(path)
        return sha

    def has_blob(self, sha256: str) -> bool:
        return self._blob(sha256).is_file()

    def read_blob(self, sha256: str) -> bytes:
        return self._blob(sha256).read_bytes()

    def blob_size(self, sha256: str) -> int:
        return self._blob(sha256).stat().st_size

    # -- commits -----------------------------------------------------------------------
    def commit(self, repo: str, sha: str) -> dict[str, Any]:
        path = self._dir(repo) / "commits" / f"{sha}.json"
        if not path.is_file():
            raise HubRequestError(404, f"Invalid rev id: {sha}", "RevisionNotFound")
        return json.loads(path.read_text())

    def resolve(self, repo: str, rev: str) -> str:
        """A branch, tag or (full or 7+ char) commit id -> commit id."""
        refs = self.refs(repo)
        for kind in ("branches", "tags"):
            if rev in refs[kind]:
                return refs[kind][rev]
        if re.fullmatch(r"[0-9a-f]{7,40}", rev):
            hits = [p.stem for p in (self._dir(repo) / "commits").glob(f"{rev}*.json")]
            if len(hits) == 1:
                return hits[0]
        raise HubRequestError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def files(self, repo: str, sha: str) -> dict[str, _Entry]:
        return {p: _Entry(**e) for p, e in self.commit(repo, sha)["files"].items()}

    def _write_commit(self, repo: str, parent: str | None, files: dict[str, _Entry], summary: str, description: str) -> str:
        body = {
            "parent": parent,
            "summary": summary,
            "description": description,
            "files": {p: vars(files[p]) for p in sorted(files)},
        }
        text = json.dumps(body, indent=1, sort_keys=True)
        sha = hashlib.sha1(text.encode()).hexdigest()
        (self._dir(repo) / "commits").mkdir(parents=True, exist_ok=True)
        (self._dir(repo) / "commits" / f"{sha}.json").write_text(text)
        return sha

    def _entry(self, data: bytes, *, lfs: bool) -> _Entry:
        sha = self.put_blob(data)
        oid = hashlib.sha1(_lfs_pointer(sha, len(data))).hexdigest() if lfs else git_blob_oid(data)
        return _Entry(sha256=sha, size=len(data), lfs=lfs, oid=oid)

    def create_repo(self, repo: str) -> None:
        with self.lock:
            if self.exists(repo):
                raise HubRequestError(409, "You already created this repo", extra={"url": repo})
            self._dir(repo).mkdir(parents=True, exist_ok=True)
            # Like the Hub: a new repo has one commit holding .gitattributes.
            first = self._write_commit(
                repo, None, {".gitattributes": self._entry(_GITATTRIBUTES, lfs=False)}, "initial commit", ""
            )
            self._write_refs(repo, {"branches": {"main": first}, "tags": {}})

    def apply_commit(self, repo: str, branch: str, lines: list[dict[str, Any]]) -> str:
        """Apply an NDJSON commit payload to a branch; returns the new commit id."""
        with self.lock:
            refs = self.refs(repo)
            if branch not in refs["branches"]:
                raise HubRequestError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = refs["branches"][branch]
            header = next((ln["value"] for ln in lines if ln.get("key") == "header"), None)
            if header is None:
                raise HubRequestError(400, "commit payload has no header line")
            parent = header.get("parentCommit")
            if parent is not None and not head.startswith(parent):
                raise HubRequestError(
                    412, f"A commit has happened since {parent}; {branch} is now at {head}. Please refresh and try again."
                )
            files = self.files(repo, head)
            for ln in lines:
                key, value = ln.get("key"), ln.get("value") or {}
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubRequestError(400, "only base64 file content is supported")
                    files[check_path(value["path"])] = self._entry(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    path, oid, size = check_path(value["path"]), check_oid(value["oid"]), int(value["size"])
                    if not self.has_blob(oid):
                        raise HubRequestError(422, f"LFS object {oid} of {path} was not uploaded")
                    if self.blob_size(oid) != size:
                        raise HubRequestError(422, f"LFS object {oid} of {path} has {self.blob_size(oid)} bytes, "
                                              f"not the {size} declared")
                    files[path] = _Entry(
                        sha256=oid, size=size, lfs=True, oid=hashlib.sha1(_lfs_pointer(oid, size)).hexdigest()
                    )
                elif key == "deletedFile":
                    if files.pop(check_path(value["path"]), None) is None:
                        raise HubRequestError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = check_path(value["path"].rstrip("/")) + "/"
                    for p in [p for p in files if p.startswith(prefix)]:
                        del files[p]
                elif key != "header":
                    raise HubRequestError(400, f"unsupported commit operation {key!r}")
            sha = self._write_commit(repo, head, files, header.get("summary", ""), header.get("description", ""))
            refs["branches"][branch] = sha
            self._write_refs(repo, refs)
            return sha

    def create_tag(self, repo: str, rev: str, tag: str) -> None:
        with self.lock:
            refs = self.refs(repo)
            sha = self.resolve(repo, rev)
            if tag in refs["tags"] or tag in refs["branches"]:
                raise HubRequestError(409, f"Tag {tag} already exists")
            refs["tags"][tag] = sha
            self._write_refs(repo, refs)

    def delete_tag(self, repo: str, tag: str) -> None:
        with self.lock:
            refs = self.refs(repo)
            if refs["tags"].pop(tag, None) is None:
                raise HubRequestError(404, f"Tag {tag} not found", "RevisionNotFound")
            self._write_refs(repo, refs)


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackHubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet; never logs headers (tokens)
        pass

    # -- plumbing ----------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline(100).strip().split(b";")[0], 16)
                if size < 0 or len(out) + size > MAX_BODY:
                    raise HubRequestError(413, f"request body over the limit of {MAX_BODY} bytes")
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        if n < 0 or n > MAX_BODY:
            raise HubRequestError(413, f"request body of {n} bytes is over the limit of {MAX_BODY}")
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        hdrs.setdefault("Content-Length", str(len(body)))
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode())

    def _dispatch(self, method: str) -> None:
        try:
            self._route(method)
        except Exception as err:  # noqa: BLE001 - a malformed request gets 400, never a traceback
            self.close_connection = True
            try:
                msg = f"bad request ({err.__class__.__name__})"
                self._send(400, json.dumps({"error": msg}).encode(), {"X-Error-Message": msg}, head=method == "HEAD")
            except OSError:
                pass

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        try:
            body = self._body() if method in ("POST", "PUT") else b""
            for pattern, verb, fn in _ROUTES:
                if verb != method and not (verb == "GET" and method == "HEAD"):
                    continue
                m = re.fullmatch(pattern, path)
                if m:
                    args = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
                    kind = args.pop("kind", "models")
                    if "repo" in args:  # the store's key: ORG/NAME or datasets/ORG/NAME
                        args["repo"] = repo_key(args["repo"], kind.removesuffix("s"))
                    return fn(self, body=body, query=query, head=method == "HEAD", **args)
            raise HubRequestError(404, f"no route for {method} {path}")
        except HubRequestError as err:
            if err.status == 413:
                self.close_connection = True  # the body was not read
            hdrs = {"X-Error-Message": err.message}
            if err.code:
                hdrs["X-Error-Code"] = err.code
            body_out = {"error": err.message, **err.extra}
            if "url" in body_out:
                body_out["url"] = f"{self.base}/{body_out['url']}"
            self._send(err.status, json.dumps(body_out).encode(), hdrs, head=method == "HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- routes ------------------------------------------------------------------------
    @property
    def store(self) -> RepoStore:
        return self.server.store

    @property
    def base(self) -> str:
        return self.server.url

    def create_repo(self, *, body: bytes, **_: Any) -> None:
        payload = json.loads(body or b"{}")
        repo_type = payload.get("type", "model")
        repo = check_repo_id(f"{payload.get('organization') or 'user'}/{payload['name']}")
        key = repo_key(repo, repo_type)
        self.store.create_repo(key)
        self._json(200, {"url": f"{self.base}/{key}", "name": repo, "id": repo})

    def validate_yaml(self, *, body: bytes, **_: Any) -> None:
        import yaml

        content = json.loads(body).get("content", "")
        m = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        try:
            if m:
                yaml.safe_load(m[1])
        except yaml.YAMLError as err:
            self._json(400, {"errors": [{"message": str(err).splitlines()[0]}]})
            return
        self._json(200, {"errors": [], "warnings": []})

    def whoami(self, **_: Any) -> None:
        self._json(200, {"type": "user", "name": "user", "orgs": []})

    def model_info(self, *, repo: str, rev: str = "main", **_: Any) -> None:
        sha = self.store.resolve(repo, rev)
        files = self.store.files(repo, sha)
        siblings = [
            {
                "rfilename": p,
                "size": e.size,
                "blobId": e.oid,
                **({"lfs": {"size": e.size, "sha256": e.sha256, "pointerSize": 134}} if e.lfs else {}),
            }
            for p, e in sorted(files.items())
        ]
        rid = repo.removeprefix("datasets/")
        self._json(200, {"id": rid, "modelId": rid, "sha": sha, "private": False, "siblings": siblings, "tags": []})

    def list_refs(self, *, repo: str, **_: Any) -> None:
        refs = self.store.refs(repo)

        def fmt(kind: str, prefix: str) -> list[dict[str, str]]:
            return [{"name": n, "ref": f"refs/{prefix}/{n}", "targetCommit": c} for n, c in sorted(refs[kind].items())]

        self._json(200, {"branches": fmt("branches", "heads"), "converts": [], "tags": fmt("tags", "tags"), "pullRequests": []})

    def list_tree(self, *, repo: str, rev: str, sub: str = "", query: dict, **_: Any) -> None:
        sha = self.store.resolve(repo, rev)
        files = self.store.files(repo, sha)
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in files):
            raise HubRequestError(404, f"{sub} does not exist at {rev}", "EntryNotFound")
        out: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for p, e in sorted(files.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                d = prefix + "/".join(parts[:i])
                if (recursive or i == 1) and d not in dirs:
                    dirs.add(d)
                    out.append({"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0})
            if recursive or len(parts) == 1:
                item: dict[str, Any] = {"type": "file", "path": p, "size": e.size, "oid": e.oid}
                if e.lfs:
                    item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": len(_lfs_pointer(e.sha256, e.size))}
                out.append(item)
        self._json(200, out)

    def preupload(self, *, repo: str, rev: str, body: bytes, **_: Any) -> None:
        try:
            sha = self.store.resolve(repo, rev)
            current = self.store.files(repo, sha)
        except HubRequestError as err:
            if err.code == "RepoNotFound":
                raise
            current = {}
        out = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f.get("sample", ""))
            lfs = f["path"].endswith(_LFS_SUFFIXES) or f["size"] >= _LFS_MIN_SIZE or b"\x00" in sample
            old = current.get(f["path"])
            oid = None if old is None else (old.sha256 if old.lfs else old.oid)
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": out, "commitOid": None})

    def lfs_batch(self, *, repo: str, body: bytes, **_: Any) -> None:
        self.store.refs(repo)  # 404 if missing
        req = json.loads(body)
        if req.get("operation") != "upload":
            raise HubRequestError(400, "only LFS uploads are supported")
        objects = []
        for o in req.get("objects", []):
            item: dict[str, Any] = {"oid": check_oid(o["oid"]), "size": int(o["size"])}
            if not self.store.has_blob(o["oid"]):
                href = f"{self.base}/lfs-upload/{repo}/{o['oid']}"
                item["actions"] = {
                    "upload": {"href": href},
                    "verify": {"href": f"{self.base}/lfs-verify/{repo}"},
                }
            objects.append(item)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   {"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_upload(self, *, repo: str, oid: str, body: bytes, **_: Any) -> None:
        self.store.put_blob(body, expected_sha256=oid)
        self._send(200)

    def lfs_verify(self, *, repo: str, body: bytes, **_: Any) -> None:
        o = json.loads(body)
        if not self.store.has_blob(check_oid(o["oid"])):
            raise HubRequestError(404, f"LFS object {o['oid']} not found")
        self._json(200, {"success": True})

    def commit(self, *, repo: str, rev: str, body: bytes, query: dict, **_: Any) -> None:
        if query.get("create_pr"):
            raise HubRequestError(400, "the loopback hub does not do pull requests")
        lines = [json.loads(ln) for ln in body.splitlines() if ln.strip()]
        sha = self.store.apply_commit(repo, rev, lines)
        self._json(200, {"commitUrl": f"{self.base}/{repo}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None, "success": True})

    def tag(self, *, repo: str, rev: str, body: bytes, **_: Any) -> None:
        payload = json.loads(body)
        self.store.create_tag(repo, rev, payload["tag"])
        self._json(200, {})

    def delete_tag(self, *, repo: str, tag: str, **_: Any) -> None:
        self.store.delete_tag(repo, tag)
        self._json(200, {})

    def resolve_file(self, *, repo: str, rev: str, path: str, head: bool, **_: Any) -> None:
        sha = self.store.resolve(repo, rev)
        entry = self.store.files(repo, sha).get(path)
        if entry is None:
            raise HubRequestError(404, f"Entry not found: {path}", "EntryNotFound")
        data = self.store.read_blob(entry.sha256)  # the stored bytes decide the size, not a declaration
        headers = {
            "Content-Type": _content_type(path),
            "Content-Length": str(len(data)),
            "X-Repo-Commit": sha,
            "ETag": f'"{entry.oid}"',
            "Accept-Ranges": "none",
        }
        if path.lower().endswith(_ACTIVE_SUFFIXES):
            # Like the Hub: a repository's HTML (or SVG, JS) is never served as a page on the
            # Hub's own origin; it comes as text, and the browser must not sniff it back.
            headers["X-Content-Type-Options"] = "nosniff"
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(len(data))
        self._send(200, b"" if head else data, headers, head=head)


# (pattern, method, handler); revisions are URL-quoted single path segments. ``kind``: the
# repo type's URL prefix (huggingface_hub constants.REPO_TYPES_URL_PREFIXES); none is a model.
_API = r"/api/(?P<kind>models|datasets)/" + _REPO
_GIT = r"/(?:(?P<kind>datasets)/)?" + _REPO
_ROUTES = [
    (r"/api/repos/create", "POST", _Handler.create_repo),
    (r"/api/validate-yaml", "POST", _Handler.validate_yaml),
    (r"/api/whoami-v2", "GET", _Handler.whoami),
    (rf"{_API}", "GET", _Handler.model_info),
    (rf"{_API}/revision/(?P<rev>[^/]+)", "GET", _Handler.model_info),
    (rf"{_API}/refs", "GET", _Handler.list_refs),
    (rf"{_API}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", "GET", _Handler.list_tree),
    (rf"{_API}/preupload/(?P<rev>[^/]+)", "POST", _Handler.preupload),
    (rf"{_API}/commit/(?P<rev>[^/]+)", "POST", _Handler.commit),
    (rf"{_API}/tag/(?P<rev>[^/]+)", "POST", _Handler.tag),
    (rf"{_API}/tag/(?P<tag>[^/]+)", "DELETE", _Handler.delete_tag),
    (rf"{_GIT}\.git/info/lfs/objects/batch", "POST", _Handler.lfs_batch),
    (rf"/lfs-upload/(?:(?P<kind>datasets)/)?{_REPO}/(?P<oid>[0-9a-f]{{64}})", "PUT", _Handler.lfs_upload),
    (rf"/lfs-verify/(?:(?P<kind>datasets)/)?{_REPO}", "POST", _Handler.lfs_verify),
    (rf"{_GIT}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "GET", _Handler.resolve_file),
]


class LoopbackHubServer(ThreadingHTTPServer):
    """The loopback Hub on 127.0.0.1; ``url`` is what HF_ENDPOINT / HfApi(endpoint=) take."""

    daemon_threads = True

    def __init__(self, root: Path, port: int = 0):
        self.store = RepoStore(root)
        super().__init__(("127.0.0.1", port), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> LoopbackHubServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackHubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve(root: Path, port: int = 0) -> LoopbackHubServer:
    """Start a loopback Hub storing repos under ``root``; stop it with ``.stop()``."""
    return LoopbackHubServer(root, port).start()


def main(argv: list[str] | None = None) -> None:
    """``python -m saekit.testing.loopback_hub ROOT [PORT]``: serve in the foreground."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    server = LoopbackHubServer(Path(args[0]), int(args[1]) if len(args) > 1 else 0)
    print(server.url, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
