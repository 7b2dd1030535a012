"""Scale-out: an MLflow tracking server on PostgreSQL with proxied artifacts.

One real ``mlflow server`` per module on loopback (free port), a fresh database per run.
Without a reachable PostgreSQL on 127.0.0.1:5432 these tests skip, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import saekit
from saekit.registry import artifact as art
from saekit.registry import store
from saekit.schemas import IntegrityError, NotFoundError, RegistryError
from tests.registry.conftest import make_artifact
from tests.registry.test_store import _kill_mid_upload

pytestmark = pytest.mark.postgres
PG = dict(host="127.0.0.1", port=5432, user="postgres")
ROOT = Path(__file__).resolve().parents[2]


def _pg_connect(dbname: str = "postgres"):
    import psycopg2

    con = psycopg2.connect(dbname=dbname, connect_timeout=3, **PG)
    con.autocommit = True
    return con


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    try:
        con = _pg_connect()
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"PostgreSQL not reachable on 127.0.0.1:5432 ({str(err).splitlines()[0]})")
    db = f"saekit_test_{uuid.uuid4().hex[:12]}"
    with con.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = open(root / "server.log", "wb")
    # SQLAlchemy 2.1 maps plain postgresql:// to psycopg (v3); name the installed driver.
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "2",
         "--uvicorn-opts", "--no-access-log"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("mlflow server did not come up in 240 s")
            time.sleep(0.5)
        yield {"url": url, "proc": proc, "artifacts": root / "artifacts", "db": db}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        with con.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        con.close()


@pytest.fixture
def on_server(server, monkeypatch):
    monkeypatch.setenv("SAEKIT_REGISTRY_URI", server["url"])
    return server


def test_register_and_load_through_server(on_server, tmp_path):
    a = make_artifact(tmp_path / "a", seed=11)
    v = saekit.register("srv", a, alias="production", tags={"team": "interp"})
    assert v.version == 1 and v.source.startswith("mlflow-artifacts:")
    assert saekit.register("srv", a).version == 1  # identical content: same version
    shutil.rmtree(store.cache_path(v.sha256))
    sae = saekit.load("srv@production")
    assert sae.ref.sha256 == v.sha256 == art.artifact_sha256(a)
    assert [i.version for i in store.list_versions("srv")] == [1]
    # the files really live in the server's proxied artifact store
    stored = list(on_server["artifacts"].rglob(art.WEIGHTS))
    assert len(stored) == 1
    # tampered in the store -> refused, naming the file
    data = bytearray(stored[0].read_bytes())
    data[-1] ^= 1
    stored[0].write_bytes(bytes(data))
    shutil.rmtree(store.cache_path(v.sha256))
    with pytest.raises(IntegrityError, match=art.WEIGHTS):
        saekit.load("srv/1")


def test_killed_registration_leaves_nothing(on_server, tmp_path):
    folder = make_artifact(tmp_path / "a", seed=12)
    _kill_mid_upload(folder, "srv-kill", tmp_path)
    assert store.list_versions("srv-kill") == []  # the registered model exists, no ready version
    with pytest.raises(NotFoundError):
        saekit.load("srv-kill")
    v = saekit.register("srv-kill", folder)
    assert saekit.load("srv-kill").ref.sha256 == v.sha256


WORKER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import saekit
    folders, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    t0 = time.time()
    results = {"common": saekit.register("load-common", folders["common"]).version, "versions": []}
    for folder in folders["own"]:
        info = saekit.register("load", folder)
        results["versions"].append([info.version, info.sha256])
    results["seconds"] = time.time() - t0
    results["torch_imported"] = "torch" in sys.modules
    out.write_text(json.dumps(results))
""")


def run_load(tmp_path: Path, procs: int, per_proc: int) -> list[dict]:
    """``procs`` processes each register ``per_proc`` distinct tiny artifacts under one name,
    and all of them the same artifact under another."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    common = make_artifact(tmp_path / "common", seed=10_000)
    jobs = []
    for p in range(procs):
        own = [str(make_artifact(tmp_path / f"p{p}" / str(i), seed=p * 1000 + i)) for i in range(per_proc)]
        (tmp_path / f"in{p}.json").write_text(json.dumps({"common": str(common), "own": own}))
        jobs.append((tmp_path / f"in{p}.json", tmp_path / f"out{p}.json"))
    running = [subprocess.Popen([sys.executable, str(script), str(i), str(o)], env=os.environ.copy(),
                                stderr=subprocess.PIPE) for i, o in jobs]
    errors = []
    for p in running:
        _, err = p.communicate(timeout=900)
        if p.returncode:
            errors.append(err.decode()[-1500:])
    assert not errors, errors[0]
    return [json.loads(o.read_text()) for _, o in jobs]


def test_eight_processes_two_hundred_versions(on_server, tmp_path):
    procs, per_proc = 8, 25
    t0 = time.time()
    results = run_load(tmp_path, procs, per_proc)
    wall = time.time() - t0
    got = [tuple(v) for r in results for v in r["versions"]]
    assert len(got) == procs * per_proc
    assert not any(r["torch_imported"] for r in results)  # registering a folder needs no torch
    assert len({v for v, _ in got}) == procs * per_proc, "two registrations share a version"
    assert len({s for _, s in got}) == procs * per_proc
    versions = store.list_versions("load")
    assert sorted((i.version, i.sha256) for i in versions) == sorted(got)  # none lost, none extra
    # identical content from 8 racing processes: one version
    assert len({r["common"] for r in results}) == 1 and len(store.list_versions("load-common")) == 1
    shutil.rmtree(store._cache_dir(), ignore_errors=True)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:  # every version downloads and verifies
        loaded = list(pool.map(lambda info: saekit.load(info.ref).ref.sha256, versions))
    assert loaded == [i.sha256 for i in versions]
    print(f"\n8x25 registrations on the server: {wall:.1f} s wall, "
          f"{procs * per_proc / wall:.1f} versions/s")


def test_pinned_cached_load_with_dead_server(on_server, tmp_path, monkeypatch):
    """Runs last: stops the module's server, then loads content pinned by sha256 from the cache."""
    v = saekit.register("srv-pin", make_artifact(tmp_path / "a", seed=13), alias="production")
    saekit.load("srv-pin/1")
    proc = on_server["proc"]
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    t0 = time.time()
    assert saekit.load(f"srv-pin@sha256:{v.sha256[:16]}").ref.version == "1"
    assert time.time() - t0 < 5
    for ref in ("srv-pin@production", "srv-pin/1"):  # an alias or a version must ask the server
        with pytest.raises(RegistryError) as e:
            saekit.load(ref)
        assert "\n" not in str(e.value)
    assert str(e.value).endswith(f"load srv-pin@sha256:{v.sha256[:16]} for the cached copy it named last")
