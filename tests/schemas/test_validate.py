"""saekit.schemas.validate and consistency_errors: per-card errors, cross-card checks, inputs."""

from __future__ import annotations

import gzip
import json

import pytest
from card_helpers import SHA, make_card, write_jsonl

from saekit.schemas import FeatureCard, InputError, consistency_errors
from saekit.schemas import validate as v


def test_valid_jsonl_json_and_gz(tmp_path):
    cards = [make_card(i) for i in range(5)]
    jl = write_jsonl(tmp_path / "feature_cards.jsonl", cards)
    gz = tmp_path / "more.jsonl.gz"
    gz.write_bytes(gzip.compress(json.dumps(make_card(7)).encode() + b"\n\n" + json.dumps(make_card(8)).encode()))
    one = tmp_path / "one.json"
    one.write_text(json.dumps(make_card(9), indent=2))
    many = tmp_path / "many.json"
    many.write_text(json.dumps([make_card(10), make_card(11)], indent=2))
    report = v.validate_paths([jl, gz, one, many])
    assert report.ok, report.errors
    assert report.n_cards == 10
    assert report.to_dict()["ok"] is True


def test_every_error_is_located(tmp_path):
    bad_type = make_card(1, index="one")
    bad_nested = make_card(2)
    bad_nested["top_examples"][0]["values"][1] = "high"
    bad_nested["stats"]["density"] = 1.5
    unknown = make_card(3, colour="red")
    inconsistent = make_card(4)
    inconsistent["top_examples"][0]["values"] = [1.0]
    path = write_jsonl(tmp_path / "c.jsonl", [make_card(0), bad_type, bad_nested, "", unknown, "{not json", inconsistent])
    report = v.validate_paths([path])
    got = [str(e) for e in report.errors]
    p = str(path)
    assert f"{p}:2: index: Input should be a valid integer" in got
    assert f"{p}:3: stats.density: Input should be less than or equal to 1" in got
    assert f"{p}:3: top_examples[0].values[1]: Input should be a valid number" in got
    assert f"{p}:5: colour: Extra inputs are not permitted" in got
    assert any(g.startswith(f"{p}:6: $: Invalid JSON") for g in got), got
    assert f"{p}:7: top_examples[0].values: 1 values for 4 tokens" in got
    assert report.n_cards == 6 and report.n_errors == len(got) == 6
    # file order, then line order
    assert [e.line for e in report.errors] == sorted(e.line for e in report.errors)


def test_nan_and_infinity_are_not_json(tmp_path):
    path = tmp_path / "c.jsonl"
    in_extra = json.dumps(make_card(0, extra={"x": [1, {"y": 1.25}]})).replace("1.25", "NaN")
    in_stats = json.dumps(make_card(1)).replace('"mean": 1.5', '"mean": -Infinity')
    overflow = json.dumps(make_card(2, downstream=[{"task": "t", "metric": "m", "value": 0, "method": "zero", "details": {"d": 1e308}}]))
    fine = json.dumps(make_card(3, extra={"token": "NaN"}))
    path.write_text("\n".join([in_extra, in_stats, overflow.replace("1e+308", "1e999"), fine]) + "\n")
    report = v.validate_paths([path])
    assert [str(e) for e in report.errors] == [
        f"{path}:1: extra.x[1].y: Input should be a finite number (JSON has no NaN or Infinity)",
        f"{path}:2: stats.mean: Input should be a finite number",
        f"{path}:3: downstream[0].details.d: Input should be a finite number (JSON has no NaN or Infinity)",
    ]


def test_cross_card_checks(tmp_path):
    other_sae = make_card(5)
    other_sae["sae"]["sha256"] = "cd" * 32
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [make_card(0), make_card(1), make_card(0), make_card(5000), other_sae],
    )
    report = v.validate_paths([path], d_sae=4096)
    got = [str(e) for e in report.errors]
    p = str(path)
    assert f"{p}:3: index: duplicate latent index 0 (first at line 1)" in got
    assert f"{p}:4: index: 5000 >= d_sae 4608" in got  # the card's own sae.d_sae
    assert f"{p}:4: index: 5000 >= d_sae 4096 (--d-sae)" in got
    assert any(g.startswith(f"{p}:5: sae: card is for SAE smollm2-res-l6@3 (sha256 cdcdcdcdcdcd)") for g in got), got
    assert any("sae.d_sae: 4608 != d_sae 4096" in g for g in got)


def test_duplicates_across_shards(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [make_card(0), make_card(1)])
    b = write_jsonl(tmp_path / "b.jsonl", [make_card(2), make_card(1)])
    report = v.validate_paths([a, b])
    assert [str(e) for e in report.errors] == [f"{b}:2: index: duplicate latent index 1 (first at {a}:2)"]


def test_json_list_reports_the_line_each_card_starts_on(tmp_path):
    path = tmp_path / "cards.json"
    path.write_text(json.dumps([make_card(0), make_card(1, index=-1)], indent=2))
    report = v.validate_paths([path])
    (err,) = report.errors
    starts = [n for n, line in enumerate(path.read_text().splitlines(), start=1) if line == "  {"]
    start = starts[1]  # the second element's opening brace
    assert (err.line, err.path) == (start, "index")


def test_folder_stands_for_its_card_files(tmp_path):
    folder = tmp_path / "a"
    (folder / "b" / "empty").mkdir(parents=True)
    write_jsonl(folder / "feature_cards.jsonl", [make_card(0)])
    write_jsonl(folder / "b" / "more.jsonl", [make_card(0)])
    (folder / "notes.txt").write_text("not a card file")
    report = v.validate_paths([folder])
    assert report.files == [str(folder / "b" / "more.jsonl"), str(folder / "feature_cards.jsonl")]
    assert [e.path for e in report.errors] == ["index"]  # the duplicate across the two files
    with pytest.raises(InputError, match="no card files"):
        v.validate_paths([folder / "b" / "empty"])


def test_error_cap_keeps_the_total(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [make_card(i, index=-1) for i in range(30)])
    report = v.validate_paths([path], max_errors=5)
    assert len(report.errors) == 5 and report.n_errors == 30
    assert report.to_dict()["truncated"] is True
    assert [e.line for e in report.errors] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.jsonl", None, "no such file"),
        ("c.json", b"{nope", "not valid JSON"),
        ("c.json", b"42", "expected a card object or a list of cards"),
        ("c.json", b"", "empty file"),
        ("c.jsonl.gz", b"not gzip at all", "not a valid gzip file"),
        ("c.txt", b"{}", "unsupported card file type"),
    ],
)
def test_input_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as exc:
        v.validate_paths([path])
    assert exc.value.exit_code == 2
    assert str(path) in str(exc.value)


def test_truncated_gzip_is_an_input_error(tmp_path):
    data = gzip.compress(b"".join(json.dumps(make_card(i)).encode() + b"\n" for i in range(50)))
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a valid gzip file"):
        v.validate_paths([path])


def test_worker_pool_gives_the_same_report(tmp_path, monkeypatch):
    cards = [make_card(i) for i in range(300)]
    cards[17]["index"] = 3  # duplicate
    cards[250]["stats"]["density"] = -0.5
    path = write_jsonl(tmp_path / "c.jsonl", cards)
    serial = v.validate_paths([path], workers=1)
    monkeypatch.setattr(v, "BATCH_LINES", 16)
    monkeypatch.setattr(v, "PARALLEL_MIN_LINES", 64)
    pooled = v.validate_paths([path], workers=2)
    assert pooled.to_dict() == serial.to_dict()
    assert serial.n_errors == 2 and serial.n_cards == 300


@pytest.mark.parametrize("range_bytes", [37, 500, 4096])
def test_byte_ranges_give_the_same_report(tmp_path, monkeypatch, range_bytes):
    cards = [json.dumps(make_card(i)) for i in range(40)]
    cards[5] = json.dumps(make_card(5, index=-2))
    cards[9] = ""  # blank line
    cards[20] = json.dumps(make_card(3))  # duplicate of line 4
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(cards))  # no newline after the last card
    serial = v.validate_paths([path], workers=1)
    monkeypatch.setattr(v, "RANGE_BYTES", range_bytes)
    monkeypatch.setattr(v, "PARALLEL_MIN_BYTES", 1)
    ranged = v.validate_paths([path], workers=2)
    assert ranged.to_dict() == serial.to_dict()
    assert [(e.line, e.path) for e in serial.errors] == [(6, "index"), (21, "index")]
    assert serial.n_cards == 39


def test_consistency_errors():
    card = FeatureCard.model_validate(make_card(5000))
    assert consistency_errors(card) == [("index", "5000 >= d_sae 4608")]
    raw = make_card(1)
    raw["stats"]["histogram"] = {"bin_edges": [0.0, 1.0, 1.0], "counts": [1, 2, 3]}
    raw["top_examples"][0].update(token_ids=[1, 2], max_position=9)
    got = dict(consistency_errors(FeatureCard.model_validate(raw)))
    assert got == {
        "stats.histogram": "needs len(bin_edges) == len(counts) + 1",
        "stats.histogram.bin_edges": "must be strictly increasing",
        "top_examples[0].token_ids": "2 ids for 4 tokens",
        "top_examples[0].max_position": "9 outside 4 tokens",
    }
    assert SHA  # the helper's SAE hash is a valid sha256


def test_json_path():
    assert v.json_path(()) == "$"
    assert v.json_path(("top_examples", 3, "values", 0)) == "top_examples[3].values[0]"
