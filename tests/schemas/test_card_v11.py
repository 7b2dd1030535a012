"""Card schema 1.1 (issue 21): annotations carry their provenance and score records; 1.0
cards still validate and convert, and both validators read the new fields alike."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest

from card_helpers import SHA, make_card, write_jsonl
from saekit.schemas.card import CARD_SCHEMA_VERSION, FeatureCard
from saekit.schemas.convert import convert_files
from saekit.schemas.export import load_committed
from saekit.schemas.validate import validate_paths

PROVENANCE = {
    "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "weights_sha256": SHA,
    "endpoint_kind": "local",
    "prompt_template": "explain-v1",
    "prompt_sha256": SHA,
    "sampling": {"temperature": 0.0, "seed": 0, "max_tokens": 48},
    "examples": [{"where": "top_examples", "index": 0}],
    "tokens_in": 310,
    "tokens_out": 12,
}
SCORE = {
    "scorer": "detection", "metric": "balanced_accuracy", "value": None, "chance": 0.5,
    "n_pos": 0, "n_neg": 0, "n_failed": 20, "control": False,
}


def _v11_card(index: int = 3) -> dict:
    return make_card(
        index, schema_version="1.1",
        annotations=copy.deepcopy([{"description": "the city Paris", "provenance": PROVENANCE, "score_records": [SCORE]}]),
    )


def test_new_cards_are_1_1_and_1_0_cards_still_validate(tmp_path):
    assert FeatureCard(sae={"name": "s"}, index=0).schema_version == CARD_SCHEMA_VERSION == "1.1"
    schema = jsonschema.Draft202012Validator(load_committed("feature_card"))
    for doc in (make_card(1), _v11_card()):
        assert FeatureCard.model_validate_json(json.dumps(doc)).index == doc["index"]
        assert list(schema.iter_errors(doc)) == []
    report = validate_paths([write_jsonl(tmp_path / "c.jsonl", [make_card(1), _v11_card()])])
    assert report.ok and report.n_cards == 2
    assert load_committed("feature_card")["$id"].endswith("/1.1/feature_card.json")


@pytest.mark.parametrize(
    "where, bad",
    [
        ("provenance", {**PROVENANCE, "endpoint_kind": "vllm"}),
        ("provenance", {**PROVENANCE, "sampling": {"temperature": -1.0}}),
        ("provenance", {k: v for k, v in PROVENANCE.items() if k != "prompt_sha256"}),
        ("provenance", {**PROVENANCE, "api_key": "sk-x"}),  # no place for anything unlisted
        ("score_records", [{k: v for k, v in SCORE.items() if k != "n_pos"}]),
        ("score_records", [{**SCORE, "n_failed": -1}]),
    ],
)
def test_both_validators_reject_broken_1_1_fields(tmp_path, where, bad):
    doc = _v11_card()
    doc["annotations"][0][where] = bad
    assert list(jsonschema.Draft202012Validator(load_committed("feature_card")).iter_errors(doc))
    report = validate_paths([write_jsonl(tmp_path / "c.jsonl", [doc])])
    assert report.n_errors == 1 and report.errors[0].path.startswith(f"annotations[0].{where}")


def test_convert_keeps_the_version_and_the_new_fields(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [make_card(1), _v11_card()])
    out = tmp_path / "out.jsonl"
    convert_files([src], out)
    old, new = (json.loads(line) for line in out.read_text().splitlines())
    assert old["schema_version"] == "1.0" and new["schema_version"] == "1.1"
    assert new["annotations"][0]["provenance"] == PROVENANCE
    # cards are written without nulls: a score that could not be computed reads back as None
    assert new["annotations"][0]["score_records"] == [{k: v for k, v in SCORE.items() if v is not None}]
    assert FeatureCard.model_validate(new).annotations[0].score_records[0].value is None


def test_an_annotation_must_cite_examples_the_card_holds(tmp_path):
    good = _v11_card()
    cites = good["annotations"][0]["provenance"]["examples"]
    bad_index = _v11_card(4)
    bad_index["annotations"][0]["provenance"]["examples"] = [*cites, {"where": "quantile_examples", "index": 0}]
    bad_bin = _v11_card(5)
    bad_bin["annotations"][0]["provenance"]["examples"] = [{"where": "top_examples", "index": 0, "bin": "quantile_3"}]
    report = validate_paths([write_jsonl(tmp_path / "c.jsonl", [good, bad_index, bad_bin])])
    assert [(e.line, e.path, e.message) for e in report.errors] == [
        (2, "annotations[0].provenance.examples[1]", "cites quantile_examples[0], the card has 0"),
        (3, "annotations[0].provenance.examples[0]", "cites bin 'quantile_3', top_examples[0] is in bin None"),
    ]


def test_a_recorded_failure_is_not_exported_as_a_neuronpedia_explanation():
    from saekit.schemas.convert import to_neuronpedia

    doc = _v11_card()
    failed = copy.deepcopy(doc["annotations"][0])
    del failed["description"]
    failed["provenance"]["error"] = "http://127.0.0.1:9/v1/chat/completions: HTTP 400 (not retried)"
    doc["annotations"].append(failed)
    expls = to_neuronpedia(FeatureCard.model_validate(doc))["explanations"]
    assert [e["description"] for e in expls] == ["the city Paris"]


def test_negative_examples_are_a_1_1_field_both_validators_take(tmp_path):
    """The check's non-activating windows (card schema 1.1); cards without them stay valid."""
    neg = {"tokens": [" a", " b"], "values": [0.0, 0.0], "token_ids": [5, 6], "bin": "negative"}
    doc = {**_v11_card(), "negative_examples": [neg]}
    schema = jsonschema.Draft202012Validator(load_committed("feature_card"))
    assert list(schema.iter_errors(doc)) == []
    assert FeatureCard.model_validate_json(json.dumps(doc)).negative_examples[0].token_ids == [5, 6]
    assert validate_paths([write_jsonl(tmp_path / "c.jsonl", [doc, make_card(1)])]).ok
    bad = {**doc, "negative_examples": [{**neg, "values": []}]}  # an example needs its values
    assert list(schema.iter_errors(bad)) and not validate_paths([write_jsonl(tmp_path / "d.jsonl", [bad])]).ok
