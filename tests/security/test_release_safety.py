"""Releases (issue 25 items 1, 5, 8, 16): `release build --out` never deletes what saekit did
not write; `release publish` sends only a bundle saekit built from checked SAEs, verified
against the registry, with exactly the bytes it hashed; sae_ids may not nest. Each attack
runs the real CLI in a child process (sec_helpers) against a loopback Hub."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from sec_helpers import TOKEN, log_measure, python, saekit, tree_contains
from tests.releases.release_helpers import make_sae, register_checked, write_manifest

HUB_TAGS = ("saekit.hub_commit", "saekit.hub_repo", "saekit.hub_tag")


@pytest.fixture(scope="module")
def _registry(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One registry: 'good' checked and passing, 'raw' registered and never checked; a built
    bundle of 'good'. Made once (registering and building cost seconds)."""
    root = tmp_path_factory.mktemp("release-safety")
    mp = pytest.MonkeyPatch()
    mp.setenv("SAEKIT_HOME", str(root / "home"))
    mp.setenv("SAEKIT_QUIET", "1")
    try:
        from saekit.registry import store
        from saekit.releases.bundle import build

        good = register_checked("good", 0, root)
        raw = store.register("raw", make_sae(seed=7))
        manifest = write_manifest(root / "release.yaml", [(f"good/{good.version}", "layer6/good")], repo="org/rel")
        bundle = build(manifest, root / "bundle")
    finally:
        mp.undo()
    return {"home": root / "home", "manifest": manifest, "bundle": bundle, "good": good, "raw": raw}


@pytest.fixture
def reg(_registry: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The shared registry, as SAEKIT_HOME of this process and of the CLI children."""
    monkeypatch.setenv("SAEKIT_HOME", str(_registry["home"]))
    return _registry


@pytest.fixture
def hub(tmp_path: Path):
    from saekit.testing.loopback_hub import serve

    server = serve(tmp_path / "hub")
    yield server
    server.stop()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _write_sums(folder: Path) -> None:
    """SHA256SUMS as `sha256sum` writes it: what anyone can make by hand."""
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(folder).as_posix()}\n"
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "SHA256SUMS"]
    (folder / "SHA256SUMS").write_text("".join(lines))


def _hub_tags(name: str, version: int) -> dict[str, str]:
    from saekit.registry import store

    return {k: v for k, v in store.resolve(f"{name}/{version}").tags.items() if k in HUB_TAGS}


def _repo_exists(hub, repo: str) -> bool:
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub.url).repo_exists(repo)


def _no_temp_left(parent: Path, name: str) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")], list(parent.iterdir())


# --- item 1: build --out never deletes what saekit did not write ---------------------------


def test_build_out_keeps_a_user_folder_that_holds_a_sha256sums(reg, tmp_path):
    """The reported loss: any non-empty folder holding a file named SHA256SUMS was deleted."""
    mine = tmp_path / "mydocs"
    (mine / "chapters").mkdir(parents=True)
    (mine / "SHA256SUMS").write_text("my own checksums\n")
    (mine / "thesis.tex").write_text("years of work\n")
    (mine / "chapters" / "one.tex").write_text("chapter one\n")
    before = _snapshot(mine)
    for extra in ([], ["--force"]):
        r = saekit("release", "build", str(reg["manifest"]), "--out", str(mine), *extra, home=reg["home"])
        line = r.one_line_error(2)
        log_measure(f"build --out user folder {extra}", r)
        assert "not a saekit bundle" in line and str(mine) in line
        assert _snapshot(mine) == before
        _no_temp_left(tmp_path, "mydocs")


def test_build_out_refuses_a_symlink_and_a_path_through_one(reg, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("keep")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    for out in (tmp_path / "link", tmp_path / "link" / "bundle"):
        r = saekit("release", "build", str(reg["manifest"]), "--out", str(out), "--force", home=reg["home"])
        assert "symlink" in r.one_line_error(2)
        assert _snapshot(real) == {"keep.txt": b"keep"}  # nothing written through the link


def test_build_force_replaces_only_an_intact_saekit_bundle(reg, tmp_path):
    out = tmp_path / "bundle"
    r = saekit("release", "build", str(reg["manifest"]), "--out", str(out), home=reg["home"])
    assert r.rc == 0, r.err
    built = _snapshot(out)
    # A bundle saekit wrote: refused without --force, replaced (same bytes) with it.
    r = saekit("release", "build", str(reg["manifest"]), "--out", str(out), home=reg["home"])
    assert "--force" in r.one_line_error(2) and _snapshot(out) == built
    r = saekit("release", "build", str(reg["manifest"]), "--out", str(out), "--force", home=reg["home"])
    assert r.rc == 0, r.err
    log_measure("build --force over a bundle", r)
    assert _snapshot(out) == built
    _no_temp_left(tmp_path, "bundle")
    # A user's file inside it makes it not (only) saekit's: refused, file kept.
    (out / "notes.txt").write_text("mine")
    r = saekit("release", "build", str(reg["manifest"]), "--out", str(out), "--force", home=reg["home"])
    assert "not a saekit bundle" in r.one_line_error(2)
    assert (out / "notes.txt").read_text() == "mine"
    # A look-alike: a release.json saekit did not write and SHA256SUMS made by sha256sum.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "release.json").write_text(json.dumps({"saes": [], "tag": "v1.0.0"}))
    (fake / "data.csv").write_text("1,2,3\n")
    _write_sums(fake)
    before = _snapshot(fake)
    r = saekit("release", "build", str(reg["manifest"]), "--out", str(fake), "--force", home=reg["home"])
    assert "not a saekit bundle" in r.one_line_error(2)
    assert _snapshot(fake) == before


def test_replace_keeps_a_file_that_appears_in_the_old_bundle_during_the_build(reg, tmp_path, monkeypatch):
    """The old bundle is removed only after the new one is in place, file by file as its
    SHA256SUMS lists them: a file added meanwhile survives (in the moved-aside folder)."""
    from saekit.releases import bundle as B

    out = B.build(reg["manifest"], tmp_path / "bundle")
    real_swap = B._swap_into_place

    def late_write(tmp, dest):
        (dest / "late.txt").write_text("written during the build")
        return real_swap(tmp, dest)

    monkeypatch.setattr(B, "_swap_into_place", late_write)
    B.build(reg["manifest"], out, force=True)
    B.verify(out)
    kept = [p for p in tmp_path.glob(".bundle.old-*/late.txt")]
    assert [p.read_text() for p in kept] == ["written during the build"]


def test_a_failed_build_leaves_the_old_bundle_and_a_file_at_out_alone(reg, tmp_path):
    from saekit.releases.bundle import build
    from saekit.schemas import GateFailedError, InputError

    out = build(reg["manifest"], tmp_path / "bundle")
    built = _snapshot(out)
    unchecked = write_manifest(tmp_path / "raw.yaml", [(f"raw/{reg['raw'].version}", "raw")], repo="org/rel")
    with pytest.raises(GateFailedError, match="no check recorded"):
        build(unchecked, out, run_checks=False, force=True)
    assert _snapshot(out) == built
    _no_temp_left(tmp_path, "bundle")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a folder"):
        build(reg["manifest"], tmp_path / "notes.txt", force=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# --- item 16: nested sae_ids ------------------------------------------------------------


@pytest.mark.parametrize("ids", [("a", "a/b"), ("x/y", "x/y/z"), ("A", "a/b"), ("same", "SAME")])
def test_sae_ids_may_not_nest_or_repeat(ids):
    from saekit.releases.manifest import parse_manifest
    from saekit.schemas import InputError

    data = {"release_id": "r", "version": "1.0.0", "license": "mit", "base_model": {"id": "m"}, "hub_repo": "o/r",
            "saes": [{"ref": "good/1", "sae_id": sid} for sid in ids]}
    with pytest.raises(InputError, match=r"saes: sae_id .*(nests inside|must be unique)"):
        parse_manifest(data, where="m.yaml")
    data["saes"] = [{"ref": "good/1", "sae_id": sid} for sid in ("a", "ab/c", "a-b")]
    assert len(parse_manifest(data).saes) == 3  # siblings with a common prefix are fine


@pytest.mark.parametrize("sae_id", ["Browser/x", "readme.MD", "sha256sums", "Release.JSON"])
def test_sae_ids_may_not_take_a_bundle_entry_in_another_case(sae_id):
    """Before: the bundle-entry check was case-sensitive while nesting was case-folded, so
    ``sha256sums`` or ``Browser/x`` was accepted: on a case-insensitive disk that folder is the
    bundle's SHA256SUMS file or browser folder."""
    from saekit.releases.manifest import parse_manifest
    from saekit.schemas import InputError

    data = {"release_id": "r", "version": "1.0.0", "license": "mit", "base_model": {"id": "m"}, "hub_repo": "o/r",
            "saes": [{"ref": "good/1", "sae_id": sae_id}]}
    with pytest.raises(InputError, match="collides with a bundle file or folder"):
        parse_manifest(data, where="m.yaml")


def test_build_refuses_nested_sae_ids(reg, tmp_path):
    good = reg["good"]
    m = write_manifest(tmp_path / "m.yaml", [(f"good/{good.version}", "a"), (f"good/{good.version}", "a/b")])
    r = saekit("release", "build", str(m), "--out", str(tmp_path / "out"), home=reg["home"])
    assert "sae_id 'a/b' nests inside sae_id 'a'" in r.one_line_error(2)
    assert not (tmp_path / "out").exists()
    _no_temp_left(tmp_path, "out")


# --- item 5: publish only checked bundles ------------------------------------------------


def _forge(reg, tmp_path: Path, name: str, *, version_of, weights_of, eval_sha: str | None = None) -> Path:
    """A copy of the good bundle made to look like saekit's: release.json names the registry
    version ``version_of`` (VersionInfo), the SAE folder holds ``weights_of``'s cfg and
    weights, eval.json claims ``eval_sha``; release.json's file list and SHA256SUMS redone."""
    from saekit.registry import store

    forged = tmp_path / name
    shutil.copytree(reg["bundle"], forged)
    sae_dir = forged / "layer6/good"
    src = Path(store.fetch(f"{weights_of.name}/{weights_of.version}"))
    for f in ("cfg.json", "sae_weights.safetensors"):
        shutil.copyfile(src / f, sae_dir / f)
    rec = json.loads((sae_dir / "eval.json").read_text())
    rec["sae"].update(name=version_of.name, version=str(version_of.version), sha256=eval_sha or version_of.sha256)
    (sae_dir / "eval.json").write_text(json.dumps(rec))
    release = json.loads((forged / "release.json").read_text())
    sae = release["saes"][0]
    sae.update(registry={"name": version_of.name, "version": version_of.version}, sha256=version_of.sha256,
               gate="pass", ref=f"{version_of.name}/{version_of.version}")
    release["manifest"]["saes"][0]["ref"] = sae["ref"]
    release["files"] = {p.relative_to(forged).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                        for p in sorted(forged.rglob("*")) if p.is_file() and p.name not in ("SHA256SUMS", "release.json")}
    (forged / "release.json").write_text(json.dumps(release))
    _write_sums(forged)
    return forged


def _refused(reg, hub, bundle: Path, repo: str, *, code: int = 1) -> str:
    r = saekit("release", "publish", str(bundle), "--repo", repo, home=reg["home"], HF_ENDPOINT=hub.url)
    line = r.one_line_error(code)
    log_measure(f"publish {bundle.name}", r)
    assert not _repo_exists(hub, repo)
    assert TOKEN.encode() not in b"".join(p.read_bytes() for p in bundle.rglob("*") if p.is_file())
    return line


def test_publish_refuses_the_hand_written_bundle_of_a_never_checked_sae(reg, hub, tmp_path):
    """The reported case: release.json says gate: pass, SHA256SUMS made with sha256sum."""
    from saekit.registry import store

    raw = reg["raw"]
    hand = tmp_path / "handmade"
    (hand / "x").mkdir(parents=True)
    src = Path(store.fetch(f"raw/{raw.version}"))
    for f in ("cfg.json", "sae_weights.safetensors"):
        shutil.copyfile(src / f, hand / "x" / f)
    (hand / "release.json").write_text(json.dumps({
        "release_id": "evil", "version": "1.0.0", "tag": "v1.0.0", "hub_repo": "org/evil",
        "saes": [{"sae_id": "x", "registry": {"name": "raw", "version": raw.version}, "sha256": raw.sha256,
                  "gate": "pass"}], "files": {}}))
    _write_sums(hand)
    line = _refused(reg, hub, hand, "org/evil")
    assert f"gate failed for sae_id 'x' (raw/{raw.version}): no check recorded; refusing to publish" in line
    assert _hub_tags("raw", raw.version) == {}


def test_publish_refuses_a_saekit_shaped_bundle_of_a_never_checked_sae(reg, hub, tmp_path):
    """Everything in the bundle agrees (release.json in saekit's model, eval.json for its
    sha256, SHA256SUMS): only the registry can say it was never checked."""
    raw = reg["raw"]
    forged = _forge(reg, tmp_path, "forged", version_of=raw, weights_of=raw)
    line = _refused(reg, hub, forged, "org/forged")
    assert f"sae_id 'layer6/good' (raw/{raw.version})" in line and "no check recorded" in line
    assert _hub_tags("raw", raw.version) == {}


def test_publish_refuses_a_forged_gate_tag_without_a_check_record(reg, hub, tmp_path):
    """A gate tag written straight to the MLflow server is not a check record."""
    from saekit.registry import store

    info = store.register("tagged", make_sae(seed=11))
    store.record_tags("tagged", info.version, {"saekit.gate": "pass"})
    forged = _forge(reg, tmp_path, "tagged", version_of=info, weights_of=info)
    assert "no check record (eval.json)" in _refused(reg, hub, forged, "org/tagged")
    assert _hub_tags("tagged", info.version) == {}


def test_publish_refuses_other_weights_under_a_checked_version(reg, hub, tmp_path):
    """release.json names the checked version, the folder holds the unchecked weights."""
    good, raw = reg["good"], reg["raw"]
    forged = _forge(reg, tmp_path, "swapped", version_of=good, weights_of=raw)
    line = _refused(reg, hub, forged, "org/swapped")
    assert "the bundle's files hash to sha256" in line and f"not the version's {good.sha256[:12]}" in line
    assert _hub_tags("good", good.version) == {}


def test_publish_refuses_a_forged_check_record(reg, hub, tmp_path):
    """The right weights, but eval.json is not the record the registry's check logged."""
    good = reg["good"]
    forged = _forge(reg, tmp_path, "boasting", version_of=good, weights_of=good)
    assert "eval.json is not the registry's check record" in _refused(reg, hub, forged, "org/boasting")


def test_publish_refuses_a_checked_sae_in_a_release_json_saekit_did_not_write(reg, hub, tmp_path):
    """Every SAE checked and its files right, but release.json is not saekit's (say, gate
    verdicts or metrics edited by hand beyond the model): refused, nothing uploaded."""
    bundle = tmp_path / "edited"
    shutil.copytree(reg["bundle"], bundle)
    release = json.loads((bundle / "release.json").read_text())
    release["saes"][0]["gate"] = "fail"
    release["note"] = "edited"
    (bundle / "release.json").write_text(json.dumps(release))
    _write_sums(bundle)
    assert "not a saekit release.json" in _refused(reg, hub, bundle, "org/edited")


# --- item 8: the bytes hashed are the bytes uploaded --------------------------------------

_HOOK = """
import huggingface_hub, pathlib, sys
real = huggingface_hub.HfApi.create_commit
def changing(self, *a, **k):
    # between the hash and the upload: same sizes, other bytes
    for rel in ("README.md", "layer6/good/sae_weights.safetensors"):
        p = pathlib.Path({bundle!r}) / rel
        data = bytearray(p.read_bytes())
        data[-2] ^= 0xFF
        p.write_bytes(bytes(data))
    return real(self, *a, **k)
huggingface_hub.HfApi.create_commit = changing
from saekit.cli import main
sys.argv = ["saekit", "release", "publish", {bundle!r}, "--repo", "org/race"]
main()
"""


def test_publish_uploads_exactly_the_bytes_it_hashed(reg, hub, tmp_path):
    """A file rewritten in the folder after its hash (here: when the commit is sent) does not
    reach the Hub; what is there matches SHA256SUMS, byte for byte."""
    from huggingface_hub import HfApi, hf_hub_download

    bundle = tmp_path / "bundle"
    shutil.copytree(reg["bundle"], bundle)
    want = _snapshot(bundle)
    r = python(_HOOK.format(bundle=str(bundle)), home=reg["home"], HF_ENDPOINT=hub.url)
    assert r.rc == 0, r.err
    log_measure("publish with files changing before the upload", r)
    assert _snapshot(bundle) != want  # the hook did change them on disk
    api = HfApi(endpoint=hub.url)
    files = {f.path for f in api.list_repo_tree("org/race", recursive=True, revision="v1.0.0") if hasattr(f, "blob_id")}
    assert files == set(want) | {".gitattributes"}
    for rel in want:
        got = Path(hf_hub_download("org/race", rel, revision="v1.0.0", endpoint=hub.url,
                                   cache_dir=str(tmp_path / "dl"))).read_bytes()
        assert got == want[rel], rel
    assert not tree_contains(tmp_path / "dl", TOKEN.encode())


def test_publish_refuses_a_file_changed_after_the_build(reg, hub, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(reg["bundle"], bundle)
    readme = bundle / "README.md"
    readme.write_bytes(readme.read_bytes().replace(b"SAE", b"SAF", 1))
    assert "README.md: sha256 mismatch" in _refused(reg, hub, bundle, "org/changed")
