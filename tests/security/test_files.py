"""One rule for files: saekit reads, hashes, copies and uploads only regular files inside
the folder it was given. Symlinks (to files, to folders, at every depth), FIFOs, devices,
hard links and paths that leave the folder are refused with one line naming them, at
register, import, release verify and publish, and nothing outside is read or written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from saekit.schemas import InputError, IntegrityError, NotFoundError, UnsafePathError, safeio
from sec_helpers import SECRET, log_measure, saekit, tree_contains
from tests.registry.conftest import make_artifact


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside every folder saekit is given; its bytes must never be read into anything."""
    path = tmp_path / "outside" / "secret.txt"
    path.parent.mkdir()
    path.write_text(f"password={SECRET}\n")
    return path


# --- the rule itself -------------------------------------------------------------------


def test_regular_file_refuses_links_at_every_depth(tmp_path, secret):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "ok.txt").write_text("fine")
    assert safeio.read_bytes(root, "a/b/ok.txt") == b"fine"
    # a symlinked file at depth 0, 1, 2
    for rel in ("link.txt", "a/link.txt", "a/b/link.txt"):
        (root / rel).symlink_to(secret)
        with pytest.raises(UnsafePathError, match="is a symlink"):
            safeio.read_bytes(root, rel)
    # a symlinked folder in the middle of the path, pointing outside and pointing inside
    (root / "out").symlink_to(secret.parent, target_is_directory=True)
    (root / "in").symlink_to(root / "a", target_is_directory=True)
    for rel in ("out/secret.txt", "in/b/ok.txt"):
        with pytest.raises(UnsafePathError, match="is a symlink"):
            safeio.read_bytes(root, rel)
    # the listing of the whole folder refuses the first link it meets
    with pytest.raises(UnsafePathError):
        safeio.list_files(root)


def test_fifo_device_and_hard_link_are_refused(tmp_path, secret):
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "fifo")
    with pytest.raises(UnsafePathError, match="FIFO"):
        safeio.read_bytes(root, "fifo")  # refused before open: no hang
    os.link(secret, root / "hard.txt")
    with pytest.raises(UnsafePathError, match="hard link"):
        safeio.read_bytes(root, "hard.txt")
    try:
        os.mknod(root / "null", 0o600 | 0o020000, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        pytest.skip("cannot create a device node here")
    with pytest.raises(UnsafePathError, match="device"):
        safeio.read_bytes(root, "null")


@pytest.mark.parametrize(
    "rel", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/.", "a\\b", "a\nb", "a\x00b", "", "a/" * 600]
)
def test_relative_paths_that_leave_are_refused(rel):
    with pytest.raises(UnsafePathError):
        safeio.check_relpath(rel)


def test_copy_never_writes_through_a_link_at_the_destination(tmp_path, secret):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("new")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "f").symlink_to(secret)
    with pytest.raises(UnsafePathError, match="f: is a symlink; saekit never writes through a link"):
        safeio.copy_file(src, "f", dest / "f")
    assert (dest / "f").is_symlink() and SECRET in secret.read_text()  # the link's target was not overwritten
    assert sorted(p.name for p in dest.iterdir()) == ["f"]  # no temporary file left behind


# --- register / import ------------------------------------------------------------------


@pytest.mark.parametrize("which", ["sparsity.safetensors", "cfg.json", "sae_weights.safetensors"])
def test_register_refuses_a_symlinked_file(tmp_path, secret, saekit_home, which):
    from saekit.registry import store

    art = make_artifact(tmp_path / "art")
    target = tmp_path / "outside" / which
    if which == "sparsity.safetensors":
        target = secret  # the reported attack: sparsity.safetensors -> /etc/passwd
    else:
        shutil.move(art / which, target)
    (art / which).symlink_to(target)
    with pytest.raises(UnsafePathError, match=f"{which}: is a symlink"):
        store.register("sym", art)
    assert not saekit_home.exists() or tree_contains(saekit_home, SECRET.encode()) == []


def test_register_refuses_a_symlinked_artifact_subfolder_and_hard_link(tmp_path, secret, saekit_home):
    from saekit.registry import store

    art = make_artifact(tmp_path / "art")
    os.link(secret, art / "sparsity.safetensors")
    with pytest.raises(UnsafePathError, match="hard link"):
        store.register("hard", art)
    assert not saekit_home.exists() or tree_contains(saekit_home, SECRET.encode()) == []


def test_import_refuses_links_inside_a_checkpoint(tmp_path, secret):
    from saekit.registry.formats import import_checkpoint

    src = make_artifact(tmp_path / "saelens")
    (src / "extra").mkdir()
    (src / "extra" / "notes.txt").symlink_to(secret)
    with pytest.raises(UnsafePathError, match="is a symlink"):
        import_checkpoint("saelens", src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_register_symlink_one_line_exit_2(tmp_path, secret):
    art = make_artifact(tmp_path / "art")
    (art / "sparsity.safetensors").symlink_to(secret)
    home = tmp_path / "home"
    r = saekit("register", str(art), "--name", "base", home=home)
    line = r.one_line_error(2)
    log_measure("register with sparsity.safetensors -> secret", r)
    assert "sparsity.safetensors: is a symlink" in line
    assert not home.exists() or tree_contains(home, SECRET.encode()) == []


# --- bundles: verify and publish ---------------------------------------------------------


def _fake_bundle(root: Path) -> None:
    """A minimal folder in bundle layout, its release.json in saekit's ReleaseBundle form, with
    a consistent SHA256SUMS (of no registered SAE: publish refuses it at the registry check)."""
    import json

    from saekit.releases.bundle import write_sums

    (root / "sae").mkdir(parents=True)
    (root / "sae" / "cfg.json").write_text("{}")
    manifest = {"release_id": "r", "version": "1.0.0", "license": "mit", "base_model": {"id": "m"},
                "saes": [{"ref": "x/1", "sae_id": "sae"}], "hub_repo": "org/x"}
    sae = {"sae_id": "sae", "ref": "x/1", "registry": {"name": "x", "version": 1}, "sha256": "0" * 64, "gate": "pass",
           "eval_id": None, "metrics": {}, "d_in": None, "d_sae": None, "architecture": None, "n_cards": 0,
           "card_files": []}
    (root / "release.json").write_text(json.dumps({
        "format": "saekit-release/1", "release_id": "r", "version": "1.0.0", "tag": "v1.0.0", "hub_repo": "org/x",
        "built_from_epoch_millis": None, "saekit_version": "0", "manifest": manifest, "saes": [sae], "records": {},
        "files": {"sae/cfg.json": safeio.sha256(root, "sae/cfg.json")}}))
    write_sums(root)


def test_verify_and_publish_refuse_a_symlink_listed_in_sums(tmp_path, secret):
    from saekit.releases.bundle import verify
    from saekit.releases.publish import publish

    bundle = tmp_path / "bundle"
    _fake_bundle(bundle)
    verify(bundle)
    (bundle / "sae" / "notes.txt").symlink_to(secret)
    digest = safeio.sha256(secret.parent, secret.name)
    with open(bundle / "SHA256SUMS", "a") as f:
        f.write(f"{digest}  sae/notes.txt\n")
    with pytest.raises(UnsafePathError, match="notes.txt: is a symlink"):
        verify(bundle)
    with pytest.raises(UnsafePathError):
        publish(bundle, "org/x", dry_run=True)
    r = saekit("release", "verify", str(bundle), home=tmp_path / "home")
    assert "is a symlink" in r.one_line_error(2)
    r = saekit("release", "publish", str(bundle), "--endpoint", "http://127.0.0.1:9", home=tmp_path / "home")
    assert "is a symlink" in r.one_line_error(2)


def test_verify_refuses_a_symlinked_folder_and_a_fifo(tmp_path, secret):
    from saekit.releases.bundle import verify

    bundle = tmp_path / "bundle"
    _fake_bundle(bundle)
    (bundle / "linked").symlink_to(secret.parent, target_is_directory=True)
    with pytest.raises(UnsafePathError):
        verify(bundle)
    (bundle / "linked").unlink()
    os.mkfifo(bundle / "sae" / "pipe")
    with pytest.raises(UnsafePathError, match="FIFO"):
        verify(bundle)


@pytest.mark.parametrize(
    "line",
    [
        "{h}  ../outside.txt",
        "{h}  /etc/passwd",
        "{h}  sae/../../x",
        "{h}  sae//cfg.json",
        "{h}  ./release.json",
        "{h}  sae\\..\\x",
        "{h} *sae/cfg.json",
        "{H}  sae/cfg.json",
    ],
)
def test_sums_path_tricks(tmp_path, line):
    from saekit.releases.bundle import parse_sums

    with pytest.raises(IntegrityError):
        parse_sums(line.format(h="a" * 64, H="A" * 64) + "\n", where="SHA256SUMS")


def test_sums_not_utf8_and_release_json_not_json(tmp_path):
    from saekit.releases.bundle import verify, write_sums

    bundle = tmp_path / "bundle"
    _fake_bundle(bundle)
    (bundle / "SHA256SUMS").write_bytes(b"\xff\xfe not utf-8\n")
    with pytest.raises(IntegrityError, match="not UTF-8"):
        verify(bundle)
    (bundle / "release.json").write_text("{not json")
    write_sums(bundle)  # correctly hashed, still not JSON
    with pytest.raises(IntegrityError, match="not JSON"):
        verify(bundle)
    r = saekit("release", "verify", str(bundle), home=tmp_path / "home")
    assert "release.json" in r.one_line_error(1)
    (bundle / "release.json").write_text("[" * 100_000 + "]" * 100_000)
    write_sums(bundle)
    r = saekit("release", "verify", str(bundle), home=tmp_path / "home")
    assert "nested deeper" in r.one_line_error(1)


def test_pull_does_not_write_through_links(tmp_path, secret):
    from saekit.cli import main
    from saekit.registry import store

    art = make_artifact(tmp_path / "art")
    store.register("pulled", art)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "cfg.json").symlink_to(secret)
    with pytest.raises(SystemExit) as exc:
        main(["pull", "pulled/1", str(dest)])
    assert exc.value.code == 2  # refused, before any file is written
    assert sorted(p.name for p in dest.iterdir()) == ["cfg.json"] and SECRET in secret.read_text()


def test_missing_is_not_found_not_unsafe(tmp_path):
    with pytest.raises(NotFoundError):
        safeio.read_bytes(tmp_path, "nope")
    with pytest.raises(InputError):
        safeio.read_bytes(tmp_path, "../nope")


@pytest.mark.parametrize("sae_id", ["../x", "/x", "a//b", "a/../b", "a\n", ".hidden", "a/./b", "a\\b", "SHA256SUMS"])
def test_manifest_sae_ids_stay_inside_the_bundle(tmp_path, sae_id):
    from saekit.releases.bundle import build_from_manifest
    from saekit.releases.manifest import parse_manifest

    data = {"release_id": "r", "version": "1.0.0", "license": "apache-2.0",
            "base_model": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct"},
            "saes": [{"ref": "x/1", "sae_id": sae_id}], "hub_repo": "org/r"}
    with pytest.raises(InputError):
        build_from_manifest(parse_manifest(data), tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
