"""The loopback Hub is confined to its root (repo ids, LFS oids, file paths, sizes), and a
dead endpoint (Hub or registry) ends in one line naming the endpoint, never a token or a
password. The Hub double is exercised with the real huggingface_hub client too."""

from __future__ import annotations

import hashlib
import json
import socket
import urllib.error
import urllib.request

import pytest

from sec_helpers import SECRET, TOKEN, python, saekit, tree_contains


def _dead_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _req(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    r = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(r, timeout=20) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
def hub(tmp_path):
    from saekit.releases.loopback_hub import serve

    server = serve(tmp_path / "hubroot")
    yield server
    server.stop()


def _commit(hub, repo: str, lines: list[dict]) -> tuple[int, bytes]:
    header = {"key": "header", "value": {"summary": "x", "description": ""}}
    body = "\n".join(json.dumps(x) for x in [header, *lines]).encode()
    return _req(f"{hub.url}/api/models/{repo}/commit/main", "POST", body, {"Content-Type": "application/x-ndjson"})


def _upload_lfs(hub, repo: str, data: bytes) -> str:
    oid = hashlib.sha256(data).hexdigest()
    status, _ = _req(f"{hub.url}/lfs-upload/{repo}/{oid}", "PUT", data)
    assert status == 200
    return oid


# --- the loopback Hub ---------------------------------------------------------------------


@pytest.mark.parametrize("org,name", [("../../../x", "repo"), ("org", "../../x"), ("..", "x"), ("a--b", "x"),
                                      ("org", "x/y"), ("org", "x.git"), ("o" * 97, "x")])
def test_create_repo_confined(hub, tmp_path, org, name):
    status, body = _req(f"{hub.url}/api/repos/create", "POST",
                        json.dumps({"name": name, "organization": org, "type": "model"}).encode())
    assert status == 400, body
    outside = [p for p in tmp_path.rglob("*") if "hubroot" not in p.parts]
    assert outside == []


def test_commit_lfs_oid_and_paths_confined(hub, tmp_path):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("org/repo")
    secret = tmp_path / "secret.txt"
    secret.write_text(f"password={SECRET}\n")
    rel = "../" * 8 + str(secret).lstrip("/")
    for line in (
        {"key": "lfsFile", "value": {"path": "passwd", "algo": "sha256", "oid": rel, "size": 10}},
        {"key": "lfsFile", "value": {"path": "passwd", "algo": "sha256", "oid": "../../../../etc/passwd", "size": 1}},
        {"key": "file", "value": {"path": "../../escape.txt", "encoding": "base64", "content": "eA=="}},
        {"key": "file", "value": {"path": "/abs.txt", "encoding": "base64", "content": "eA=="}},
        {"key": "file", "value": {"path": "a//b.txt", "encoding": "base64", "content": "eA=="}},
        {"key": "deletedFolder", "value": {"path": "../.."}},
    ):
        status, body = _commit(hub, "org/repo", [line])
        assert status == 400, (line, body)
    for oid in ("../../../../etc/passwd", rel, "A" * 64):
        status, _ = _req(f"{hub.url}/org/repo.git/info/lfs/objects/batch", "POST",
                         json.dumps({"operation": "upload", "objects": [{"oid": oid, "size": 1}]}).encode())
        assert status == 400
        status, _ = _req(f"{hub.url}/lfs-verify/org/repo", "POST", json.dumps({"oid": oid, "size": 1}).encode())
        assert status == 400
    status, _ = _req(f"{hub.url}/org/repo/resolve/main/passwd")
    assert status == 404
    assert tree_contains(tmp_path / "hubroot", SECRET.encode()) == []
    assert [p for p in tmp_path.rglob("*") if "hubroot" not in p.parts and p != secret] == []


def test_declared_lfs_size_must_match_the_bytes(hub):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("org/sizes")
    data = b"\0\1" * 5000
    oid = _upload_lfs(hub, "org/sizes", data)
    status, body = _commit(hub, "org/sizes", [{"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256",
                                                                           "oid": oid, "size": len(data) + 100}}])
    assert status == 422 and b"not the" in body
    status, _ = _commit(hub, "org/sizes", [{"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256",
                                                                        "oid": oid, "size": len(data)}}])
    assert status == 200
    status, got = _req(f"{hub.url}/org/sizes/resolve/main/w.bin")
    assert status == 200 and got == data
    # an upload whose bytes are not its oid is refused
    status, _ = _req(f"{hub.url}/lfs-upload/org/sizes/{'0' * 64}", "PUT", b"other bytes")
    assert status == 400


def test_malformed_requests_get_400_and_the_server_keeps_serving(hub):
    for path, body in (("/api/repos/create", b"{not json"), ("/api/models/org/x/commit/main", b"\xff\xfe"),
                       ("/api/models/org/x/preupload/main", b"[]")):
        status, _ = _req(f"{hub.url}{path}", "POST", body)
        assert 400 <= status < 500
    assert _req(f"{hub.url}/api/whoami-v2")[0] == 200


def test_real_client_round_trip(tmp_path, hub):
    """huggingface_hub itself (HF_ENDPOINT, HF_HUB_DISABLE_XET=1): create, LFS and regular
    upload, download back, in a fresh process so the environment is read at import."""
    code = """
import hashlib
from huggingface_hub import HfApi, hf_hub_download
api = HfApi()
api.create_repo("org/rt")
big = bytes(range(256)) * 4096
api.upload_file(path_or_fileobj=big, path_in_repo="w/sae_weights.safetensors", repo_id="org/rt")
api.upload_file(path_or_fileobj=b"hello", path_in_repo="README.md", repo_id="org/rt")
p = hf_hub_download("org/rt", "w/sae_weights.safetensors")
assert open(p, "rb").read() == big
assert open(hf_hub_download("org/rt", "README.md"), "rb").read() == b"hello"
print("ok", sorted(api.list_repo_files("org/rt")))
"""
    r = python(code, home=tmp_path / "home", HF_ENDPOINT=hub.url, timeout=180)
    assert r.rc == 0, r.err
    assert "ok" in r.out and "w/sae_weights.safetensors" in r.out
    assert tree_contains(tmp_path / "hubroot", TOKEN.encode()) == []


# --- dead endpoints --------------------------------------------------------------------------


def test_publish_to_a_dead_hub_is_one_line(tmp_path):
    from tests.releases.release_helpers import checked_bundle

    bundle = checked_bundle(tmp_path / "home", tmp_path / "bundle")  # publish checks the registry first
    url = f"http://127.0.0.1:{_dead_port()}"
    r = saekit("release", "publish", str(bundle), "--endpoint", url, home=tmp_path / "home")
    line = r.one_line_error(2)
    assert f"cannot reach the Hub at {url}" in line


def test_hf_load_from_a_dead_hub_is_one_line(tmp_path):
    url = f"http://127.0.0.1:{_dead_port()}"
    r = saekit("export", "sparsify", "hf://org/repo@v1.0.0/sae", str(tmp_path / "out"), home=tmp_path / "home",
               HF_ENDPOINT=url)
    line = r.one_line_error(2)
    assert f"cannot reach the Hub at {url}" in line


def test_dead_registry_masks_the_password(tmp_path):
    uri = f"postgresql://postgres:{SECRET}@127.0.0.1:{_dead_port()}/saekit"
    r = saekit("ls", home=tmp_path / "home", SAEKIT_REGISTRY_URI=uri)
    line = r.one_line_error(2)
    assert "postgres:***@" in line


def test_a_hostile_release_on_the_hub_is_refused_in_one_line(tmp_path, hub):
    """SHA256SUMS served by a Hub is input too: a path leaving the snapshot, or a file that
    does not match, ends in one line (exit 1), and nothing is written outside the cache."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("org/hostile")
    digest = "ab" * 32
    api.upload_file(path_or_fileobj=f"{digest}  ../../../outside.txt\n".encode(), path_in_repo="SHA256SUMS",
                    repo_id="org/hostile")
    api.create_tag("org/hostile", tag="v1")
    r = saekit("export", "sparsify", "hf://org/hostile@v1/sae", str(tmp_path / "out"), home=tmp_path / "home",
               HF_ENDPOINT=hub.url)
    assert "leaves the bundle" in r.one_line_error(1)
    api.upload_file(path_or_fileobj=f"{digest}  sae/cfg.json\n{digest}  release.json\n".encode(),
                    path_in_repo="SHA256SUMS", repo_id="org/hostile")
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="sae/cfg.json", repo_id="org/hostile")
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="release.json", repo_id="org/hostile")
    api.create_tag("org/hostile", tag="v2")
    r = saekit("export", "sparsify", "hf://org/hostile@v2/sae", str(tmp_path / "out"), home=tmp_path / "home",
               HF_ENDPOINT=hub.url)
    assert "sha256 mismatch" in r.one_line_error(1)
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "out").exists()
