"""SAEBench's autointerp scoring protocol as a third scorer, and its SAEBench record (issue 21).

What SAEBench 0.6.0 defines (sae_bench/evals/autointerp/main.py, ``AutoInterp`` and
``Example``; defaults in eval_config.py), and what saekit takes from a card instead:

- Scoring sequences: 2 top examples and 2 importance-weighted (IW) examples not shown to the
  explainer, and 10 random sequences, shuffled; 14 in all. saekit takes the held-out top
  examples first, strongest first, then the held-out quantile examples (a uniform sample of
  the windows where the latent fires, at evenly spaced quantiles: the card's stand-in for
  SAEBench's activation-weighted sample); when no top example is held out (the check keeps 5
  and the explainer shows 10), all 4 come from the quantile examples, the strongest 2 in the
  top slots; with too few quantile examples, the next top examples fill the IW slots. The
  random sequences are the card's ``negative_examples``: windows of the same token set
  where the latent is zero throughout. SAEBench draws its random sequences
  uniformly and labels them inactive without looking (``create_examples(rand_toks)`` gives
  them zero activations), so a random sequence on which the latent does fire counts as a
  negative there; saekit's negatives are measured zero, so the labels are true.
- Each sequence is 2 x buffer + 1 = 21 tokens around its token of interest (buffer 10):
  here around the example's maximum, ending at most 8 tokens after it where the card's
  example ends there (``saekit check`` keeps 8 tokens of right context); negatives are
  their first 21 tokens. A sequence is active when some token exceeds act_threshold_frac
  (0.01) x the latent's maximum (SAEBench: the maximum over its top sequences; here the
  card's ``stats.max``, the same maximum).
- Text: ``Example.to_str``: tokens joined, U+FFFD removed, newlines shown as U+21B5, no marks.
- Prompt: SAEBench's system and user prompt, word for word (``get_scoring_prompts``),
  including the example answer of 4 random sorted numbers out of 1..14.
- Answer parsing: ``parse_predictions``: strip, drop a final ".", "and" -> ",", "None" ->
  "", split on commas; empty means no sequence; any other non-digit part fails to parse.
- Score: ``score_predictions``: the fraction of the 14 sequences classified right (plain
  accuracy; always answering "None" scores 10/14 = 0.714, recorded as ``chance``).
- Sampling: SAEBench asks gpt-4o-mini with no temperature set and max_tokens
  2 x 14 + 5 = 33; saekit asks the configured model at temperature 0 with a fixed seed,
  max_tokens 33.
- Failures: SAEBench drops a latent whose answer does not parse (``run_single_feature``
  returns None, the latent leaves the mean). saekit records it: value null, all 14
  sequences in ``n_failed``, and the latent leaves the mean as in SAEBench; a failed request
  (after the client's retries) counts the same way. The record lists failed latents.
"""

from __future__ import annotations

import hashlib
import os
import random
import statistics
import time
import uuid
from typing import Any

from saekit.schemas import EndpointError
from saekit.schemas.card import ActivationExample, ScoreRecord
from saekit.schemas.version import __version__

SCORER = "saebench_autointerp"
METRIC = "accuracy"
BUFFER = 10
ACT_THRESHOLD_FRAC = 0.01
N_TOP, N_IW, N_RANDOM = 2, 2, 10
N_EX = N_TOP + N_IW + N_RANDOM
MAX_TOKENS = 2 * N_EX + 5  # eval_config.max_tokens_in_prediction
SAEBENCH_VERSION = "0.6.0"

_SYSTEM = (
    "We're studying neurons in a neural network. Each neuron activates on some particular word/words/substring/"
    "concept in a short document. You will be given a short explanation of what this neuron activates for, and "
    "then be shown {n} example sequences in random order. You will have to return a comma-separated list of the "
    "examples where you think the neuron should activate at least once, on ANY of the words or substrings in the "
    "document. For example, your response might look like \"{example}\". Try not to be overly specific in your "
    "interpretation of the explanation. If you think there are no examples where the neuron will activate, you "
    "should just respond with \"None\". You should include nothing else in your response other than "
    "comma-separated numbers or the word \"None\" - this is important."
)
_USER = "Here is the explanation: this neuron fires on {explanation}.\n\nHere are the examples:\n\n{examples}"
PROMPT_SHA256 = hashlib.sha256(f"{_SYSTEM}\n---\n{_USER}".encode()).hexdigest()


def sequence(ex: ActivationExample) -> tuple[list[str], list[float]]:
    """The 2 x BUFFER + 1 tokens around the example's maximum (a negative's first ones)."""
    if not ex.values or max(ex.values) <= 0:
        return ex.tokens[: 2 * BUFFER + 1], ex.values[: 2 * BUFFER + 1]
    peak = ex.max_position if ex.max_position is not None else ex.values.index(max(ex.values))
    start = max(0, peak - BUFFER)
    return ex.tokens[start : peak + BUFFER + 1], ex.values[start : peak + BUFFER + 1]


def to_str(tokens: list[str]) -> str:
    """SAEBench's ``Example.to_str`` without marks."""
    return "".join(tokens).replace("\ufffd", "").replace("\n", "\u21b5")


def select(held_top: list[ActivationExample], held_quantile: list[ActivationExample],
           negatives: list[ActivationExample], rng: random.Random) -> list[tuple[list[str], list[float]]]:
    """The scoring sequences, shuffled: N_TOP + N_IW held-out activating, N_RANDOM negatives."""
    top = sorted(held_top, key=lambda e: -max(e.values))
    quantile = sorted(held_quantile, key=lambda e: -max(e.values))
    chosen = (top[:N_TOP] + quantile + top[N_TOP:])[: N_TOP + N_IW] + negatives[:N_RANDOM]
    seqs = [sequence(ex) for ex in chosen]
    rng.shuffle(seqs)
    return seqs


def messages(explanation: str, texts: list[str], rng: random.Random) -> list[dict[str, str]]:
    """SAEBench's scoring prompt (``get_scoring_prompts``) for ``texts``."""
    n = len(texts)
    example = ", ".join(str(i) for i in sorted(rng.sample(range(1, n + 1), k=min(N_TOP + N_IW, n))))
    examples = "\n".join(f"{i}. {t}" for i, t in enumerate(texts, 1))
    return [{"role": "system", "content": _SYSTEM.format(n=n, example=example)},
            {"role": "user", "content": _USER.format(explanation=explanation, examples=examples)}]


def parse_predictions(text: str) -> list[int] | None:
    """SAEBench's ``parse_predictions``: the numbers listed, [] for "None", None if unparseable."""
    parts = text.strip().rstrip(".").replace("and", ",").replace("None", "").split(",")
    parts = [p.strip() for p in parts if p.strip()]
    if not all(p.isdigit() for p in parts):
        return None
    return [int(p) for p in parts]


def accuracy(predictions: list[int], labels: list[bool]) -> float:
    """SAEBench's ``score_predictions``: sequence i (from 1) predicted active iff i is listed."""
    return sum((i in predictions) == y for i, y in enumerate(labels, 1)) / len(labels)


def score_latent(explanation: str, held_top: list[ActivationExample], held_quantile: list[ActivationExample],
                 negatives: list[ActivationExample], latent_max: float | None, generate: Any, *, seed: int,
                 index: int, control: bool, scorer_model: str) -> tuple[ScoreRecord, dict[str, Any]]:
    """One latent's record and its SAEBench result entry (``run_single_feature``'s dict; None
    when nothing was scored). ``generate(messages, max_tokens)`` returns the answer text or
    raises EndpointError. Without the card's negatives (its random sequences) or without an
    active and an inactive sequence there is nothing to score (value null, nothing failed),
    as SAEBench skips a latent without its examples."""
    rng = random.Random(seed * 1_000_003 + index)  # the same sequences, order and prompt on every run
    seqs = select(held_top, held_quantile, negatives, rng)
    top = latent_max if latent_max else max((max(v) for _, v in seqs), default=0.0)
    labels = [any(v > ACT_THRESHOLD_FRAC * top for v in vals) for _, vals in seqs]
    n_pos = sum(labels)
    common = dict(scorer=SCORER, metric=METRIC, control=control, scorer_model=scorer_model,
                  prompt_sha256=PROMPT_SHA256, chance=(len(labels) - n_pos) / len(labels) if labels else None)
    if not negatives or not n_pos or n_pos == len(labels):
        return ScoreRecord(value=None, n_pos=n_pos, n_neg=len(labels) - n_pos, **common), None
    try:
        predictions = parse_predictions(generate(messages(explanation, [to_str(t) for t, _ in seqs], rng),
                                                 MAX_TOKENS))
    except EndpointError:
        predictions = None
    if predictions is None:  # failed: never a wrong answer
        return ScoreRecord(value=None, n_pos=0, n_neg=0, n_failed=len(labels), **common), None
    value = accuracy(predictions, labels)
    entry = {"latent": index, "explanation": explanation, "predictions": predictions,
             "correct seqs": [i for i, y in enumerate(labels, 1) if y], "score": value}
    return ScoreRecord(value=value, n_pos=n_pos, n_neg=len(labels) - n_pos, **common), entry


def record(entries: dict[int, dict[str, Any]], failed: list[int], *, sae_name: str, model_name: str | None,
           dataset: str | None, total_tokens: int | None, seed: int, scorer_model: str) -> dict[str, Any]:
    """A SAEBench 0.6.0 ``AutoInterpEvalOutput`` as JSON: the mean and sample standard
    deviation (torch's ``std``) of the scored latents' accuracies; ``eval_result_unstructured``
    holds SAEBench's per-latent results, keyed by latent, plus saekit's failures."""
    scores = [e["score"] for e in entries.values()]
    mean = sum(scores) / len(scores) if scores else float("nan")
    std = statistics.stdev(scores) if len(scores) > 1 else float("nan")
    epoch = os.environ.get("SOURCE_DATE_EPOCH")  # reproducible builds: a fixed time when set
    millis = int(epoch) * 1000 if epoch and epoch.isdigit() else int(time.time() * 1000)
    key = f"{sae_name}|{scorer_model}|{seed}|{sorted(entries)}|{failed}"
    config = {
        "model_name": model_name or "", "n_latents": None, "override_latents": sorted(entries) + sorted(failed),
        "random_seed": seed, "dataset_name": dataset or "", "buffer": BUFFER, "no_overlap": True,
        "act_threshold_frac": ACT_THRESHOLD_FRAC, "total_tokens": total_tokens or 0, "scoring": True,
        "n_top_ex_for_scoring": N_TOP, "n_random_ex_for_scoring": N_RANDOM, "n_iw_sampled_ex_for_scoring": N_IW,
    }
    return {
        "eval_type_id": "autointerp",
        "eval_config": config,
        "eval_id": str(uuid.uuid5(uuid.NAMESPACE_URL, key)),
        "datetime_epoch_millis": millis,
        "eval_result_metrics": {"autointerp": {"autointerp_score": mean, "autointerp_std_dev": std}},
        "eval_result_details": [],
        "sae_bench_commit_hash": f"none: saekit {__version__} runs SAEBench {SAEBENCH_VERSION}'s protocol",
        "sae_lens_id": sae_name,
        "sae_lens_release_id": None,
        "sae_lens_version": None,
        "sae_cfg_dict": None,
        "eval_result_unstructured": {
            **{str(i): entries[i] for i in sorted(entries)},
            "saekit": {"scorer_model": scorer_model, "n_scored": len(entries), "n_failed_latents": len(failed),
                       "failed_latents": sorted(failed)},
        },
    }
