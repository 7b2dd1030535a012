"""``saekit cards validate`` and ``saekit cards convert`` as a user runs them."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys

from card_helpers import DATA, make_card, write_jsonl

LOCATED = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+): (?P<path>[^\s:]+): (?P<msg>.+)$")


def test_validate_good_files_exit_0(tmp_path, cli):
    path = write_jsonl(tmp_path / "feature_cards.jsonl", [make_card(i) for i in range(3)])
    code, out, err = cli("cards", "validate", path)
    assert code == 0, out + err
    assert out.strip() == "ok: 3 cards in 1 file"


def test_validate_bad_file_exit_1_with_located_errors(tmp_path, cli):
    path = write_jsonl(tmp_path / "feature_cards.jsonl", [make_card(0), make_card(1, index=-1), make_card(0)])
    code, out, err = cli("cards", "validate", path, "--d-sae", "4608")
    assert code == 1
    lines = out.strip().splitlines()
    assert lines == [
        f"{path}:2: index: Input should be greater than or equal to 0",
        f"{path}:3: index: duplicate latent index 0 (first at line 1)",
    ]
    assert all(LOCATED.match(line) for line in lines)
    assert "invalid: 2 errors in 3 cards in 1 file" in err


def test_validate_caps_printed_errors(tmp_path, cli):
    path = write_jsonl(tmp_path / "c.jsonl", [make_card(i, index=-1) for i in range(60)])
    code, out, err = cli("cards", "validate", path)
    assert code == 1
    assert len(out.strip().splitlines()) == 50
    assert "invalid: 60 errors in 60 cards in 1 file (first 50 shown)" in err


def test_validate_json_report(tmp_path, cli):
    path = write_jsonl(tmp_path / "c.jsonl", [make_card(0), make_card(1, stats={"density": 2})])
    code, out, _ = cli("cards", "validate", "--json", path)
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False and report["n_cards"] == 2 and report["n_errors"] == 1
    assert report["errors"] == [
        {"file": str(path), "line": 2, "path": "stats.density", "message": "Input should be less than or equal to 1"}
    ]


def test_validate_input_errors_exit_2_one_line(tmp_path, cli):
    broken = tmp_path / "c.jsonl.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    notjson = tmp_path / "c.json"
    notjson.write_text("this is not json")
    for path, message in ((tmp_path / "missing.jsonl", "no such file"), (broken, "not a valid gzip file"), (notjson, "not valid JSON")):
        code, out, err = cli("cards", "validate", path)
        assert code == 2, (path, out, err)
        assert len(err.strip().splitlines()) == 1 and message in err and str(path) in err
        assert "Traceback" not in err
    code, out, err = cli("cards", "validate", "--json", tmp_path / "missing.jsonl")
    assert code == 2 and json.loads(out)["exit_code"] == 2


def test_validate_subprocess_end_to_end(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [make_card(0)])
    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"sae": {"name": "x"}, "index": 1.5}'])
    run = lambda *a: subprocess.run([sys.executable, "-m", "saekit", "cards", "validate", *map(str, a)], capture_output=True, text=True)  # noqa: E731
    assert run(good).returncode == 0
    r = run(bad)
    assert r.returncode == 1 and r.stdout.strip() == f"{bad}:1: index: Input should be a valid integer"
    r = run(tmp_path / "nope.jsonl")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip() == f"error: {tmp_path / 'nope.jsonl'}: no such file"


def test_convert_neuronpedia_round_trip_through_files(tmp_path, cli):
    cards = tmp_path / "feature_cards.jsonl"
    code, out, err = cli("cards", "convert", DATA / "neuronpedia_feature.json", "-o", cards)
    assert code == 0, err
    assert cli("cards", "validate", cards)[0] == 0
    back = tmp_path / "np.json"
    code, out, err = cli("cards", "convert", cards, "--to", "neuronpedia", "-o", back)
    assert code == 0, err
    assert json.loads(back.read_text()) == json.loads((DATA / "neuronpedia_feature.json").read_text())


def test_convert_openai_needs_index_and_sae(tmp_path, cli):
    src = tmp_path / "info.json"
    src.write_text((DATA / "openai_feature_info.json").read_text())
    code, _, err = cli("cards", "convert", src, "--sae", "oai-gpt2-v5-32k", "-o", tmp_path / "c.jsonl")
    assert code == 2 and "--index" in err
    code, _, err = cli("cards", "convert", src, "--index", "7", "-o", tmp_path / "c.jsonl")
    assert code == 2 and "--sae" in err
    named = tmp_path / "123.json"
    named.write_text(src.read_text())
    out = tmp_path / "c.jsonl.gz"
    code, _, err = cli("cards", "convert", named, "--sae", "oai-gpt2-v5-32k", "-o", out)
    assert code == 0, err
    card = json.loads(gzip.decompress(out.read_bytes()))
    assert card["index"] == 123 and card["sae"]["name"] == "oai-gpt2-v5-32k"
    assert cli("cards", "validate", out)[0] == 0


def test_pre_commit_hook_definition():
    import yaml

    root = DATA.parents[2]
    (hook,) = yaml.safe_load((root / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "saekit-cards-validate" and hook["entry"] == "saekit cards validate"
    files = re.compile(hook["files"])
    for name in ("feature_cards.jsonl", "saes/l6/feature_cards.jsonl.gz", "feature_cards_00001.json"):
        assert files.search(name), name
    for name in ("cards.jsonl", "feature_cards.jsonl.bak", "eval.json"):
        assert not files.search(name), name
