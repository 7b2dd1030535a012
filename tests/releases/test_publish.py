"""Publishing to the Hub and loading back, against the loopback Hub, through the real
huggingface_hub client (and real SAELens)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from release_helpers import run_py, write_manifest

TOKEN = "hf_" + "SeCrEtT0kenNeverShown" + "x7q2"


def test_publish_tag_record_republish_and_load(two_sae_manifest: Path, tmp_path: Path, hub, monkeypatch, capfd):
    import torch

    import saekit
    from saekit.registry import store
    from saekit.releases.bundle import build
    from saekit.releases.publish import publish

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    bundle = build(two_sae_manifest, tmp_path / "bundle")
    first = publish(bundle, "org/smollm2-saes")
    assert first.changed and first.tag == "v1.0.0" and len(first.commit) == 40
    assert first.registry_updated == ["res-l6-a/1", "res-l6-b/1"]
    tags = store.resolve("res-l6-a/1").tags
    assert tags["saekit.hub_commit"] == first.commit
    assert tags["saekit.hub_repo"] == "org/smollm2-saes" and tags["saekit.hub_tag"] == "v1.0.0"

    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url)
    refs = api.list_repo_refs("org/smollm2-saes")
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1.0.0", first.commit)]
    files = {f.path: f for f in api.list_repo_tree("org/smollm2-saes", recursive=True, revision="v1.0.0")
             if hasattr(f, "blob_id")}
    assert set(files) == set(first.files) | {".gitattributes"}
    assert files["layer6/a/sae_weights.safetensors"].lfs is not None  # went by the LFS protocol
    assert files["README.md"].lfs is None

    # Same bundle again: nothing changes, and it says so.
    again = publish(build(two_sae_manifest, tmp_path / "bundle", force=True), "org/smollm2-saes")
    assert not again.changed and again.commit == first.commit and "nothing changed" in again.message
    assert len(api.list_repo_refs("org/smollm2-saes").branches) == 1
    assert api.repo_info("org/smollm2-saes").sha == first.commit

    # Load back by name: verified against SHA256SUMS and the artifact sha256.
    sae = saekit.load("hf://org/smollm2-saes@v1.0.0/layer6/a")
    reg = saekit.load("res-l6-a/1")
    assert sae.ref.sha256 == reg.ref.sha256 and sae.ref.version == first.commit
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sae.encode(x).indices, reg.encode(x).indices)
    assert torch.equal(sae.encode(x).values, reg.encode(x).values)
    assert saekit.load(f"hf://org/smollm2-saes@{first.commit}/layer6-b").ref.sha256 == store.resolve("res-l6-b/1").sha256

    # The token never reaches an output, the bundle, the registry or the Hub's storage.
    out, err = capfd.readouterr()
    assert TOKEN not in out + err
    for root in (bundle, hub.store.root, Path(os.environ["SAEKIT_HOME"])):
        for p in root.rglob("*"):
            if p.is_file() and p.stat().st_size < 50_000_000:
                assert TOKEN.encode() not in p.read_bytes(), p
    assert not any(TOKEN in v for v in store.resolve("res-l6-a/1").tags.values())


def test_publish_refuses_conflicts(two_sae_manifest: Path, tmp_path: Path, hub):
    from huggingface_hub import HfApi

    from saekit.releases.bundle import build
    from saekit.releases.publish import publish
    from saekit.schemas import PublishError

    bundle = build(two_sae_manifest, tmp_path / "bundle")
    publish(bundle, "org/r")
    # Same version, different content: refused.
    m2 = write_manifest(tmp_path / "m2.yaml", [("res-l6-b@production", "only-b")])
    other = build(m2, tmp_path / "other")
    with pytest.raises(PublishError, match="tag v1.0.0 already exists on org/r with different content"):
        publish(other, "org/r")
    # A commit that lands between our look at main and our commit fails loudly (412).
    m3 = write_manifest(tmp_path / "m3.yaml", [("res-l6-b@production", "only-b")], version="1.1.0")
    newer = build(m3, tmp_path / "newer")
    from saekit.releases import publish as pub

    real = pub._remote_sums

    def racing(api, repo_id, revision):
        HfApi(endpoint=hub.url).upload_file(path_or_fileobj=b"race", path_in_repo="race.txt", repo_id=repo_id)
        return real(api, repo_id, revision)

    pub._remote_sums = racing
    try:
        with pytest.raises(PublishError, match="changed since the parent commit"):
            publish(newer, "org/r")
    finally:
        pub._remote_sums = real
    # Published afterwards, it replaces the files of the previous release on main.
    res = publish(newer, "org/r")
    tree = {f.path for f in HfApi(endpoint=hub.url).list_repo_tree("org/r", recursive=True, revision="v1.1.0")
            if hasattr(f, "blob_id")}
    assert "only-b/cfg.json" in tree and "layer6/a/cfg.json" not in tree and "race.txt" not in tree
    assert res.changed


def test_dry_run_needs_no_hub(two_sae_manifest: Path, tmp_path: Path, monkeypatch):
    from saekit.releases.bundle import build
    from saekit.releases.publish import publish

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    res = publish(build(two_sae_manifest, tmp_path / "bundle"), "org/dry", dry_run=True)
    assert res.dry_run and res.commit is None and res.tag == "v1.0.0"
    assert "SHA256SUMS" in res.files and "layer6/a/sae_weights.safetensors" in res.files


def test_load_hf_verifies(two_sae_manifest: Path, tmp_path: Path, hub):
    import saekit
    from saekit.releases.bundle import build
    from saekit.releases.publish import publish
    from saekit.schemas import IntegrityError, NotFoundError

    publish(build(two_sae_manifest, tmp_path / "bundle"), "org/v")
    assert saekit.load("hf://org/v@v1.0.0/layer6/a").ref.name == "layer6/a"
    with pytest.raises(NotFoundError):
        saekit.load("hf://org/v@v1.0.0/no-such-sae")
    with pytest.raises(NotFoundError, match="no revision"):
        saekit.load("hf://org/v@v9.9.9/layer6/a")
    with pytest.raises(NotFoundError, match="no repo"):
        saekit.load("hf://org/missing/layer6/a")
    # Corrupt a stored blob on the Hub side: the download no longer matches SHA256SUMS.
    record = (tmp_path / "bundle" / "layer6-b" / "eval.json").read_bytes()
    import hashlib

    blob = hub.store._blob(hashlib.sha256(record).hexdigest())
    blob.write_bytes(record.replace(b'"core"', b'"CORE"'))
    with pytest.raises(IntegrityError, match="layer6-b/eval.json: sha256 mismatch against SHA256SUMS"):
        saekit.load("hf://org/v@v1.0.0/layer6-b")


def test_sae_lens_loads_the_published_sae(two_sae_manifest: Path, tmp_path: Path, hub):
    from saekit.releases.bundle import build
    from saekit.releases.publish import publish

    publish(build(two_sae_manifest, tmp_path / "bundle"), "org/lens")
    # A fresh process: huggingface_hub (under SAELens) reads HF_ENDPOINT when imported.
    code = """
import json, torch, saekit
from sae_lens import SAE
theirs = SAE.from_pretrained(release="org/lens", sae_id="layer6/a")
mine = saekit.load("hf://org/lens@v1.0.0/layer6/a")
x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
dense = theirs.encode(x)
ours = mine.encode_dense(x)
print(json.dumps({"cls": type(theirs).__name__, "equal": bool(torch.equal(dense, ours)),
                  "recon": float((theirs.decode(dense) - mine(x)).abs().max())}))
"""
    r = run_py(code)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["cls"] == "TopKSAE" and res["equal"], res
    assert res["recon"] < 1e-5


def test_cli_build_publish_json_and_exit_codes(two_sae_manifest: Path, tmp_path: Path, hub):
    env = {**os.environ, "HF_TOKEN": TOKEN}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "saekit", *args], capture_output=True, text=True, env=env, timeout=120)

    r = cli("release", "build", str(two_sae_manifest), "--out", str(tmp_path / "b"), "--json")
    assert r.returncode == 0, r.stderr
    built = json.loads(r.stdout)
    assert built["tag"] == "v1.0.0" and [s["sae_id"] for s in built["saes"]] == ["layer6/a", "layer6-b"]
    r = cli("release", "publish", str(tmp_path / "b"), "--repo", "org/cli", "--json")
    assert r.returncode == 0, r.stderr
    pub = json.loads(r.stdout)
    assert pub["changed"] and pub["tag"] == "v1.0.0" and pub["registry_updated"] == ["res-l6-a/1", "res-l6-b/1"]
    assert TOKEN not in r.stdout + r.stderr
    # Tampered bundle: a failed check, exit 1, one line, no traceback.
    (tmp_path / "b" / "README.md").write_text("changed")
    r = cli("release", "publish", str(tmp_path / "b"), "--repo", "org/cli")
    assert r.returncode == 1 and "README.md: sha256 mismatch" in r.stderr and "Traceback" not in r.stderr
    r = cli("release", "build", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
