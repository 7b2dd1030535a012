"""References are unambiguous: a registry name never resolves to a local folder, and
every name, alias and reference is matched whole (a trailing newline is not a name)."""

from __future__ import annotations

from pathlib import Path

import pytest

import saekit
from saekit.registry.refs import check_name, parse_ref
from saekit.schemas import NotFoundError, ReferenceSyntaxError
from sec_helpers import saekit as run_saekit
from tests.registry.conftest import make_artifact


def test_a_local_folder_never_beats_the_registry(tmp_path, monkeypatch):
    registered = make_artifact(tmp_path / "reg", seed=1)
    info = saekit.register("prod-sae", registered)
    monkeypatch.chdir(tmp_path)
    make_artifact(tmp_path / "prod-sae", seed=2)  # an unverified folder named like the SAE
    assert parse_ref("prod-sae").kind == "latest"
    assert saekit.load("prod-sae").ref.sha256 == info.sha256
    # the folder is reachable, when named as a path
    local = saekit.load("./prod-sae")
    assert local.ref.sha256 != info.sha256
    assert saekit.load(Path("prod-sae")).ref.sha256 == local.ref.sha256


def test_an_unregistered_name_with_a_folder_is_not_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_artifact(tmp_path / "only-local")
    with pytest.raises(NotFoundError):
        saekit.load("only-local")
    with pytest.raises(ReferenceSyntaxError, match=r"\./some/folder"):
        parse_ref("some/folder")


@pytest.mark.parametrize("name", ["abc\n", "abc\r\n", " abc", "abc ", "a\x00b", "-abc", "a" * 129, "", "ab/c", "a@b"])
def test_names_match_whole(name):
    with pytest.raises(ReferenceSyntaxError):
        check_name(name)


@pytest.mark.parametrize(
    "ref",
    ["abc\n", "abc/1\n", "abc@prod\n", "abc@sha256:abcdef01\n", "hf://o/r/sae\n", "hf://o/r/sae@v1\n",
     "hf://o/r/../x", "hf://o/r@../main/x", "hf://o/r/x@../main", "hf://../r/x", "hf://o/r/a b",
     "hf://o/r/a\\b", "abc/0", "abc@latest@x"],
)
def test_references_match_whole(ref):
    with pytest.raises(ReferenceSyntaxError):
        parse_ref(ref)


def test_cli_name_with_newline_is_refused(tmp_path):
    art = make_artifact(tmp_path / "art")
    r = run_saekit("register", str(art), "--name", "abc\n", home=tmp_path / "home")
    assert "name must be" in r.one_line_error(2)
