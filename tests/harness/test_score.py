"""The detection score's maths on worked cases (issue 21), against delphi's definition:
balanced accuracy over answered windows, chance 0.5, failures left out and counted."""

from __future__ import annotations

import pytest

import math
import random

from saekit.harness.score import (
    ScoreOptions,
    answer_probabilities,
    auc,
    balanced_accuracy,
    classify,
    forced_choice,
    parse_predictions,
    samples,
    windows,
)
from saekit.schemas.card import FeatureCard


def test_balanced_accuracy_worked_cases():
    labels = [1] * 4 + [0] * 10
    assert balanced_accuracy(labels, labels) == 1.0
    # always "no": plain accuracy would be 10/14 = 0.714 (SAEBench's 14 sequences); balanced: chance
    assert balanced_accuracy(labels, [0] * 14) == 0.5
    assert balanced_accuracy(labels, [1] * 14) == 0.5
    assert balanced_accuracy(labels, [1 - y for y in labels]) == 0.0
    # TPR 3/4, TNR 5/10
    assert balanced_accuracy(labels, [1, 1, 1, 0] + [0] * 5 + [1] * 5) == pytest.approx(0.625)
    # failed windows leave the score: the same as scoring the answered ones alone
    assert balanced_accuracy([1, 1, 0, 0], [1, None, None, 0]) == 1.0
    assert balanced_accuracy([1, 1, 0, 0], [None, None, 0, 0]) is None  # no answered positive
    assert balanced_accuracy([], []) is None


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("[1, 0, 1]", 3, [1, 0, 1]),
        ("Sure: [0,0,1] because...", 3, [0, 0, 1]),
        ("[1, 0]", 3, None),  # wrong length
        ("[1, 0, 2]", 3, None),
        ("[true, false, true]", 3, None),
        ("[1, 0, 1.0]", 3, [1, 0, 1]),
        ("no list", 3, None),
        ("[1, 0, ", 3, None),
    ],
)
def test_parse_predictions(text, n, expected):
    assert parse_predictions(text, n) == expected


def test_windows_hold_out_what_the_explainer_saw_and_negatives_are_the_cards_zero_windows():
    def ex(k: int) -> dict:
        return {"tokens": [f" t{k}"] * 9 + [" hit"], "values": [0.0] * 9 + [float(k + 1)]}

    card = FeatureCard.model_validate({
        "sae": {"name": "s"}, "index": 0, "top_examples": [ex(k) for k in range(4)],
        "quantile_examples": [{"tokens": [" a", " b"], "values": [1.0, 0.0]}],
        "negative_examples": [{"tokens": [f" n{k}"] * 80, "values": [0.0] * 80, "bin": "negative"} for k in range(3)],
        "annotations": [{"description": "d", "provenance": {
            "model": "m", "endpoint_kind": "local", "prompt_template": "t", "prompt_sha256": "0" * 64,
            "sampling": {"temperature": 0.0}, "examples": [{"where": "top_examples", "index": 1}]}}],
    })
    pos, neg = windows(card, card.annotations[0], ScoreOptions(n_neg=2))
    assert [toks[0] for toks, _ in pos] == [" t0", " t2", " t3", " a"]  # top 1 was shown
    assert neg == [[" n0"] * 64, [" n1"] * 64]  # the card's zero windows, cut to max_example_tokens
    # a card without them (older, or imported) has no negatives: no prefix of an example stands in
    assert windows(card.model_copy(update={"negative_examples": []}), card.annotations[0], ScoreOptions())[1] == []


def test_samples_detection_unmarked_fuzzing_marked_like_delphi():
    pos = [([" a", " b", " c"], [0.0, 2.0, 0.0])]
    neg = [[" x", " y", " z"]]
    assert samples("detection", pos, neg, random.Random(0)) == [(1, " a b c"), (0, " x y z")]
    # fuzzing: the activating window marked where it fires; the other at the same place
    assert samples("fuzzing", pos, neg, random.Random(0)) == [(1, " a<< b>> c"), (0, " x<< y>> z")]


def test_auc_worked_cases_with_ties():
    assert auc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert auc([1, 0, 0], [0.5, 0.5, 0.5]) == 0.5  # all tied: chance
    # pairs (pos, neg): (0.8, 0.3) win, (0.8, 0.8) tie, (0.4, 0.3) win, (0.4, 0.8) loss -> 2.5 / 4
    assert auc([1, 1, 0, 0], [0.8, 0.4, 0.3, 0.8]) == 0.625
    assert auc([1, 1], [0.2, 0.3]) is None


def test_answer_probabilities_read_the_digits_alternatives():
    def tok(t, p1=None):
        top = [] if p1 is None else [["1", math.log(p1)], [" 0", math.log(1 - p1)], ["x", -9.0]]
        return {"token": t, "logprob": -0.1, "top": top}

    lps = [tok("["), tok("1", 0.75), tok(","), tok(" 0", 0.25), tok("]")]
    assert answer_probabilities(lps, 2) == pytest.approx([0.75, 0.25])
    assert answer_probabilities(lps, 3) is None  # not one per window
    assert answer_probabilities(None, 2) is None
    assert answer_probabilities([tok("1", None), tok("0", 0.5)], 2) is None  # a digit without alternatives


def test_forced_choice_reads_the_first_answer_token():
    def first(token, alternatives):
        return [{"token": token, "logprob": -1.0, "top": [[t, math.log(p)] for t, p in alternatives]}]

    # the model starts "The ..." but puts 0.1 on "1" and 0.3 on " 0": a "0", P(1) = 0.25
    pred, q = forced_choice("The feature", first("The", [("The", 0.5), ("1", 0.1), (" 0", 0.3)]))
    assert (pred, q) == (0, pytest.approx(0.25))
    pred, q = forced_choice("1", first("1", [("1", 0.6), ("0", 0.2)]))
    assert (pred, q) == (1, pytest.approx(0.75))
    # no digit among the alternatives: the text's first digit, no probability; none: failed
    assert forced_choice("[1]", first("[", [("[", 0.9)])) == (1, None)
    assert forced_choice("0.", None) == (0, None)
    assert forced_choice("The feature fires", None) == (None, None)
    assert forced_choice("10 of them", None) == (None, None)  # "10" is not an answer


class _Prob:
    """A ChatClient answering every one-excerpt prompt with P("1") = 0.9 when the excerpt holds
    " hit", 0.2 otherwise, as the first token's alternatives (its text never a digit)."""

    model, weights_sha256, endpoint_kind = "prob", None, "openai-compatible"

    def __init__(self):
        self.prompts = []

    def generate(self, messages, params):
        from saekit.harness.llm_client import Response

        self.prompts.append(messages)
        p1 = 0.9 if " hit" in messages[-1]["content"].split("Excerpt: ")[-1] else 0.2
        return Response("The", 5, 1, [{"token": "The", "logprob": -0.1,
                                        "top": [["The", -0.1], ["1", math.log(p1 / 2)], ["0", math.log((1 - p1) / 2)]]}])


def test_one_excerpt_per_prompt_scores_a_model_that_never_writes_a_digit(tmp_path):
    from saekit.harness.llm_client import CachedClient, Params, RequestCache

    card = FeatureCard.model_validate({
        "sae": {"name": "s"}, "index": 0,
        "top_examples": [{"tokens": [f" t{k}", " hit"], "values": [0.0, 1.0 + k]} for k in range(4)],
        "negative_examples": [{"tokens": [f" n{k}", " x"], "values": [0.0, 0.0], "bin": "negative"} for k in range(3)],
        "annotations": [{"description": "fires on hit"}],
    })
    model = _Prob()
    client = CachedClient(model, RequestCache(tmp_path / "cache"))
    opts = ScoreOptions(per_prompt=1, params=Params(max_tokens=1, logprobs=True))
    records = classify("detection", card, "fires on hit", card.annotations[0], client, opts, control=False)
    assert len(model.prompts) == 7 and all("Answer 1 or 0." in m[-1]["content"] for m in model.prompts)
    by = {r.metric: r for r in records}
    assert by["balanced_accuracy"].value == 1.0 and by["auc"].value == 1.0
    assert (by["auc"].n_pos, by["auc"].n_neg, by["auc"].n_failed) == (4, 3, 0)
    # the same model asked for a list of 5 never answers one: every window failed, no score
    lists = classify("detection", card, "fires on hit", card.annotations[0], client,
                     ScoreOptions(per_prompt=5), control=False)
    assert [(r.metric, r.value, r.n_failed) for r in lists] == [("balanced_accuracy", None, 7)]
    assert by["balanced_accuracy"].prompt_sha256 != lists[0].prompt_sha256
