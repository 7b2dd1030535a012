"""What reaches the terminal (issue 25, item 13): a newline, carriage return or ESC in a
path, bundle file name, card key or tag value is shown escaped (``\\n``, ``\\x1b``), so it
can neither forge an "ok:" line nor clear the screen; names that name things (SAE names,
aliases, sae_ids, references, tags, manifest names) refuse control characters outright.

Before: ``saekit release verify $'b\\nok: bundle matches SHA256SUMS'`` printed two stderr
lines, the second a fake "ok:"; a card key or a tag value did the same on stdout; an ESC in
a path or a SHA256SUMS entry went to stderr raw. (click strips ANSI sequences from output
that is not a terminal, so these tests look for the escaped form, which is absent before.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from saekit.schemas import InputError
from sec_helpers import Result, saekit
from tests.registry.conftest import make_artifact
from tests.schemas.card_helpers import make_card

FAKE = "\nok: bundle matches SHA256SUMS"
CLEAR = "\x1b[2J"
RSS_BOUND_MIB = 400


def _no_raw_controls(r: Result) -> None:
    """No ESC or CR anywhere, no line that a value started, within the usual bounds."""
    for text in (r.out, r.err):
        assert "\x1b" not in text and "\r" not in text and "\x9b" not in text
        assert not any(line.startswith("ok: bundle matches") for line in text.split("\n")), text
    assert r.peak_mib < RSS_BOUND_MIB and r.seconds < 60


def test_newline_in_a_path_cannot_forge_an_ok_line(tmp_path):
    r = saekit("release", "verify", str(tmp_path / ("b" + FAKE)), home=tmp_path / "home")
    line = r.one_line_error(2)
    assert "b\\nok: bundle matches SHA256SUMS: no such bundle folder" in line
    _no_raw_controls(r)


def test_esc_in_a_card_file_path_is_escaped(tmp_path):
    r = saekit("cards", "validate", str(tmp_path / f"{CLEAR}c.jsonl"), home=tmp_path / "home")
    assert "\\x1b[2Jc.jsonl: no such file" in r.one_line_error(2)
    _no_raw_controls(r)


def test_bundle_folder_and_file_names_are_escaped(tmp_path):
    bundle = tmp_path / f"bundle\r{CLEAR}"
    bundle.mkdir()
    (bundle / "SHA256SUMS").write_text("0" * 64 + f"  x{CLEAR}\n")
    r = saekit("release", "verify", str(bundle), home=tmp_path / "home")
    line = r.one_line_error(1)
    assert "bundle\\r\\x1b[2J/SHA256SUMS" in line and "x\\x1b[2J" in line
    _no_raw_controls(r)


def test_card_keys_are_escaped_in_validation_lines(tmp_path):
    card = make_card(0)
    card[CLEAR + FAKE] = 1
    path = tmp_path / "k.jsonl"
    path.write_text(json.dumps(card) + "\n")
    r = saekit("cards", "validate", str(path), home=tmp_path / "home")
    assert r.rc == 1 and "Traceback" not in r.err
    assert r.out.count("\n") == 1 and "\\x1b[2J\\nok: bundle matches SHA256SUMS" in r.out
    _no_raw_controls(r)


@pytest.mark.parametrize(
    "source",
    [f"saelens:rel/{CLEAR}x", f"hf://org/repo@ma{CLEAR}in/x", "hf://org/repo@ma\u2028in/x", "hf://org/repo@main\x9b/x"],
    ids=["saelens-sae-id", "hf-revision", "hf-revision-u2028", "hf-revision-c1-csi"],
)
def test_references_with_control_characters_are_refused(tmp_path, source):
    """Before, the hf:// revision and the saelens sae_id let ESC through to the Hub client."""
    r = saekit("register", source, "--name", "m", home=tmp_path / "home", timeout=60)
    assert "reference contains a control character" in r.one_line_error(2)
    _no_raw_controls(r)


@pytest.mark.parametrize(
    "args",
    [("alias", "set", "m" + FAKE, "prod", "1"), ("alias", "set", "m", "prod" + FAKE, "1"),
     ("register", "./art", "--name", f"m{CLEAR}")],
    ids=["model-name", "alias-name", "register-name"],
)
def test_names_with_control_characters_are_refused(tmp_path, args):
    make_artifact(tmp_path / "art")
    r = saekit(*args, home=tmp_path / "home", cwd=tmp_path)
    assert "must be 1-" in r.one_line_error(2)
    _no_raw_controls(r)


@pytest.mark.parametrize("tag", [f"team={CLEAR}", "team=x" + FAKE, "te\tam=x", "note=a\u2028b"],
                         ids=["esc-value", "newline-value", "tab-key", "u2028-value"])
def test_tags_with_control_characters_are_refused_before_anything_is_written(tmp_path, tag):
    art = make_artifact(tmp_path / "art")
    home = tmp_path / "home"
    r = saekit("register", str(art), "--name", "m", "--tag", tag, home=home)
    assert "may not hold control characters" in r.one_line_error(2) or "tag keys are" in r.err
    _no_raw_controls(r)
    r = saekit("ls", home=home)
    assert r.rc == 0 and r.out.strip() == "(no versions)"


def test_python_entry_points_refuse_control_characters_in_tags(tmp_path):
    import saekit as sk
    from saekit.registry import store

    art = make_artifact(tmp_path / "art")
    with pytest.raises(InputError, match="control characters"):
        sk.register("m", art, tags={"team": "x" + FAKE})
    info = sk.register("m", art)
    with pytest.raises(InputError, match="control characters"):
        store.set_tags("m", info.version, {"team": CLEAR})
    assert "team" not in store.resolve("m/1").tags


def test_a_tag_written_around_saekit_is_shown_escaped(tmp_path):
    """A value that reached MLflow some other way (its UI, its client) still prints as one line."""
    import saekit as sk
    from saekit.registry import store

    info = sk.register("m", make_artifact(tmp_path / "art"))
    store._client().set_model_version_tag("m", str(info.version), "team", CLEAR + "x" + FAKE)
    r = saekit("show", "m/1", home=tmp_path / "saekit-home")
    assert r.rc == 0 and "  team = \\x1b[2Jx\\nok: bundle matches SHA256SUMS" in r.out
    _no_raw_controls(r)


@pytest.mark.parametrize(
    "field,value",
    [("license", "mit" + FAKE), ("base_model", {"id": f"org/m{CLEAR}"}), ("tags", ["sae", "x" + FAKE]),
     ("saes", [{"ref": "m/1" + FAKE, "sae_id": "a"}]), ("saes", [{"ref": "m/1", "sae_id": "a" + FAKE}]),
     ("base_model", {"id": "org/m", "revision": "main\r"})],
    ids=["license", "base-model-id", "tags", "sae-ref", "sae-id", "base-model-revision"],
)
def test_manifest_names_with_control_characters_are_refused(tmp_path, field, value):
    """Refused when the manifest is read, before the registry is asked for anything."""
    manifest = {"release_id": "r", "version": "1.0.0", "license": "mit", "base_model": {"id": "org/m"},
                "saes": [{"ref": "m/1", "sae_id": "a"}], "hub_repo": "org/r", field: value}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(manifest))
    r = saekit("release", "build", str(path), "--out", str(tmp_path / "b"), home=tmp_path / "home")
    line = r.one_line_error(2)
    assert "holds a control character" in line or "saes.0.sae_id: String should match pattern" in line
    _no_raw_controls(r)
    assert not (tmp_path / "b").exists()


def test_printable_escapes_every_control_but_the_tab():
    from saekit.schemas.console import has_control, printable

    shown = printable("a\nb\rc\x1b[2J\x9b\x00\x7f\u2028\u202e\tz é☃")
    assert shown == "a\\nb\\rc\\x1b[2J\\x9b\\x00\\x7f\\u2028\\u202e\tz é☃"
    assert has_control("a\tb") and has_control("\u2066") and not has_control("sae-1.2_x/é")


def test_progress_lines_are_escaped(capsys):
    from saekit.schemas.console import Progress, say
    from saekit.schemas.settings import Settings

    loud = Settings.from_env(quiet=False)
    say(f"release: built x at /tmp/a{FAKE}{CLEAR}", settings=loud)
    with Progress(f"activations at h{CLEAR}", total=1, settings=loud) as bar:
        bar.update()
    err = capsys.readouterr().err
    assert "\x1b" not in err and "/tmp/a\\nok: bundle matches SHA256SUMS\\x1b[2J" in err
    assert "activations at h\\x1b[2J 1/1" in err


# --- redteam: the same control characters through cfg.json and --hook, not --tag ---------------


@pytest.mark.parametrize("field", ["hook_name", "model_name"])
def test_cfg_names_with_control_characters_never_become_tags(tmp_path, field):
    """Before: a cfg.json whose metadata.hook_name held ESC and a newline registered, and
    its reserved tag saekit.hook carried them (the --tag rule was bypassed)."""
    art = make_artifact(tmp_path / "art")
    cfg = json.loads((art / "cfg.json").read_text())
    cfg["metadata"][field] = "blocks.6" + CLEAR + FAKE
    (art / "cfg.json").write_text(json.dumps(cfg))
    home = tmp_path / "home"
    r = saekit("register", str(art), "--name", "m", home=home)
    line = r.one_line_error(2)
    assert f"cfg.json: {field}: " in line and "control character" in line and "\\x1b" in line, line
    _no_raw_controls(r)
    assert saekit("ls", home=home).out.strip() == "(no versions)"


def test_import_hook_option_with_a_newline_is_refused(tmp_path):
    import numpy as np

    np.savez(tmp_path / "params.npz", W_enc=np.ones((8, 32), np.float32), W_dec=np.ones((32, 8), np.float32),
             b_enc=np.zeros(32, np.float32), b_dec=np.zeros(8, np.float32), threshold=np.ones(32, np.float32))
    r = saekit("import", "gemmascope", str(tmp_path / "params.npz"), str(tmp_path / "out"), "--model", "m/x",
               "--hook", "blocks.6" + FAKE, home=tmp_path / "home")
    assert "hook_name: " in r.one_line_error(2) and "control character" in r.err
    _no_raw_controls(r)
    assert not (tmp_path / "out").exists()
