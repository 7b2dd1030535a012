"""A manifest's `cards:` (annotated cards to release, issue 21): the real CLI refuses cards of
another SAE (exit 1), a link and a file that is not .jsonl (exit 2), in one line each, and
writes no bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sec_helpers import log_measure, saekit
from tests.releases.release_helpers import explain_cards, make_cards, register_checked, write_manifest


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("release-cards")
    mp = pytest.MonkeyPatch()
    mp.setenv("SAEKIT_HOME", str(root / "home"))
    mp.setenv("SAEKIT_QUIET", "1")
    try:
        good = register_checked("good", 0, root)
    finally:
        mp.undo()
    return {"root": root, "home": root / "home", "good": good}


def _manifest(tmp: Path, good, cards: str) -> Path:
    path = write_manifest(tmp / "release.yaml", [(f"good/{good.version}", "good")], repo="org/rel")
    data = yaml.safe_load(path.read_text())
    data["saes"][0]["cards"] = cards
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _write(path: Path, cards: list[dict]) -> None:
    path.write_text("".join(json.dumps(c) + "\n" for c in cards))


@pytest.mark.parametrize("case", ["other_sae", "symlink", "not_jsonl"])
def test_release_build_refuses_bad_annotated_cards(reg: dict, tmp_path: Path, case: str):
    good = reg["good"]
    ours = explain_cards(make_cards("good", good.version, good.sha256, 64))
    _write(tmp_path / "ours.jsonl", ours)
    if case == "other_sae":
        _write(tmp_path / "cards.jsonl", explain_cards(make_cards("good", good.version, "e" * 64, 64)))
        name, code, says = "cards.jsonl", 1, "latent 0's card is for SAE sha256 eeeeeeeeeeee, not the released"
    elif case == "symlink":
        (tmp_path / "cards.jsonl").symlink_to(tmp_path / "ours.jsonl")
        name, code, says = "cards.jsonl", 2, "symlink"
    else:
        (tmp_path / "cards.json").write_text(json.dumps(ours[0]))
        name, code, says = "cards.json", 2, "must name a .jsonl file"
    r = saekit("release", "build", str(_manifest(tmp_path, good, name)), "--out", str(tmp_path / "bundle"),
               home=reg["home"])
    log_measure(f"release build cards: {case}", r)
    assert says in r.one_line_error(code)
    assert not (tmp_path / "bundle").exists()
