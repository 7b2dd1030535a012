"""Score explanations: delphi's detection and fuzzing scorers, against a control (issue 21).

    from saekit.harness.score import ScoreOptions, score_files
    summary = score_files(["explained.jsonl"], "scored.jsonl", client, ScoreOptions())

Detection, as delphi defines it (EleutherAI/delphi, delphi/scorers/classifier/detection.py
and classifier.py; the metric in delphi/log/result_analysis.py): the scorer model reads the
explanation and a few unmarked text windows at a time, and says for each whether the latent
fires on it, answering with a list such as ``[1, 0, 0, 1, 0]``. The windows are activating
examples the explainer did not see (``provenance.examples`` says which it saw) and windows
where the latent is measured at zero. The score is balanced accuracy, the mean of the true
positive and true negative rates, so answering always "no" (or always "yes") scores 0.5, the
chance level, however many windows of each kind there are (SAEBench's plain accuracy over 4
positives and 10 negatives gives such a scorer 0.714).

Fuzzing, as delphi defines it (delphi/scorers/classifier/fuzz.py, the default kind): the
windows are shown with tokens marked ``<<like this>>``; an activating window has its firing
tokens marked (activation > 0), a non-activating window has marks at the places an
activating window has them, and the scorer says for each whether the marks fit the
explanation. Scored the same way (balanced accuracy, chance 0.5).

With one excerpt per prompt (``per_prompt=1``) the answer is a forced choice between "1" and
"0", read from the probabilities of the first answer token when the model returns them (in
process always; from endpoints that return log-probabilities): the prediction is the likelier
digit and P("1") / (P("0") + P("1")) enters the AUC. That is how OpenAI's simulator and
delphi's log-probability mode read a scorer (they take probabilities, not text), and it lets a
model that cannot write the list (SmolLM2-135M rarely can) still answer; without
log-probabilities the text's first digit is the answer.

A window whose request failed or whose answer did not parse counts in ``n_failed``; it is
never a wrong answer and never enters the score. ``value`` is None when no positive or no
negative window got an answer. Each latent is also scored with another latent's explanation
(delphi's random-explanation baseline; here the next explained latent by index), recorded
with ``control: true``: a real explanation should beat it.

Non-activating windows: the card's ``negative_examples``, windows of the same token set where
``saekit check`` measured the latent zero on every token (delphi's "not activating" examples,
delphi/latents/samplers.py; SAEBench's random sequences). A card without them (made before
card schema 1.1, or imported) has no negatives: its value is None.

The third scorer is SAEBench's autointerp protocol (saekit.harness.autointerp), run on the
same held-out examples and negatives; ``score_files`` writes its SAEBench record beside the
output cards (``<name>_autointerp_eval_results.json``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from saekit.harness import autointerp
from saekit.harness.explain import example_window, mark, read_chosen
from saekit.harness.llm_client import CachedClient, Params
from saekit.schemas import EndpointError, InputError
from saekit.schemas.card import ActivationExample, Annotation, FeatureCard, ScoreRecord
from saekit.schemas.card_files import write_cards
from saekit.schemas.console import Progress
from saekit.schemas.safeio import write_bytes

METRIC = "balanced_accuracy"
CHANCE = 0.5
_USER = "Explanation: {explanation}\n\n{examples}\n\nAnswer with a list of {n} numbers."
_USER_ONE = "Explanation: {explanation}\n\nExcerpt: {examples}\n\nAnswer 1 or 0."
_LIST = "Answer with a list only, one number per excerpt, e.g. [1, 0, 0]."
_ONE = "Answer with one digit only."
_SYSTEMS = {
    "detection": (
        "You check an explanation of a language-model feature. You get the explanation and numbered text "
        "excerpts. For each excerpt, answer 1 if the feature, as explained, fires on some token of it, else 0. "
    ),
    "fuzzing": (
        "You check an explanation of a language-model feature. You get the explanation and numbered text "
        "excerpts in which some tokens are marked <<like this>>. For each excerpt, answer 1 if the marked tokens "
        "are where the feature, as explained, fires, else 0. "
    ),
}
SCORERS = (*_SYSTEMS, autointerp.SCORER)


def _template(scorer: str, one: bool) -> tuple[str, str]:
    """(system, user) templates: a list answer for several excerpts, one digit for one."""
    return (_SYSTEMS[scorer] + (_ONE if one else _LIST), _USER_ONE if one else _USER)


PROMPT_SHA256 = {(name, one): hashlib.sha256("\n---\n".join(_template(name, one)).encode()).hexdigest()
                 for name in _SYSTEMS for one in (False, True)}


@dataclass(frozen=True)
class ScoreOptions:
    """Windows per latent and prompt, and how the scorer model is asked."""

    n_pos: int = 10
    n_neg: int = 10
    per_prompt: int = 5
    max_example_tokens: int = 64
    seed: int = 0
    params: Params = field(default_factory=lambda: Params(max_tokens=32, logprobs=True))
    concurrency: int = 4
    scorers: tuple[str, ...] = SCORERS


@dataclass
class ScoreSummary:
    """A run: latents scored (a value, not None), the mean of each "scorer metric" and of its
    control, windows failed, requests."""

    out: str
    latents: int = 0
    scored: int = 0
    no_explanation: int = 0
    means: dict[str, float | None] = field(default_factory=dict)
    control_means: dict[str, float | None] = field(default_factory=dict)
    n_failed: int = 0
    saebench_record: str | None = None
    requests_sent: int = 0
    requests_cached: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# --- the maths ---------------------------------------------------------------------------------


def balanced_accuracy(labels: list[int], predictions: list[int | None]) -> float | None:
    """(TPR + TNR) / 2 over the answered windows (None: failed, left out); None without an
    answered positive and an answered negative."""
    tp = fn = tn = fp = 0
    for y, p in zip(labels, predictions):
        if p is None:
            continue
        if y:
            tp, fn = tp + (p == 1), fn + (p != 1)
        else:
            tn, fp = tn + (p == 0), fp + (p != 0)
    if tp + fn == 0 or tn + fp == 0:
        return None
    return (tp / (tp + fn) + tn / (tn + fp)) / 2


def auc(labels: list[int], probabilities: list[float]) -> float | None:
    """Area under the ROC curve: the chance that a positive gets a higher probability than a
    negative, ties counting one half (Mann-Whitney U / (n_pos n_neg)); None without both."""
    pos = [p for y, p in zip(labels, probabilities) if y]
    neg = [p for y, p in zip(labels, probabilities) if not y]
    if not pos or not neg:
        return None
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


_DIGIT = re.compile(r"\W*([01])\W*")


def answer_probabilities(logprobs: list[dict] | None, n: int) -> list[float] | None:
    """P("1") / (P("0") + P("1")) at each of the answer's ``n`` digits, from the top
    alternatives there, as delphi's ``Classifier._parse_logprobs`` reads them; None unless
    exactly ``n`` digits carry both."""
    if not logprobs:
        return None
    out = []
    for entry in logprobs:
        if not _DIGIT.fullmatch(entry["token"]):
            continue
        p = {"0": 0.0, "1": 0.0}
        for token, lp in entry.get("top") or []:
            m = _DIGIT.fullmatch(token)
            if m:
                p[m[1]] += math.exp(lp)
        if p["0"] + p["1"] == 0:
            return None
        out.append(p["1"] / (p["0"] + p["1"]))
    return out if len(out) == n else None


def forced_choice(text: str, logprobs: list[dict] | None) -> tuple[int | None, float | None]:
    """(prediction, P("1") / (P("0") + P("1"))) of a one-excerpt answer: from the first answer
    token's alternatives when they hold a digit, else (prediction from the text's first digit, None)."""
    if logprobs:
        p = {"0": 0.0, "1": 0.0}
        for token, lp in logprobs[0].get("top") or [[logprobs[0]["token"], logprobs[0]["logprob"]]]:
            m = _DIGIT.fullmatch(token)
            if m:
                p[m[1]] += math.exp(lp)
        if p["0"] + p["1"] > 0:
            q = p["1"] / (p["0"] + p["1"])
            return int(q > 0.5), q
    m = re.match(r"\W*\[?\s*([01])(?!\d)", text)
    return (int(m[1]) if m else None), None


def parse_predictions(text: str, n: int) -> list[int] | None:
    """The first ``[...]`` list of the answer, if it holds exactly ``n`` zeros and ones."""
    match = re.search(r"\[[^\[\]]*\]", text)
    if match is None:
        return None
    try:
        values = json.loads(match.group(0))
    except ValueError:
        return None
    if not isinstance(values, list) or len(values) != n or any(v not in (0, 1) or isinstance(v, bool) for v in values):
        return None
    return [int(v) for v in values]


# --- the windows -------------------------------------------------------------------------------


def _explanation(card: FeatureCard) -> Annotation | None:
    """The annotation to score: the last one with a description."""
    return next((a for a in reversed(card.annotations) if a.description), None)


Window = tuple[list[str], list[float]]


def held_out(card: FeatureCard, ann: Annotation) -> dict[str, list[ActivationExample]]:
    """The activating top and quantile examples the explainer did not see (``provenance.examples``)."""
    shown = {(r.where, r.index) for r in (ann.provenance.examples if ann.provenance else [])}
    return {where: [ex for i, ex in enumerate(getattr(card, where))
                    if (where, i) not in shown and ex.values and max(ex.values) > 0]
            for where in ("top_examples", "quantile_examples")}


def windows(card: FeatureCard, ann: Annotation, opts: ScoreOptions) -> tuple[list[Window], list[list[str]]]:
    """(activating windows the explainer did not see, with their values; the card's windows where the latent is zero)."""
    held = held_out(card, ann)
    pos = [example_window(ex, opts.max_example_tokens) for ex in (held["top_examples"] + held["quantile_examples"])]
    neg = [ex.tokens[: opts.max_example_tokens] for ex in card.negative_examples]
    return pos[: opts.n_pos], neg[: opts.n_neg]


def samples(scorer: str, pos: list[Window], neg: list[list[str]], rng: random.Random) -> list[tuple[int, str]]:
    """(label, excerpt text) of each window, as ``scorer`` shows them (see the module doc)."""
    if scorer == "detection":
        return [(1, "".join(toks)) for toks, _ in pos] + [(0, "".join(toks)) for toks in neg]
    out = [(1, mark(toks, vals, 0.0)) for toks, vals in pos]
    for toks in neg:  # marks where a random activating window has them
        _, vals = rng.choice(pos)
        hot = [float(vals[i]) if i < len(vals) else 0.0 for i in range(len(toks))]
        if not any(hot):  # that window fires past this one's end: mark its last token
            hot[-1] = 1.0
        out.append((0, mark(toks, hot, 0.0)))
    return out


def _messages(scorer: str, explanation: str, batch: list[str], one: bool) -> list[dict[str, str]]:
    system, user = _template(scorer, one)
    examples = batch[0] if one else "\n".join(f"Excerpt {n}: {text}" for n, text in enumerate(batch, 1))
    user = user.format(explanation=explanation, examples=examples, n=len(batch))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def classify(scorer: str, card: FeatureCard, explanation: str, ann: Annotation, client: CachedClient,
             opts: ScoreOptions, *, control: bool) -> list[ScoreRecord]:
    """``scorer``'s balanced accuracy of ``explanation`` on ``card``'s windows (``ann`` says
    which were shown), and its AUC when every answer came with log-probabilities."""
    pos, neg = windows(card, ann, opts)
    rng = random.Random(opts.seed * 1_000_003 + card.index)  # the same windows and order on every run
    batch_all = samples(scorer, pos, neg, rng) if pos else []
    rng.shuffle(batch_all)
    labels, predictions, probabilities = [], [], []
    one = opts.per_prompt == 1  # a forced choice read from the first answer token (module doc)
    for start in range(0, len(batch_all), opts.per_prompt):
        batch = batch_all[start:start + opts.per_prompt]
        got = probs = None
        try:
            reply = client.generate(_messages(scorer, explanation, [t for _, t in batch], one), opts.params)
            if one:
                pred, q = forced_choice(reply.text, reply.logprobs)
                got, probs = ([pred] if pred is not None else None), ([q] if q is not None else None)
            else:
                got = parse_predictions(reply.text, len(batch))
                probs = answer_probabilities(reply.logprobs, len(batch)) if got is not None else None
        except EndpointError:
            pass
        labels += [y for y, _ in batch]
        predictions += got if got is not None else [None] * len(batch)
        probabilities += probs if probs is not None else [None] * len(batch)
    answered = [(y, p) for y, p in zip(labels, predictions) if p is not None]
    common = dict(
        scorer=scorer, chance=CHANCE, n_pos=sum(y for y, _ in answered), n_neg=sum(1 - y for y, _ in answered),
        n_failed=len(predictions) - len(answered), control=control, scorer_model=client.model,
        prompt_sha256=PROMPT_SHA256[scorer, one],
    )
    records = [ScoreRecord(metric=METRIC, value=balanced_accuracy(labels, predictions), **common)]
    scored = [(y, q) for y, p, q in zip(labels, predictions, probabilities) if p is not None]
    if scored and all(q is not None for _, q in scored):
        records.append(ScoreRecord(metric="auc", value=auc(*map(list, zip(*scored))), **common))
    return records


def score_files(
    inputs: list[str | os.PathLike], out: str | os.PathLike, client: CachedClient, opts: ScoreOptions,
    *, latents: str = "all",
) -> ScoreSummary:
    """Score the explanation of each chosen card, and a control; every card goes to ``out``."""
    out, cards, chosen = read_chosen(inputs, out, latents)
    explained = [c for c in chosen if _explanation(c) is not None]
    summary = ScoreSummary(out=str(out), latents=len(chosen), no_explanation=len(chosen) - len(explained))
    # delphi's random-explanation baseline, made deterministic: the next explained latent's
    controls = {id(c): _explanation(explained[(n + 1) % len(explained)]).description
                for n, c in enumerate(explained) if len(explained) > 1}

    saebench: dict[int, dict] = {}  # latent -> its SAEBench result
    saebench_failed: list[int] = []  # latents whose SAEBench answer failed or did not parse

    def ask(messages: list[dict[str, str]], max_tokens: int) -> str:
        params = Params(temperature=opts.params.temperature, seed=opts.params.seed, max_tokens=max_tokens)
        return client.generate(messages, params).text

    def one(card: FeatureCard) -> list[ScoreRecord]:
        ann = _explanation(card)
        ctrl = controls.get(id(card))
        out = []
        for scorer in opts.scorers:
            for text, control in ((ann.description, False), (ctrl, True)):
                if text is None:
                    continue
                if scorer != autointerp.SCORER:
                    out += classify(scorer, card, text, ann, client, opts, control=control)
                    continue
                held = held_out(card, ann)
                rec, entry = autointerp.score_latent(
                    text, held["top_examples"], held["quantile_examples"], card.negative_examples,
                    card.stats.max if card.stats else None, ask, seed=opts.seed, index=card.index,
                    control=control, scorer_model=client.model)
                out.append(rec)
                if not control and entry is not None:
                    saebench[card.index] = entry
                elif not control and rec.n_failed:
                    saebench_failed.append(card.index)
        return out

    unknown = set(opts.scorers) - set(SCORERS)
    if unknown:
        raise InputError(f"no scorer {sorted(unknown)[0]!r} (scorers: {', '.join(SCORERS)})", where="--scorer")
    t0 = time.perf_counter()
    records: dict[int, list[ScoreRecord]] = {}
    with Progress("score", len(explained), unit="latents") as progress, \
            ThreadPoolExecutor(max_workers=max(1, opts.concurrency)) as pool:
        for card, result in zip(explained, pool.map(one, explained)):
            records[id(card)] = result
            progress.update()
    summary.seconds = time.perf_counter() - t0

    def scored(card: FeatureCard) -> FeatureCard:
        if id(card) not in records:
            return card
        new = records[id(card)]
        ann = _explanation(card)
        kept = [r for r in ann.score_records if (r.scorer, r.scorer_model) not in {(n.scorer, n.scorer_model) for n in new}]
        ann2 = ann.model_copy(update={"score_records": kept + new})
        anns = [ann2 if a is ann else a for a in card.annotations]
        return card.model_copy(update={"annotations": anns, "schema_version": "1.1"})

    write_cards([scored(c) for c in cards], out)
    if autointerp.SCORER in opts.scorers and explained:
        first = explained[0]
        prov = first.provenance
        rec = autointerp.record(
            saebench, saebench_failed,
            sae_name=first.sae.name, model_name=prov.model if prov else None, dataset=prov.dataset if prov else None,
            total_tokens=first.stats.n_tokens if first.stats else None, seed=opts.seed, scorer_model=client.model)
        path = out.parent / f"{out.name.split('.')[0]}_autointerp_eval_results.json"
        write_bytes(path, json.dumps(rec, indent=2).encode())
        summary.saebench_record = str(path)
    every = [r for recs in records.values() for r in recs]
    for name in dict.fromkeys(f"{r.scorer} {r.metric}" for r in every):
        for control, means in ((False, summary.means), (True, summary.control_means)):
            values = [r.value for r in every if f"{r.scorer} {r.metric}" == name and r.control == control
                      and r.value is not None]
            means[name] = sum(values) / len(values) if values else None
    summary.scored = sum(1 for recs in records.values() if any(not r.control and r.value is not None for r in recs))
    summary.n_failed = sum(r.n_failed for r in every if r.metric in (METRIC, autointerp.METRIC))
    summary.requests_sent, summary.requests_cached = client.sent, client.cached
    summary.tokens_in, summary.tokens_out = client.tokens_in, client.tokens_out
    return summary
