"""The loopback Hub is confined to its root (repo ids, LFS oids, file paths, sizes), and a
dead endpoint (Hub or registry) ends in one line naming the endpoint, never a token or a
password. The Hub double is exercised with the real huggingface_hub client too."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from sec_helpers import SECRET, TOKEN, log_measure, python, saekit, tree_contains


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
    from saekit.testing.loopback_hub import serve

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


# --- silent endpoints: every network call is bounded in time (issue 25, item 3) -------------

# Two-second timeouts: each command below must end in one line well under a minute.
_FAST = {"SAEKIT_CONNECT_TIMEOUT": "2", "SAEKIT_READ_TIMEOUT": "2"}
_BOUND_S = 40


@pytest.fixture
def silent_port():
    """A loopback port that accepts connections and never answers; it stops by itself (after
    120 s at most) and when the test ends."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()
    held = []

    def hold():
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                held.append(server.accept()[0])
            except OSError:
                pass
        for conn in held:
            conn.close()
        server.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)


def _silent_url(port: int) -> tuple[str, str]:
    """(endpoint with a password, as it must be shown)."""
    return f"http://user:{SECRET}@127.0.0.1:{port}", f"http://user:***@127.0.0.1:{port}"


def test_publish_to_a_silent_hub_times_out(tmp_path, silent_port):
    from tests.releases.release_helpers import checked_bundle

    bundle = checked_bundle(tmp_path / "home", tmp_path / "bundle")  # publish checks the registry first
    url, shown = _silent_url(silent_port)
    r = saekit("release", "publish", str(bundle), "--endpoint", url, home=tmp_path / "home", timeout=120, **_FAST)
    line = r.one_line_error(2)
    log_measure("publish to a silent Hub", r)
    assert f"cannot reach the Hub at {shown}" in line and "within 2 s" in line
    assert r.seconds < _BOUND_S


def test_hf_load_from_a_silent_hub_times_out(tmp_path, silent_port):
    url, shown = _silent_url(silent_port)
    r = saekit("export", "sparsify", "hf://org/repo@v1/sae", str(tmp_path / "out"), home=tmp_path / "home",
               timeout=120, HF_ENDPOINT=url, **_FAST)
    line = r.one_line_error(2)
    log_measure("hf:// load from a silent Hub", r)
    assert f"cannot reach the Hub at {shown}" in line and "SAEKIT_READ_TIMEOUT" in line
    assert r.seconds < _BOUND_S and not (tmp_path / "out").exists()


def test_hf_register_from_a_silent_hub_times_out(tmp_path, silent_port):
    url, shown = _silent_url(silent_port)
    r = saekit("register", "-n", "x", "hf://org/repo/sae", home=tmp_path / "home", timeout=120, HF_ENDPOINT=url,
               **_FAST)
    line = r.one_line_error(2)
    log_measure("hf:// register from a silent Hub", r)
    assert f"cannot reach the Hub at {shown}" in line and "SAEKIT_READ_TIMEOUT" in line
    assert r.seconds < _BOUND_S


def test_a_hub_silent_after_its_listing_times_out(tmp_path, crafted_hub):
    """The download's own retries (huggingface_hub retries a timed-out metadata call 5 times,
    23 s of backoff) do not multiply the wait, nor print their 'Retrying' lines."""
    r = saekit("register", "-n", "slow", "hf://org/slow/sae", home=tmp_path / "home", timeout=120,
               HF_ENDPOINT=crafted_hub, **_FAST)
    line = r.one_line_error(2)
    log_measure("hf:// register from a Hub silent after its listing", r)
    assert f"cannot reach the Hub at {crafted_hub}" in line and "no answer within 2 s" in line
    assert r.seconds < 20


def test_a_silent_registry_server_times_out(tmp_path, silent_port):
    url, shown = _silent_url(silent_port)
    r = saekit("ls", home=tmp_path / "home", timeout=120, SAEKIT_REGISTRY_URI=url, **_FAST)
    line = r.one_line_error(2)
    log_measure("registry URI on a silent MLflow server", r)
    assert f"registry at {shown}" in line and "no answer within 2 s" in line
    assert r.seconds < _BOUND_S


def test_a_silent_registry_database_times_out(tmp_path, silent_port):
    pytest.importorskip("psycopg2")
    uri = f"postgresql+psycopg2://postgres:{SECRET}@127.0.0.1:{silent_port}/saekit"
    r = saekit("ls", home=tmp_path / "home", timeout=120, SAEKIT_REGISTRY_URI=uri, **_FAST)
    line = r.one_line_error(2)
    log_measure("registry URI on a silent PostgreSQL", r)
    assert f"registry at postgresql+psycopg2://postgres:***@127.0.0.1:{silent_port}/saekit" in line
    assert "SAEKIT_CONNECT_TIMEOUT" in line and r.seconds < _BOUND_S


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon", "1e9"])
def test_a_bad_timeout_setting_is_one_line(tmp_path, value):
    r = saekit("ls", home=tmp_path / "home", SAEKIT_READ_TIMEOUT=value)
    assert "SAEKIT_READ_TIMEOUT" in r.one_line_error(2)


# --- pinned revisions (item 11) ---------------------------------------------------------------


def test_a_tag_named_like_an_older_commit_does_not_stand_in_for_it(tmp_path, hub):
    """@<40-hex> names a commit: a tag of that name pointing elsewhere is refused (exit 1),
    for hf:// load (a release) and hf:// register (another library's layout) alike."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("org/pin")
    old = api.upload_file(path_or_fileobj=b"{}", path_in_repo="sae/cfg.json", repo_id="org/pin").oid
    new = api.upload_file(path_or_fileobj=b"{\"x\": 1}", path_in_repo="sae/cfg.json", repo_id="org/pin").oid
    api.create_tag("org/pin", tag=old, revision=new)
    for args in (("export", "sparsify", f"hf://org/pin@{old}/sae", str(tmp_path / "out")),
                 ("register", "-n", "pin", f"hf://org/pin@{old}/sae")):
        r = saekit(*args, home=tmp_path / "home", timeout=120, HF_ENDPOINT=hub.url)
        line = r.one_line_error(1)
        assert f"revision {old} resolved to another commit ({new})" in line
    # the new commit, by its own id, is not refused for that reason
    r = saekit("register", "-n", "pin", f"hf://org/pin@{new}/sae", home=tmp_path / "home", timeout=120,
               HF_ENDPOINT=hub.url)
    assert r.rc != 0 and "another commit" not in r.err


# --- one masking function (item 12) ------------------------------------------------------------


def test_publish_json_url_masks_the_endpoint_password(tmp_path, hub):
    from tests.releases.release_helpers import checked_bundle

    bundle = checked_bundle(tmp_path / "home", tmp_path / "bundle")  # publish checks the registry first
    port = hub.url.rsplit(":", 1)[1]
    r = saekit("release", "publish", str(bundle), "--endpoint", f"http://user:{SECRET}@127.0.0.1:{port}", "--json",
               home=tmp_path / "home", timeout=120)
    assert r.rc == 0, r.err
    assert json.loads(r.out)["url"] == f"http://user:***@127.0.0.1:{port}/org/x/tree/v1.0.0"
    assert SECRET not in r.out + r.err and TOKEN not in r.out + r.err


@pytest.mark.parametrize("uri", [
    f"http://user:{SECRET}@127.0.0.1:{{port}}/mlflow",
    f"http://127.0.0.1:{{port}}/mlflow?access_token={SECRET}",
    f"postgresql+psycopg2://postgres:{SECRET}@127.0.0.1:{{port}}/saekit?sslpassword={SECRET}",
])
def test_registry_errors_mask_every_secret(tmp_path, uri):
    r = saekit("ls", home=tmp_path / "home", timeout=120, SAEKIT_REGISTRY_URI=uri.format(port=_dead_port()), **_FAST)
    assert "***" in r.one_line_error(2)
    assert r.seconds < _BOUND_S  # a refused database: one try, not MLflow's ten (~100 s of sleeps)


# --- Hub listings are input (item 17) ----------------------------------------------------------

_SHA = "b" * 40


class _CraftedHub(http.server.BaseHTTPRequestHandler):
    """A Hub whose listings name paths outside the repo (repo info siblings, tree listing)."""

    def log_message(self, *args):
        pass

    def _json(self, obj, status=200):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 404:
            self.send_header("X-Error-Code", "EntryNotFound")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        if "/org/slow/" in path:  # lists a sparsify SAE, then never sends a file
            if "/revision/" not in path:
                time.sleep(20)
                return
            self._json({"id": "org/slow", "sha": _SHA, "siblings": [{"rfilename": "sae/cfg.json"},
                                                                   {"rfilename": "sae/sae.safetensors"}]})
        elif "/revision/" in path:
            self._json({"id": "org/evil", "sha": _SHA, "siblings": [{"rfilename": "../../evil/cfg.json"},
                                                                   {"rfilename": "../../evil/sae.safetensors"}]})
        elif path.endswith("/refs"):
            self._json({"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": _SHA}],
                        "tags": [], "converts": []})
        elif "/tree/" in path:
            self._json([{"type": "file", "oid": "0" * 40, "size": 1, "path": "../../etc/passwd"}])
        else:
            self._json({"error": "Entry not found"}, 404)

    do_HEAD = do_GET

    def do_POST(self):  # create_repo; repo "badurl" gets a URL on another host
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        host = "elsewhere" if body.get("name") == "badurl" else self.headers["Host"]
        self._json({"url": f"http://{host}/org/{body.get('name')}", "name": f"org/{body.get('name')}"})


@pytest.fixture
def crafted_hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CraftedHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# A glob matching the listed ../../evil folder reached huggingface_hub's download (exit 70).
@pytest.mark.parametrize("args", [("export", "sparsify", "hf://org/evil/evil", "OUT"),
                                  ("register", "-n", "evil", "hf://org/evil/*/*/*"),
                                  ("import", "hf://org/evil/*/*/*", "OUT")])
def test_a_hub_listing_leaving_the_repo_is_refused(tmp_path, crafted_hub, args):
    args = tuple(str(tmp_path / "out") if a == "OUT" else a for a in args)
    r = saekit(*args, home=tmp_path / "home", timeout=120, HF_ENDPOINT=crafted_hub, **_FAST)
    line = r.one_line_error(2)
    assert "the Hub listed '../../evil/" in line
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "evil").exists()


def test_publish_refuses_an_unreadable_hub_answer(tmp_path, crafted_hub):
    """create_repo answered with a repo URL on another host: huggingface_hub's HfUriError is
    the Hub's fault, one line, exit 2 (not an internal error)."""
    from tests.releases.release_helpers import checked_bundle

    bundle = checked_bundle(tmp_path / "home", tmp_path / "bundle")  # publish checks the registry first
    r = saekit("release", "publish", str(bundle), "--repo", "org/badurl", "--endpoint", crafted_hub,
               home=tmp_path / "home", timeout=120, **_FAST)
    assert f"unreadable answer from the Hub at {crafted_hub}: HfUriError" in r.one_line_error(2)


def test_publish_refuses_a_tree_listing_leaving_the_repo(tmp_path, crafted_hub):
    from tests.releases.release_helpers import checked_bundle

    bundle = checked_bundle(tmp_path / "home", tmp_path / "bundle")  # publish checks the registry first
    r = saekit("release", "publish", str(bundle), "--endpoint", crafted_hub, home=tmp_path / "home", timeout=120,
               **_FAST)
    assert "the Hub listed '../../etc/passwd'" in r.one_line_error(2)
