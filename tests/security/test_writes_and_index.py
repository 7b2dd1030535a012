"""What saekit writes and what it loads by name (issue 25, items 4, 6 and 18).

- Writes never follow a planted link: every file saekit writes into a path the user gave
  (export, diff --out, check --out, cards outputs, pull, schema export) goes through
  ``safeio.write_bytes``; a symlink as the destination file or as its folder is refused with
  one line, before any file is written, and the link's target keeps its bytes.
- ``NAME/VERSION`` never loads stale content: delete a registered model, register the name
  again with other weights, and ``NAME/1`` loads the new weights (the local index is
  confirmed with the registry).
- Registration errors name the folder the user gave, never saekit's temporary staging copy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sec_helpers import SECRET, log_measure, saekit
from tests.registry.conftest import make_artifact
from tests.schemas.card_helpers import make_card, write_jsonl

TARGET_TEXT = f"password={SECRET}\n"


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """A file outside every output folder, with bytes that must survive every write."""
    path = tmp_path / "outside" / "keep.txt"
    path.parent.mkdir()
    path.write_text(TARGET_TEXT)
    return path


def _refused(r, link: Path, target: Path) -> None:
    """Exit 2, one line naming the link, the target unchanged, nothing written beside it."""
    line = r.one_line_error(2)
    assert f"{link}: is a symlink; saekit never writes through a link" in line, line
    assert target.read_text() == TARGET_TEXT
    assert link.is_symlink()
    assert r.seconds < 60 and r.peak_mib < 1500, (r.seconds, r.peak_mib)


# --- item 6: writes follow planted symlinks --------------------------------------------------


@pytest.mark.parametrize("fmt,name", [("saelens", "cfg.json"), ("sparsify", "sae.safetensors")])
def test_export_refuses_a_symlinked_file(tmp_path, target, fmt, name):
    art = make_artifact(tmp_path / "art")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(target)
    r = saekit("export", fmt, str(art), str(out), home=tmp_path / "home")
    log_measure(f"export {fmt} with {name} a symlink", r)
    _refused(r, out / name, target)
    assert sorted(p.name for p in out.iterdir()) == [name]  # the other file was not written either


def test_export_refuses_a_symlinked_folder(tmp_path, target):
    art = make_artifact(tmp_path / "art")
    (target.parent / "cfg.json").write_text(TARGET_TEXT)
    (tmp_path / "out").symlink_to(target.parent, target_is_directory=True)
    r = saekit("export", "saelens", str(art), str(tmp_path / "out"), home=tmp_path / "home")
    _refused(r, tmp_path / "out", target)
    assert (target.parent / "cfg.json").read_text() == TARGET_TEXT
    assert sorted(p.name for p in target.parent.iterdir()) == ["cfg.json", "keep.txt"]


@pytest.mark.parametrize("which", ["mapping", "summary"])
def test_diff_out_refuses_a_symlink(tmp_path, target, which):
    a, b = make_artifact(tmp_path / "a", seed=1), make_artifact(tmp_path / "b", seed=2)
    out = tmp_path / "map.jsonl"
    link = out if which == "mapping" else tmp_path / "map.summary.json"
    link.symlink_to(target)
    r = saekit("diff", str(a), str(b), "--out", str(out), home=tmp_path / "home")
    log_measure(f"diff --out with the {which} a symlink", r)
    _refused(r, link, target)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("map")) == [link.name]


@pytest.mark.parametrize("which", ["eval.json", "feature_cards.jsonl", "folder"])
def test_check_out_refuses_a_symlink_before_it_starts(tmp_path, target, which):
    art = make_artifact(tmp_path / "art")
    out = tmp_path / "out"
    if which == "folder":
        out.symlink_to(target.parent, target_is_directory=True)
        link = out
    else:
        out.mkdir()
        link = out / which
        link.symlink_to(target)
    r = saekit("check", str(art), "--out", str(out), "--no-log", "--tokens", "64", home=tmp_path / "home")
    log_measure(f"check --out with {which} a symlink", r)
    _refused(r, link, target)
    assert r.seconds < 30  # refused before the language model loads
    assert sorted(p.name for p in target.parent.iterdir()) == ["keep.txt"]


def test_cards_outputs_refuse_a_symlink(tmp_path, target):
    cards = write_jsonl(tmp_path / "cards.jsonl", [make_card(0), make_card(1)])
    notes = tmp_path / "notes.jsonl"
    notes.write_text(json.dumps({"index": 0, "label": "x"}) + "\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    home = tmp_path / "home"
    _refused(saekit("cards", "convert", str(cards), "--out", str(link), home=home), link, target)
    _refused(saekit("cards", "annotate", str(cards), "--annotations", str(notes), "--out", str(link), home=home),
             link, target)
    assert cards.read_text().count("\n") == 2


def test_import_refuses_a_symlinked_destination(tmp_path, target):
    src = make_artifact(tmp_path / "ckpt")  # a canonical folder is a SAELens folder too
    (target.parent / "cfg.json").write_text(TARGET_TEXT)
    (tmp_path / "dest").symlink_to(target.parent, target_is_directory=True)
    r = saekit("import", "saelens", str(src), str(tmp_path / "dest"), home=tmp_path / "home")
    _refused(r, tmp_path / "dest", target)
    assert (target.parent / "cfg.json").read_text() == TARGET_TEXT
    assert sorted(p.name for p in target.parent.iterdir()) == ["cfg.json", "keep.txt"]


def test_schema_export_refuses_a_symlinked_folder(tmp_path, target):
    (tmp_path / "out").symlink_to(target.parent, target_is_directory=True)
    r = saekit("schema", "export", "--out", str(tmp_path / "out"), home=tmp_path / "home")
    _refused(r, tmp_path / "out", target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["keep.txt"]


# --- item 4: NAME/VERSION loads stale content ------------------------------------------------


def test_recreated_name_never_loads_the_old_weights(tmp_path, saekit_home):
    import saekit as api
    from saekit.registry import store

    old, new = make_artifact(tmp_path / "old", seed=1), make_artifact(tmp_path / "new", seed=2)
    first = api.register("m", old)
    assert api.load("m/1").ref.sha256 == first.sha256  # cached and indexed
    store._client().delete_registered_model("m")
    gone = saekit("pull", "m/1", str(tmp_path / "p1"), home=saekit_home)
    assert "no version 1 of 'm'" in gone.one_line_error(2)
    assert api.register("m", new).version == 1  # the same name, other weights
    again = saekit("pull", "m/1", str(tmp_path / "p2"), "--json", home=saekit_home)
    log_measure("pull m/1 after the name was re-created", again)
    assert again.rc == 0, again.err
    assert json.loads(again.out)["sha256"] != first.sha256
    assert (tmp_path / "p2" / "sae_weights.safetensors").read_bytes() == (new / "sae_weights.safetensors").read_bytes()


# --- item 18: errors name the user's folder ---------------------------------------------------


@pytest.mark.parametrize("broken", ["cfg", "weights"])
def test_register_errors_name_the_given_folder(tmp_path, broken):
    art = make_artifact(tmp_path / "my-sae")
    if broken == "cfg":
        cfg = json.loads((art / "cfg.json").read_text())
        (art / "cfg.json").write_text(json.dumps({**cfg, "d_sae": -1}))
    else:
        data = (art / "sae_weights.safetensors").read_bytes()
        (art / "sae_weights.safetensors").write_bytes(data[:100])
    r = saekit("register", "./my-sae", "--name", "m", home=tmp_path / "home", cwd=tmp_path)
    line = r.one_line_error(2)
    name = "cfg.json" if broken == "cfg" else "sae_weights.safetensors"
    assert line.startswith(f"error: my-sae/{name}: "), line
    assert "saekit-register" not in line


# --- redteam: data loss through folder destinations other than release build --------------------


@pytest.mark.parametrize("command", ["export-saelens", "export-sparsify", "pull", "import"])
def test_folder_outputs_never_replace_a_users_file(tmp_path, command):
    """Before: ``saekit export saelens REF DIR``, ``pull REF DIR`` and ``import FMT SRC DIR``
    overwrote the user's own DIR/cfg.json (exit 0). Now: exit 2 naming that file, every
    user file intact, nothing written; the same command again into its own output is a no-op."""
    home = tmp_path / "home"
    art = make_artifact(tmp_path / "art")
    if command == "pull":
        assert saekit("register", str(art), "--name", "m", home=home).rc == 0
    args = {"export-saelens": ("export", "saelens", str(art)), "export-sparsify": ("export", "sparsify", str(art)),
            "pull": ("pull", "m/1"), "import": ("import", "saelens", str(art))}[command]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "cfg.json").write_text(TARGET_TEXT)
    (mine / "notes.txt").write_text("keep\n")
    r = saekit(*args, str(mine), home=home)
    line = r.one_line_error(2)
    log_measure(f"{command} into a folder holding the user's cfg.json", r)
    assert f"{mine / 'cfg.json'}: exists with other content" in line, line
    assert (mine / "cfg.json").read_text() == TARGET_TEXT and (mine / "notes.txt").read_text() == "keep\n"
    assert sorted(p.name for p in mine.iterdir()) == ["cfg.json", "notes.txt"]
    fresh = tmp_path / "fresh"
    for _ in range(2):  # a new folder, then the same bytes again: no-op, not refused
        again = saekit(*args, str(fresh), home=home)
        assert again.rc == 0, again.err


def test_demo_out_refuses_a_users_folder_before_training(tmp_path):
    """``saekit demo --out DIR`` rewrites DIR/release.yaml and resets DIR/hub and DIR/hf-cache:
    a folder holding anything else (or a file) is refused at once, untouched."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "release.yaml").write_text(TARGET_TEXT)
    (mine / "notes.txt").write_text("keep\n")
    r = saekit("demo", "--size", "test", "--out", str(mine), home=tmp_path / "home", timeout=60)
    assert f"{mine}: holds files the demo did not write ('notes.txt')" in r.one_line_error(2)
    log_measure("demo --out at a user's folder", r)
    assert r.seconds < 30 and r.peak_mib < 400
    assert (mine / "release.yaml").read_text() == TARGET_TEXT and sorted(p.name for p in mine.iterdir()) == [
        "notes.txt", "release.yaml"]
    r = saekit("demo", "--size", "test", "--out", str(mine / "notes.txt"), home=tmp_path / "home", timeout=60)
    assert "notes.txt: exists and is not a folder" in r.one_line_error(2)
