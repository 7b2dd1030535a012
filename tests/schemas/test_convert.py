"""Neuronpedia <-> FeatureCard and OpenAI sae-viewer -> FeatureCard, on hand-written samples."""

from __future__ import annotations

import json

import pytest
from card_helpers import DATA, make_card

from saekit.schemas import FeatureCard, InputError, SAERef, consistency_errors
from saekit.schemas import convert as cv


@pytest.fixture
def np_feature() -> dict:
    return json.loads((DATA / "neuronpedia_feature.json").read_text())


def test_neuronpedia_to_card_maps_the_fields(np_feature):
    card = cv.from_neuronpedia(np_feature)
    assert (card.index, card.sae.name) == (650, "6-res-jb")
    assert card.provenance.model == "gpt2-small" and card.provenance.imported_from == "neuronpedia"
    assert card.provenance.hook_name == "blocks.6.hook_resid_pre"
    assert card.stats.density == 0.00153 and card.stats.max == 31.5625
    assert card.stats.histogram.bin_edges == [0.0, 3.0, 6.0, 9.0, 12.0]
    assert card.stats.histogram.counts == [120, 80, 33, 9]
    (ann,) = card.annotations
    assert ann.description == "French city names, mostly Paris"
    assert (ann.source, ann.explainer_model, ann.type_name) == ("auto", "gpt-4o-mini", "oai_token-act-pair")
    assert ann.scores == {"scoreV1": 0.42}
    ex = card.top_examples[0]
    assert ex.tokens[5] == " Paris" and ex.values[5] == 31.5625 and ex.max_position == 5
    assert ex.source.dataset == "openwebtext" and ex.source.document == "18234" and ex.bin == "top"
    assert card.top_examples[1].bin == "quantile[10.2, 15.3]"
    assert [(e.token, e.value) for e in card.logit_effects.positive][0] == (" Paris", 1.2045)
    assert [e.token for e in card.logit_effects.negative] == [" Wed", " Tue"]
    assert [(s.index, s.kind) for s in card.similar][:4] == [
        (650, "decoder_cosine"), (20153, "decoder_cosine"), (11802, "decoder_cosine"), (443, "neuron_alignment")
    ]
    assert consistency_errors(card) == []
    # what the card has no field for is kept, not dropped
    assert card.extra["neuronpedia"]["feature"]["neuron_alignment_l1"] == [0.0112, 0.0098]


def test_neuronpedia_round_trip_keeps_every_field(np_feature):
    card = cv.from_neuronpedia(np_feature)
    again = FeatureCard.model_validate_json(card.model_dump_json(exclude_none=True))  # through a file
    assert cv.to_neuronpedia(again) == np_feature


def test_neuronpedia_round_trip_minimal_feature():
    feature = {"modelId": "m", "layer": "0-res", "index": "3", "pos_str": ["a"], "pos_values": [0.5], "frac_nonzero": 0.25}
    assert cv.to_neuronpedia(cv.from_neuronpedia(feature)) == feature


def test_neuronpedia_round_trip_odd_feature():
    feature = {
        "modelId": "m", "layer": "0-res", "index": "3", "frac_nonzero": None,
        "pos_str": ["a", "b"], "pos_values": [0.5],  # not parallel: kept as they came
        "freq_hist_data_bar_heights": [1, 2, 3], "freq_hist_data_bar_values": [0.1, 0.2, 0.7],  # uneven bins
        "activations": [{"tokens": ["x"], "values": [1], "maxValue": 1, "maxValueTokenIndex": 0, "dataIndex": 7}],
    }
    card = cv.from_neuronpedia(feature)
    assert card.stats is None or card.stats.histogram is None
    assert cv.to_neuronpedia(card) == feature


def test_card_to_neuronpedia_from_a_native_card():
    card = FeatureCard.model_validate(make_card(12))
    doc = cv.to_neuronpedia(card, model_id="smollm2-135m")
    assert doc["modelId"] == "smollm2-135m" and doc["layer"] == "smollm2-res-l6" and doc["index"] == "12"
    assert doc["frac_nonzero"] == 0.001 and doc["maxActApprox"] == 6.0
    assert doc["freq_hist_data_bar_values"] == [1.0, 3.0, 5.0]
    assert doc["activations"][0]["maxValueTokenIndex"] == 3
    assert doc["explanations"][0]["description"] == "Paris"  # label when there is no description
    # and it reads back
    assert cv.from_neuronpedia(doc).stats.histogram.bin_edges == [0.0, 2.0, 4.0, 6.0]


def test_openai_feature_info_to_card():
    info = json.loads((DATA / "openai_feature_info.json").read_text())
    card = cv.from_openai(info, sae=SAERef(name="oai-gpt2-v5-32k", d_sae=32768), index=123)
    assert card.stats.density == 0.00042
    assert [e.bin for e in card.top_examples] == ["top", "top", "random"]
    ex = card.top_examples[0]
    assert ex.tokens == [" the", " Eiffel", " Tower", " is"] and ex.values[2] == 6.5
    assert ex.token_ids == [262, 412, 8765, 318] and ex.max_position == 2 and ex.max_value == 6.5
    assert ex.source.document == "4711"
    assert card.extra["openai"]["mean_act"] == 3.81 and card.extra["openai"]["hist"]["0.5"] == 120
    assert card.extra["openai"]["sequences"][0]["ablate_loss_diff"] == [0.0, 0.01, 0.2, 0.0]
    assert consistency_errors(card) == []


def test_detect_format_and_bad_inputs(np_feature):
    assert cv.detect_format(np_feature) == "neuronpedia"
    assert cv.detect_format(json.loads((DATA / "openai_feature_info.json").read_text())) == "openai"
    assert cv.detect_format(make_card(0)) == "saekit"
    with pytest.raises(InputError):
        cv.detect_format({"hello": 1})
    with pytest.raises(InputError, match="index"):
        cv.from_neuronpedia({"modelId": "m", "layer": "l"})
    assert cv.index_from_filename("123.json") == 123 and cv.index_from_filename("x.json") is None


def test_convert_files_is_what_the_command_does(tmp_path):
    # The library call behind `saekit cards convert`: Neuronpedia -> cards -> Neuronpedia.
    from saekit.schemas.card_files import read_cards
    from saekit.schemas.convert import convert_files, read_any_cards

    src = DATA / "neuronpedia_feature.json"
    res = convert_files([src], tmp_path / "cards.jsonl")
    assert res.to == "saekit" and len(res.cards) == 1
    assert read_any_cards([tmp_path / "cards.jsonl"], from_format="saekit") == res.cards
    assert read_cards(tmp_path / "cards.jsonl") == res.cards
    back = convert_files([tmp_path / "cards.jsonl"], tmp_path / "np.json", to="neuronpedia")
    assert json.loads((tmp_path / "np.json").read_text())["index"] == json.loads(src.read_text())["index"]
    assert back.cards == res.cards
    with pytest.raises(InputError, match="--to"):
        convert_files([src], tmp_path / "x.jsonl", to="openai")
