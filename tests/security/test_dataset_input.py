"""Bad ``saekit check --dataset`` input: one line, exit 2, no traceback, nothing written;
a malformed spec or a missing file fails before the language model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from sec_helpers import log_measure, saekit

pytestmark = pytest.mark.slow


@pytest.fixture
def hub(tmp_path: Path):
    from saekit.testing.loopback_hub import serve

    server = serve(tmp_path / "hub")
    yield server
    server.stop()


def _check(real_sae_dir: Path, tmp_path: Path, dataset: str, **env: str):
    out = tmp_path / "out"
    r = saekit("check", str(real_sae_dir), "--dataset", dataset, "--tokens", "64", "--context", "32", "--no-cards",
               "--out", str(out), home=tmp_path / "home", cwd=tmp_path, timeout=120, **env)
    assert not out.exists()  # nothing half-written
    return r


@pytest.mark.parametrize("dataset, message", [
    ("hf://datasets/only-org", "expected hf://datasets/ORG/NAME"),
    ("hf://datasets/org/../x", "expected hf://datasets/ORG/NAME"),
    ("hf://models/org/name", "hf://datasets/ORG/NAME"),
    ("./no/such/rows.jsonl", "no such dataset file or folder"),
])
def test_malformed_or_missing_dataset_fails_before_the_model_loads(real_sae_dir, tmp_path, dataset, message):
    r = _check(real_sae_dir, tmp_path, dataset)
    line = r.one_line_error(2)
    assert message in line, line
    log_measure(f"check --dataset {dataset}", r)
    assert r.seconds < 60


def test_unreadable_rows_are_one_line(real_sae_dir, tmp_path):
    from saekit.harness.datasets import file_rows
    from saekit.schemas import InputError

    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really parquet" * 10)
    assert "not a readable parquet file" in _check(real_sae_dir, tmp_path, str(bad)).one_line_error(2)
    # the same errors, without a model: what reaches the CLI as that one line
    for name, text, message in [
        ("rows.jsonl", '{"text": "fine"}\n[1, 2]\n', "line 2 is not a JSON object"),
        ("nojson.jsonl", '{"text": "fine"}\n{"text": \n', "line 2 is not JSON"),
        ("rows.jsonl.zst", "not zstd at all", "not a readable zstd file"),
    ]:
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=message):
            list(file_rows(tmp_path / name, name))


def test_missing_hub_dataset_and_uncached_offline_are_one_line(real_sae_dir, tmp_path, hub):
    r = _check(real_sae_dir, tmp_path, "hf://datasets/org/missing", HF_ENDPOINT=hub.url)
    assert "no repo by that name" in r.one_line_error(2)
    r = _check(real_sae_dir, tmp_path, "hf://datasets/org/missing@" + "a" * 40, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="1")
    assert "HF_HUB_OFFLINE" in r.one_line_error(2)
    log_measure("check --dataset (offline, not cached)", r)


def _req(url: str, body: dict | list | None = None) -> int:
    import json
    import urllib.error
    import urllib.request

    data = None
    if isinstance(body, list):
        data = "\n".join(json.dumps(x) for x in body).encode()
    elif body is not None:
        data = json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST" if data else "GET"),
                                    timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.parametrize("org,name,kind", [("../../x", "repo", "dataset"), ("org", "../../x", "dataset"),
                                           ("a--b", "x", "dataset"), ("org", "x/y", "dataset"),
                                           ("org", "repo", "space"), ("datasets", "x", "model")])
def test_dataset_repos_keep_the_loopback_hubs_checks(hub, tmp_path, org, name, kind):
    assert _req(f"{hub.url}/api/repos/create", {"name": name, "organization": org, "type": kind}) == 400
    assert [p for p in tmp_path.rglob("*") if "hub" not in p.parts] == []


def test_dataset_commits_are_confined_and_apart_from_models(hub, tmp_path):
    assert _req(f"{hub.url}/api/repos/create", {"name": "ds", "organization": "org", "type": "dataset"}) == 200
    header = {"key": "header", "value": {"summary": "x", "description": ""}}
    for path in ("../../escape.txt", "/abs.txt", "a//b.txt", "../../../repos/org/ds/x"):
        line = {"key": "file", "value": {"path": path, "encoding": "base64", "content": "eA=="}}
        assert _req(f"{hub.url}/api/datasets/org/ds/commit/main", [header, line]) == 400, path
    line = {"key": "file", "value": {"path": "data/train.jsonl", "encoding": "base64", "content": "eA=="}}
    assert _req(f"{hub.url}/api/datasets/org/ds/commit/main", [header, line]) == 200
    assert _req(f"{hub.url}/datasets/org/ds/resolve/main/data/train.jsonl") == 200
    assert _req(f"{hub.url}/org/ds/resolve/main/data/train.jsonl") == 404  # no model org/ds: kept apart
    assert _req(f"{hub.url}/api/models/org/ds") == 404
    assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == ["datasets", "objects"]


# --- redteam: a FIFO named like a data file ------------------------------------------------------


@pytest.mark.parametrize("name", ["rows.jsonl", "corpus.txt"])
def test_a_fifo_dataset_does_not_hang(real_sae_dir, tmp_path, name):
    """Before: ``check --dataset ./rows.jsonl`` on a FIFO blocked in its open forever (killed
    at 90 s). Now: one line, exit 2, nothing written."""
    import os

    os.mkfifo(tmp_path / name)
    r = _check(real_sae_dir, tmp_path, f"./{name}")
    assert f"{name}: not a regular file" in r.one_line_error(2)
    log_measure(f"check --dataset FIFO {name}", r)
    assert r.seconds < 60


@pytest.mark.parametrize("layout", ["one-file", "folder"])
def test_a_text_corpus_too_big_to_tokenize_whole_is_refused(real_sae_dir, tmp_path, layout):
    """Before: a 200 MiB one-line .txt was read and tokenized whole: 22 GiB, killed by the
    OOM killer after 216 s. Now: over MAX_TEXT_BYTES (4 MiB, one file or a folder's
    together) is one line, exit 2, before it is read."""
    from saekit.harness.text import MAX_TEXT_BYTES

    data = tmp_path / "data"
    data.mkdir()
    if layout == "one-file":
        (data / "big.txt").write_bytes(b"word " * (MAX_TEXT_BYTES // 5 + 1))
        dataset = "./data/big.txt"
    else:
        for i in range(2):
            (data / f"part{i}.txt").write_bytes(b"word " * (MAX_TEXT_BYTES // 10 + 1))
        dataset = "./data"
    r = _check(real_sae_dir, tmp_path, dataset)
    assert f"bytes of text, over the {MAX_TEXT_BYTES >> 20} MiB read whole" in r.one_line_error(2)
    log_measure(f"check --dataset {layout} .txt over the bound", r)
    assert r.seconds < 60 and r.peak_mib < 1000
