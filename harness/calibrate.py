"""Latents whose meaning is known, to calibrate a scorer (issue 21, "Scorer calibration").

    from saekit.harness.calibrate import RULES, rule_cards
    cards = rule_cards(tokenizer)          # one card per rule, activations defined by the rule

Each rule is a predicate on a token's text (fires on digits, on " the", on Python keywords).
Its card's examples are real token windows of the pydoc corpus (harness.text), with
activation 1.0 on the tokens the rule accepts and 0.0 elsewhere, so the activating examples
and the zero stretches before the first firing (score.py's negative windows) are real text.
Scoring such a card with the rule as its explanation, and with another rule's explanation,
shows whether a scorer model can tell a right explanation from a wrong one.
"""

from __future__ import annotations

import keyword
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from saekit.harness.text import corpus_documents
from saekit.schemas.card import ActivationExample, Annotation, FeatureCard, SAERef

_KEYWORDS = frozenset(keyword.kwlist)


@dataclass(frozen=True)
class Rule:
    """A known latent: which tokens it fires on, and the explanation that says so."""

    name: str
    explanation: str
    fires: Callable[[str], bool]


RULES = (
    Rule("digits", "digits and numbers", lambda t: t.strip().isdigit()),
    Rule("the", 'the word "the"', lambda t: t == " the"),
    Rule("python_keywords", "Python keywords such as def, return, import, if", lambda t: t.strip() in _KEYWORDS),
)
SAE_NAME = "rule-latents"


def _windows(tokenizer: Any, size: int) -> list[list[str]]:
    """The corpus cut into windows of ``size`` tokens, each token as its text."""
    out = []
    for _, text in corpus_documents("pydoc"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids) - size + 1, size):
            out.append([tokenizer.decode([i]) for i in ids[start:start + size]])
    return out


def rule_cards(tokenizer: Any, rules: tuple[Rule, ...] = RULES, *, n_examples: int = 20, size: int = 64,
               n_negatives: int | None = None, min_zero_prefix: int = 16, seed: int = 0,
               explained: bool = False) -> list[FeatureCard]:
    """One card per rule (index = its place in ``rules``): ``n_examples`` windows where it
    fires, chosen at random (``seed``) among those whose first ``min_zero_prefix`` tokens it
    does not fire on (room for a negative window), and ``n_negatives`` (default ``n_examples``)
    windows it never fires on, as a check's non-activating examples. ``explained``: the card also carries the
    rule's explanation as an annotation (source "human", type "rule")."""
    windows = _windows(tokenizer, size)
    cards = []
    for index, rule in enumerate(rules):
        hits, misses = [], []
        for toks in windows:
            values = [1.0 if rule.fires(t) else 0.0 for t in toks]
            if any(values) and not any(values[:min_zero_prefix]):
                hits.append(ActivationExample(tokens=toks, values=values, max_value=1.0,
                                              max_position=values.index(1.0), bin="top"))
            elif not any(values):  # a window the rule never fires on: a non-activating example
                misses.append(ActivationExample(tokens=toks, values=values, max_value=0.0, bin="negative"))
        random.Random(seed * 7919 + index).shuffle(hits)
        random.Random(seed * 7919 + index + 1).shuffle(misses)
        anns = [Annotation(source="human", type_name="rule", description=rule.explanation)] if explained else []
        cards.append(FeatureCard(schema_version="1.1", sae=SAERef(name=SAE_NAME, d_sae=len(rules)), index=index,
                                 top_examples=hits[:n_examples], negative_examples=misses[:n_examples if n_negatives is None else n_negatives],
                                 annotations=anns, tags=[f"rule:{rule.name}"]))
    return cards
