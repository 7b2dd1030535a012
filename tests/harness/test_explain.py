"""The explainer's pieces (marking, parsing, choosing latents) and a short in-process run of
the local model (issue 21). The endpoint protocol is tested in
tests/security/test_llm_endpoint.py."""

from __future__ import annotations

import hashlib
import json

import pytest

from saekit.harness.explain import ExplainOptions, choose, explain_files, mark, parse_explanation, pick_examples
from saekit.harness.explain import journal_path, run_id
from saekit.harness.llm_client import CachedClient, LocalChatClient, Params, RequestCache, Response
from saekit.harness.score import ScoreOptions, score_files
from saekit.schemas import InputError
from saekit.schemas.card import FeatureCard
from saekit.schemas.card_files import read_cards


def test_mark_brackets_runs_above_the_threshold_as_delphi_does():
    toks = ["a", " b", " c", " d", " e"]
    assert mark(toks, [0.0, 1.0, 0.9, 0.2, 1.0]) == "a<< b c>> d<< e>>"
    assert mark(toks, [0.0, 1.0, 0.9, 0.2, 1.0], threshold=0.95) == "a<< b>> c d<< e>>"
    assert mark(toks, [0.0] * 5) == "a b c d e"  # nothing fires: nothing marked


@pytest.mark.parametrize(
    "text, expected",
    [
        ("  \n[EXPLANATION]: Python keywords\nmore", "Python keywords"),
        ('"numbers in dates"', "numbers in dates"),
        ("Explanation: the word the", "the word the"),
        ("\n  \n", None),
        ("x" * 500, "x" * 200),
        ("\x1b[31mred\x1b[0m words\u202e", "[31mred[0m words"),  # no escape or bidi control reaches a terminal
    ],
)
def test_parse_explanation(text, expected):
    assert parse_explanation(text) == expected


def _card(i: int, n_top: int = 3) -> FeatureCard:
    ex = {"tokens": ["a", f" w{i}"], "values": [0.0, 2.0], "bin": "top"}
    return FeatureCard.model_validate({"schema_version": "1.0", "sae": {"name": "s"}, "index": i, "top_examples": [ex] * n_top,
                                       "quantile_examples": [{**ex, "values": [0.0, 0.0], "bin": "q"}, {**ex, "bin": "q"}]})


def test_choose_and_pick_examples():
    cards = [_card(i) for i in (5, 1, 9)]
    assert [c.index for c in choose(cards, "all")] == [1, 5, 9]
    assert [c.index for c in choose(cards, "2")] == [1, 5]
    assert [c.index for c in choose(cards, "9,5")] == [5, 9]
    assert [c.index for c in choose(cards, "5,")] == [5]
    for bad in ("0", "x", "1,2", "-1"):
        with pytest.raises(InputError):
            choose(cards, bad)
    refs = [ref for ref, _ in pick_examples(_card(0, n_top=3), ExplainOptions(n_top=2, n_quantile=5))]
    # two top examples; the quantile example that does not fire is skipped
    assert [(r.where, r.index) for r in refs] == [("top_examples", 0), ("top_examples", 1), ("quantile_examples", 1)]


class Scripted:
    """A ChatClient whose answer names the latent's example word; counts its calls."""

    model, weights_sha256, endpoint_kind = "scripted", None, "openai-compatible"

    def __init__(self):
        self.calls = 0

    def generate(self, messages, params):
        self.calls += 1
        word = messages[-1]["content"].split("<<")[1].split(">>")[0].strip()
        return Response(f"the word {word}", 10, 3, created_at="2026-01-01T00:00:00Z")


def test_resume_takes_the_journal_skips_a_torn_line_and_refuses_another_runs(tmp_path):
    src = tmp_path / "cards.jsonl"
    src.write_text("".join(_card(i).model_dump_json(exclude_none=True) + "\n" for i in range(4)))
    out = tmp_path / "out.jsonl"
    first = Scripted()
    explain_files([src], out, CachedClient(first, RequestCache(tmp_path / "c1")), ExplainOptions())
    full = out.read_bytes()
    # a killed run: the journal of that run with two latents finished and a torn third line
    assert not journal_path(out).exists()
    client = CachedClient(Scripted(), RequestCache(tmp_path / "c2"))
    cards = read_cards(src)
    done = [json.loads(line)["annotations"][0] for line in full.decode().splitlines()[:2]]
    journal_path(out).write_text(
        json.dumps({"run": run_id(client, ExplainOptions(), cards)}) + "\n"
        + "".join(json.dumps({"key": f"s@#{i}", "annotation": a}) + "\n" for i, a in enumerate(done))
        + '{"key": "s@#2", "annot'
    )
    out.unlink()
    s = explain_files([src], out, client, ExplainOptions(), resume=True)
    assert (s.resumed, s.explained, client.client.calls) == (2, 4, 2)  # latents 2 and 3 asked
    assert out.read_bytes() == full and not journal_path(out).exists()

    journal_path(out).write_text(json.dumps({"run": hashlib.sha256(b"other").hexdigest()}) + "\n")
    with pytest.raises(InputError, match="other cards or options"):
        explain_files([src], out, client, ExplainOptions(), resume=True)
    assert out.read_bytes() == full  # refused before writing anything


@pytest.mark.slow
def test_local_model_explains_two_latents_and_a_rerun_is_cached(tmp_path):
    src = tmp_path / "cards.jsonl"
    src.write_text("".join(_card(i).model_dump_json(exclude_none=True) + "\n" for i in range(3)))
    cache = RequestCache(tmp_path / "requests")
    opts = ExplainOptions(params=Params(max_tokens=6), concurrency=1)
    client = CachedClient(LocalChatClient(), cache)
    s = explain_files([src], tmp_path / "a.jsonl", client, opts, latents="2")
    assert (s.latents, s.explained, s.requests_sent, s.requests_cached) == (2, 2, 2, 0)
    assert 0 < s.tokens_out <= 12 and s.tokens_in > 0
    cards = read_cards(tmp_path / "a.jsonl")
    for c in cards[:2]:
        (ann,) = c.annotations
        assert ann.description and ann.provenance.endpoint_kind == "local"
        assert ann.provenance.weights_sha256 == client.weights_sha256 and len(client.weights_sha256) == 64
        assert ann.provenance.sampling.temperature == 0 and ann.provenance.tokens_out <= 6
    assert cards[2].annotations == [] and cards[2].schema_version == "1.0"  # not chosen: unchanged

    again = CachedClient(LocalChatClient(), cache)
    s2 = explain_files([src], tmp_path / "b.jsonl", again, opts, latents="2")
    assert (s2.requests_sent, s2.requests_cached) == (0, 2)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])["schema_version"] == "1.1"


@pytest.mark.slow
def test_local_model_scores_in_process_with_log_probabilities(tmp_path):
    ex = {"tokens": [" the", " cat", " sat", " on", " the", " mat", " and", " then", " 42"],
          "values": [0.0] * 8 + [3.0], "bin": "top"}
    prov = {"model": "m", "endpoint_kind": "local", "prompt_template": "t", "prompt_sha256": "0" * 64,
            "sampling": {"temperature": 0.0}, "examples": [{"where": "top_examples", "index": 0, "bin": "top"}]}
    neg = {"tokens": [" the", " cat", " sat", " on", " the", " mat"], "values": [0.0] * 6, "bin": "negative"}
    card = {"sae": {"name": "s"}, "index": 0, "top_examples": [ex] * 3, "negative_examples": [neg] * 2,
            "annotations": [{"description": "numbers", "provenance": prov}]}
    src = tmp_path / "cards.jsonl"
    src.write_text(json.dumps(card) + "\n")
    client = CachedClient(LocalChatClient(), RequestCache(tmp_path / "requests"))
    opts = ScoreOptions(scorers=("detection",), params=Params(max_tokens=12, logprobs=True))
    s = score_files([src], tmp_path / "scored.jsonl", client, opts)
    assert s.requests_sent == 1  # 2 held-out windows + 2 zero windows: one prompt; one latent: no control
    recs = read_cards(tmp_path / "scored.jsonl")[0].annotations[0].score_records
    ba = next(r for r in recs if r.metric == "balanced_accuracy")
    assert ba.n_pos + ba.n_neg + ba.n_failed == 4 and not ba.control
    if ba.n_failed:  # the small model's answer did not parse: counted, not scored
        assert ba.value is None and len(recs) == 1
    else:  # in process, every answer has log-probabilities: an AUC beside the accuracy
        assert [r.metric for r in recs] == ["balanced_accuracy", "auc"] and 0 <= recs[1].value <= 1
