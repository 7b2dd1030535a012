"""The registry on the embedded default (MLflow on SQLite under SAEKIT_HOME)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import saekit
from saekit.registry import artifact as art
from saekit.registry import cache, store
from saekit.registry.refs import parse_ref
from saekit.schemas import InputError, IntegrityError, NotFoundError, ReferenceSyntaxError, RegistryError
from tests.registry.conftest import make_artifact, make_sae


def test_register_load_alias_dedup(tmp_path, saekit_home):
    a1 = make_artifact(tmp_path / "a1", seed=1)
    a2 = make_artifact(tmp_path / "a2", seed=2)
    v1 = saekit.register("res-l6", a1, alias="candidate", tags={"team": "interp"}, description="first")
    assert (v1.version, v1.aliases, v1.sha256) == (1, ["candidate"], art.artifact_sha256(a1))
    assert store.registry_uri().startswith("sqlite:///") and (saekit_home / "registry" / "mlflow.db").is_file()
    t = v1.tags
    assert t["saekit.architecture"] == "topk" and t["saekit.d_in"] == "8" and t["saekit.d_sae"] == "32"
    assert t["saekit.k"] == "4" and t["saekit.hook"] == "model.layers.6" and t["saekit.schema_version"] == "1.0"
    assert t["saekit.model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and t["team"] == "interp"
    assert v1.description == "first"

    # identical content: the existing version, not a duplicate
    again = saekit.register("res-l6", a1, tags={"reviewed": "yes"})
    assert again.version == 1 and len(store.list_versions("res-l6")) == 1
    assert store.resolve("res-l6/1").tags["reviewed"] == "yes"  # the caller's tags land on it

    v2 = saekit.register("res-l6", make_sae(2))  # in-memory SAE
    assert v2.version == 2 and v2.sha256 == art.artifact_sha256(a2)

    # NAME -> newest ready; NAME@ALIAS; NAME/VERSION; NAME@sha256:PREFIX
    assert saekit.load("res-l6").ref.version == "2"
    sae = saekit.load("res-l6@candidate")
    assert sae.ref.version == "1" and sae.ref.sha256 == v1.sha256 and sae.ref.d_sae == 32
    assert saekit.load("res-l6/2").ref.sha256 == v2.sha256
    assert saekit.load(f"res-l6@sha256:{v2.sha256[:10]}").ref.version == "2"
    x = torch.randn(4, 8)
    assert torch.equal(sae.encode(x).indices, make_sae(1).encode(x).indices)

    # aliases: set, move, delete
    store.set_alias("res-l6", "production", 1)
    store.set_alias("res-l6", "production", 2)
    assert store.resolve("res-l6@production").version == 2
    assert {i.version: i.aliases for i in store.list_versions("res-l6")} == {1: ["candidate"], 2: ["production"]}
    store.delete_alias("res-l6", "production")
    with pytest.raises(NotFoundError, match="no alias 'production'"):
        store.resolve("res-l6@production")
    with pytest.raises(NotFoundError):
        store.delete_alias("res-l6", "production")
    with pytest.raises(NotFoundError, match="no version 9"):
        store.resolve("res-l6/9")
    with pytest.raises(NotFoundError, match="no registered SAE named 'nope'"):
        saekit.load("nope")
    with pytest.raises(ReferenceSyntaxError):
        store.set_alias("res-l6", "latest", 1)  # reserved by MLflow

    # tags and checks (harness API)
    report = tmp_path / "eval.json"
    report.write_text("{}")
    store.log_check("res-l6", 2, metrics={"explained_variance": 0.8}, files=[report],
                    tags={"saekit.gate": "pass", "metric.explained_variance": "0.8"})
    assert store.resolve("res-l6/2").tags["saekit.gate"] == "pass"
    assert set(store.check_files("res-l6", 2)) == {"eval.json"}
    assert store.check_files("res-l6", 1) == {}
    with pytest.raises(InputError, match="set by saekit"):
        saekit.register("res-l6", a1, tags={"saekit.sha256": "x"})


def test_unready_version_is_invisible(tmp_path):
    v1 = saekit.register("m", make_artifact(tmp_path / "a", seed=1))
    client = store._client()
    # a version whose registration died before it was verified: no ready tag
    mv = client.create_model_version("m", v1.source, run_id=v1.run_id, tags={store.SHA: "f" * 64})
    assert int(mv.version) == 2
    assert [i.version for i in store.list_versions("m")] == [1]
    assert saekit.load("m").ref.version == "1"
    with pytest.raises(NotFoundError, match="not ready"):
        saekit.load("m/2")


def test_corrupt_cache_is_fetched_again(tmp_path):
    v = saekit.register("m", make_artifact(tmp_path / "a"))
    cached = store.cache_path(v.sha256) / art.WEIGHTS
    assert cached.is_file()
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF
    cached.write_bytes(bytes(data))
    sae = saekit.load(f"m/{v.version}")
    assert sae.ref.sha256 == v.sha256
    assert art.artifact_sha256(store.cache_path(v.sha256)) == v.sha256
    shutil.rmtree(store.cache_path(v.sha256))
    assert store.fetch("m@sha256:" + v.sha256[:8]) == store.cache_path(v.sha256)


def test_tampered_store_is_refused(tmp_path):
    v = saekit.register("m", make_artifact(tmp_path / "a"))
    stored = Path(v.source.removeprefix("file://")) / art.WEIGHTS
    from safetensors.torch import save_file

    t = art.read_safetensors(stored)
    t["b_dec"] = t["b_dec"] + 1
    save_file(t, str(stored))
    shutil.rmtree(store.cache_path(v.sha256))
    with pytest.raises(IntegrityError, match=f"{art.WEIGHTS}: sha256 mismatch") as e:
        saekit.load("m/1")
    assert e.value.exit_code == 1
    assert not store.cache_path(v.sha256).exists()


def test_pinned_cached_load_needs_no_registry(tmp_path, saekit_home):
    v = saekit.register("m", make_artifact(tmp_path / "a"), alias="production")
    # The registry database is gone and mlflow cannot even be imported: content pinned by
    # its sha256 still loads; NAME/VERSION must ask the registry (it may name other content now).
    (saekit_home / "registry" / "mlflow.db").rename(saekit_home / "registry" / "gone.db")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["mlflow"] = None
        import saekit
        b = saekit.load("m@sha256:{v.sha256[:12]}")
        assert b.ref.sha256 == "{v.sha256}" and b.ref.version == "1"
        for ref in ("m/1", "m@production"):
            try:
                saekit.load(ref)
            except Exception as e:
                print("asks the registry:", ref, type(e).__name__)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert r.returncode == 0, r.stderr
    assert "asks the registry: m/1" in r.stdout and "asks the registry: m@production" in r.stdout


def test_unreachable_registry_names_the_offline_reference(tmp_path, monkeypatch):
    v = saekit.register("m", make_artifact(tmp_path / "a"), alias="production")

    def unreachable(ref):
        raise RegistryError("ConnectionError: refused", where="registry at http://user:***@host")

    monkeypatch.setattr(store, "resolve", unreachable)
    with pytest.raises(RegistryError) as e:
        saekit.load("m/1")
    assert str(e.value) == (
        "registry at http://user:***@host: ConnectionError: refused; m/1 is confirmed with the registry before it "
        f"loads; load m@sha256:{v.sha256[:16]} for the cached copy it named last"
    )
    assert saekit.load(f"m@sha256:{v.sha256[:16]}").ref.sha256 == v.sha256
    with pytest.raises(RegistryError, match="refused$"):  # nothing cached to name
        saekit.load("m/2")


def test_recreated_name_loads_its_new_weights(tmp_path):
    """Deleting a registered model and registering the name again (one process) is supported:
    NAME/VERSION then loads the new weights, never the old cached ones."""
    old = saekit.register("m", make_artifact(tmp_path / "a", seed=1))
    assert saekit.load("m/1").ref.sha256 == old.sha256
    store._client().delete_registered_model("m")
    with pytest.raises(NotFoundError, match="no version 1 of 'm'"):
        saekit.load("m/1")
    with pytest.raises(NotFoundError, match="no version 1 of 'm'"):
        store.fetch("m/1")
    new = saekit.register("m", make_artifact(tmp_path / "b", seed=2))
    assert new.version == 1 and new.sha256 != old.sha256
    sae = saekit.load("m/1")
    assert sae.ref.sha256 == new.sha256 and torch.equal(sae.tensors["W_enc"], make_sae(2).tensors["W_enc"])
    assert art.artifact_sha256(store.fetch("m/1")) == new.sha256
    assert cache.recall(store.registry_uri(), parse_ref("m/1"))["sha256"] == new.sha256  # the index was refreshed
    with pytest.raises(NotFoundError, match="no version with sha256"):  # the old content is no version of m now
        saekit.load(f"m@sha256:{old.sha256[:16]}")


def test_register_killed_mid_upload_leaves_nothing(tmp_path):
    """SIGKILL a registering process after its first file is uploaded; retry succeeds."""
    folder = make_artifact(tmp_path / "a", seed=5)
    _kill_mid_upload(folder, "m", tmp_path)
    assert store.list_versions() == []
    with pytest.raises(NotFoundError):
        saekit.load("m")
    v = saekit.register("m", folder)
    assert v.version == 1 and saekit.load("m").ref.sha256 == v.sha256


def _kill_mid_upload(folder: Path, name: str, tmp_path: Path) -> None:
    import signal
    import time

    marker = tmp_path / "uploading"
    code = textwrap.dedent(f"""
        import time, pathlib
        from saekit.registry import store
        real = store._upload_file
        def slow(*a, **k):
            real(*a, **k)
            pathlib.Path({str(marker)!r}).write_text("1")
            time.sleep(600)
        store._upload_file = slow
        import saekit
        saekit.register({name!r}, {str(folder)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "registering process never reached its upload"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_database_password_never_shown(monkeypatch, caplog, capsys, tmp_path):
    from saekit.schemas import RegistryError

    import mlflow.store.db.utils as dbutils

    monkeypatch.setattr(dbutils, "MAX_RETRY_COUNT", 1)  # MLflow retries a dead database ~100 s
    secret = "s3cret-pw"
    monkeypatch.setenv("SAEKIT_REGISTRY_URI", f"postgresql+psycopg2://postgres:{secret}@127.0.0.1:1/nodb")
    with pytest.raises(RegistryError) as e:
        saekit.register("m", make_artifact(tmp_path / "a"))
    out, err = capsys.readouterr()
    text = str(e.value) + out + err + caplog.text
    assert secret not in text and "postgres:***@" in str(e.value)
    assert store.mask(f"postgresql://u:{secret}@h/db?password={secret}") == "postgresql://u:***@h/db?password=***"
