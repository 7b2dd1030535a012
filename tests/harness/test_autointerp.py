"""SAEBench's autointerp protocol (saekit.harness.autointerp) on worked cases, and against
SAEBench 0.6.0's own functions (sae_bench/evals/autointerp/main.py, ``AutoInterp``), called
on the same inputs: its answer parsing, its score and its scoring prompt."""

from __future__ import annotations

import importlib
import importlib.machinery
import random
import sys
import types
from types import SimpleNamespace

import pytest

from saekit.harness import autointerp as A
from saekit.schemas import EndpointError
from saekit.schemas.card import ActivationExample

from sae_bench.evals.autointerp.eval_config import AutoInterpEvalConfig


def _saebench_main():
    """sae_bench.evals.autointerp.main, with the two libraries it imports only to call OpenAI
    and print tables stubbed when absent (sae-bench is installed without its dependencies,
    see pyproject.toml); the functions compared here use neither."""
    for name, attr in (("openai", "OpenAI"), ("tabulate", "tabulate")):  # torch calls tabulate at exit
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except ImportError:
                stub = types.ModuleType(name)
                setattr(stub, attr, lambda *a, **k: "")
                stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
                sys.modules[name] = stub
    return importlib.import_module("sae_bench.evals.autointerp.main")


sb_main = _saebench_main()
ANSWERS = ["1, 3, 5", "2 and 4.", "None", "", "  7,8 ", "1, 3, x", "Examples 1 and 2", "12, 3", "None.", "1,,2"]


@pytest.mark.parametrize("text", ANSWERS)
def test_parse_predictions_is_saebenchs(text):
    assert A.parse_predictions(text) == sb_main.AutoInterp.parse_predictions(None, text)


def test_parse_predictions_worked_cases():
    assert A.parse_predictions("2 and 4.") == [2, 4]
    assert A.parse_predictions("None") == [] and A.parse_predictions("") == []
    assert A.parse_predictions("1, 3, x") is None  # unparseable: a failure, never an answer


def test_accuracy_is_saebenchs_and_always_none_scores_ten_of_fourteen():
    labels = [True] * 4 + [False] * 10
    assert A.accuracy([], labels) == pytest.approx(10 / 14)  # the chance issue 21 names
    assert A.accuracy([1, 2, 3, 4], labels) == 1.0
    assert A.accuracy([1, 2, 5, 99], labels) == pytest.approx(11 / 14)  # numbers past 14 are ignored
    exs = [SimpleNamespace(is_active=y) for y in labels]
    for preds in ([], [1, 2, 3, 4], [1, 2, 5, 99], list(range(1, 15))):
        assert A.accuracy(preds, labels) == sb_main.AutoInterp.score_predictions(None, preds, exs)


def test_scoring_prompt_is_saebenchs_word_for_word():
    texts = [f"text {i}\u21b5" for i in range(14)]
    random.seed(7)
    this = SimpleNamespace(cfg=AutoInterpEvalConfig(model_name="m"))
    want = sb_main.AutoInterp.get_scoring_prompts(
        this, "the word cat", [SimpleNamespace(to_str=lambda mark_toks=False, t=t: t) for t in texts])
    assert A.messages("the word cat", texts, random.Random(7)) == want


def _ex(peak: float, n: int = 30, at: int = 15) -> ActivationExample:
    values = [0.0] * n
    values[at] = peak
    return ActivationExample(tokens=[f" t{i}" for i in range(n)], values=values, max_position=at)


def test_selection_sequences_and_labels():
    neg = ActivationExample(tokens=[" z"] * 32, values=[0.0] * 32, bin="negative")
    # 21 tokens around the maximum; a negative's first 21; text as Example.to_str shows it
    toks, vals = A.sequence(_ex(2.0))
    assert toks == [f" t{i}" for i in range(5, 26)] and vals[10] == 2.0
    assert A.sequence(neg)[0] == [" z"] * 21
    assert A.to_str(["a\n", "\ufffdb"]) == "a\u21b5b"
    # no held-out top example: the 4 strongest quantile examples; then 10 negatives; shuffled
    quantile = [_ex(v) for v in (0.5, 3.0, 1.0, 0.01, 2.0)]
    seqs = A.select([], quantile, [neg] * 12, random.Random(0))
    assert len(seqs) == 14 and sorted(max(v) for _, v in seqs)[-4:] == [0.5, 1.0, 2.0, 3.0]
    top = [_ex(v) for v in (9.0, 8.0, 7.0)]
    assert sorted(max(v) for _, v in A.select(top, quantile, [neg] * 12, random.Random(0)))[-4:] == [2.0, 3.0, 8.0, 9.0]


def test_score_latent_worked_case_and_failures():
    top, quantile = [_ex(10.0), _ex(9.0)], [_ex(5.0), _ex(0.05)]  # 0.05 < 0.01 x 10: SAEBench calls it inactive
    neg = [ActivationExample(tokens=[" z"] * 32, values=[0.0] * 32, bin="negative")] * 10
    asked = []

    def oracle(messages, max_tokens):  # answers the sequences holding an activation above the threshold
        asked.append(max_tokens)
        lines = messages[1]["content"].split("\n\n")[-1].split("\n")
        return ", ".join(line.split(".")[0] for line in lines if " t15" in line and "z" not in line) or "None"

    rec, entry = A.score_latent("x", top, quantile, neg, 10.0, oracle, seed=0, index=3, control=False,
                                scorer_model="j")
    # the oracle also lists the 0.05 example (it holds " t15"): 1 wrong of 14
    assert (rec.value, rec.n_pos, rec.n_neg, rec.n_failed) == (pytest.approx(13 / 14), 3, 11, 0)
    assert rec.chance == pytest.approx(11 / 14) and asked == [33] and entry["score"] == rec.value
    assert len(entry["correct seqs"]) == 3 and len(entry["predictions"]) == 4

    def garbled(messages, max_tokens):
        return "I think 1 and maybe 2"

    def down(messages, max_tokens):
        raise EndpointError("500", where="x")

    for ask in (garbled, down):  # failed: counted, never a wrong answer, no SAEBench entry
        rec, entry = A.score_latent("x", top, quantile, neg, 10.0, ask, seed=0, index=3, control=False,
                                    scorer_model="j")
        assert (rec.value, rec.n_failed, entry) == (None, 14, None)
    rec, entry = A.score_latent("x", top, quantile, [], 10.0, oracle, seed=0, index=3, control=False,
                                scorer_model="j")
    assert (rec.value, rec.n_failed, entry) == (None, 0, None)  # no negatives: nothing to score, not a failure
