"""pydantic and a JSON Schema validator must agree on every card (DESIGN.md, Schemas).

So must saekit's fast validation path (saekit.schemas.validate) and FeatureCard.

Hypothesis builds valid cards, then breaks most of them in one place (wrong type, missing
required key, unknown key, out-of-range number, bad pattern, 1.0 for an integer, a bool
for a number...). pydantic validates the JSON text, as ``saekit cards validate`` does;
jsonschema's Draft202012Validator checks the same document against the committed
schemas/json/feature_card.json. Any disagreement is a bug in the model or the schema.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from datetime import datetime

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from saekit.schemas import validate as v
from saekit.schemas.card import FeatureCard, consistency_errors
from saekit.schemas.export import load_committed

N_DOCUMENTS = 1200

# --- valid documents ---------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**6), 10**6)
unit = st.floats(0.0, 1.0) | st.sampled_from([0, 1])
signed_unit = st.floats(-1.0, 1.0) | st.sampled_from([-1, 0, 1])
text = st.text(max_size=6)
name = st.text(min_size=1, max_size=6)
opt_text = st.none() | text
# JSON Schema's integer includes 1.0: both must accept it
nonneg = st.integers(0, 10**9) | st.integers(0, 1000).map(float)
anyint = st.integers(-(10**9), 10**9) | st.integers(-1000, 1000).map(float)
hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
timestamp = st.builds(
    lambda d, frac, zone: d.strftime("%Y-%m-%dT%H:%M:%S") + frac + zone,
    st.datetimes(min_value=datetime(1000, 1, 1)),
    st.sampled_from(["", ".5", ".123456"]),
    st.sampled_from(["Z", "+02:00", "-11:30"]),
)
json_value = st.recursive(
    st.none() | st.booleans() | finite | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)


def obj(required: dict, optional: dict) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(required, optional=optional)


sae_ref = obj({"name": name}, {"version": opt_text, "sha256": st.none() | hex64, "d_sae": st.none() | st.integers(1, 10**6)})
histogram = obj({"bin_edges": st.lists(finite, min_size=2, max_size=4), "counts": st.lists(finite, min_size=1, max_size=3)}, {})
# card schema 1.1
annotation_provenance = obj(
    {
        "model": name,
        "endpoint_kind": st.sampled_from(["local", "openai-compatible"]),
        "prompt_template": name,
        "prompt_sha256": hex64,
        "sampling": obj(
            {"temperature": st.floats(0.0, 2.0) | st.just(0)},
            {"seed": st.none() | anyint, "max_tokens": st.none() | st.integers(1, 512), "top_p": st.none() | st.floats(0.01, 1.0)},
        ),
    },
    {
        "weights_sha256": st.none() | hex64,
        "server_version": opt_text,
        "examples": st.lists(
            obj({"where": st.sampled_from(["top_examples", "quantile_examples"]), "index": nonneg}, {"bin": opt_text}),
            max_size=2,
        ),
        "tokens_in": st.none() | nonneg,
        "tokens_out": st.none() | nonneg,
        "error": opt_text,
    },
)
score_record = obj(
    {"scorer": name, "metric": name, "value": st.none() | unit, "n_pos": nonneg, "n_neg": nonneg},
    {
        "chance": st.none() | unit,
        "n_failed": nonneg,
        "control": st.booleans(),
        "scorer_model": opt_text,
        "prompt_sha256": st.none() | hex64,
    },
)
annotation = obj(
    {},
    {
        "label": opt_text,
        "description": opt_text,
        "source": st.sampled_from(["human", "auto"]),
        "explainer_model": opt_text,
        "author": opt_text,
        "type_name": opt_text,
        "scores": st.dictionaries(text, finite, max_size=2),
        "created_at": st.none() | timestamp,
        "carried_from": st.none() | obj({"sae": sae_ref, "index": nonneg, "similarity": signed_unit}, {}),
        "provenance": st.none() | annotation_provenance,
        "score_records": st.lists(score_record, max_size=2),
    },
)
stats = obj(
    {"density": unit},
    {
        "mean": st.none() | finite,
        "max": st.none() | finite,
        "n_tokens": st.none() | nonneg,
        "histogram": st.none() | histogram,
        "data_fingerprint": opt_text,
    },
)
example = obj(
    {"tokens": st.lists(text, min_size=1, max_size=4), "values": st.lists(finite, min_size=1, max_size=4)},
    {
        "token_ids": st.none() | st.lists(anyint, max_size=4),
        "max_value": st.none() | finite,
        "max_position": st.none() | nonneg,
        "source": st.none() | obj({}, {"dataset": opt_text, "document": opt_text, "position": st.none() | nonneg}),
        "bin": opt_text,
    },
)
logit = obj({"token": text, "value": finite}, {"token_id": st.none() | nonneg})
card_doc = obj(
    {"sae": sae_ref, "index": nonneg},
    {
        "schema_version": st.sampled_from(["1.0", "1.1"]),
        "annotations": st.lists(annotation, max_size=2),
        "stats": st.none() | stats,
        "top_examples": st.lists(example, max_size=2),
        "logit_effects": st.none()
        | obj({}, {"positive": st.lists(logit, max_size=2), "negative": st.lists(logit, max_size=2), "histogram": st.none() | histogram}),
        "downstream": st.lists(
            obj(
                {"task": name, "metric": name, "value": finite, "method": name},
                {"n_tokens": st.none() | nonneg, "details": st.dictionaries(text, json_value, max_size=2)},
            ),
            max_size=2,
        ),
        "similar": st.lists(obj({"index": nonneg, "value": finite}, {"kind": text}), max_size=2),
        "tags": st.lists(text, max_size=3),
        "provenance": st.none()
        | obj(
            {},
            {
                "tool": text,
                "tool_version": opt_text,
                "created_at": st.none() | timestamp,
                "model": opt_text,
                "imported_from": opt_text,
            },
        ),
        "extra": st.dictionaries(text, json_value, max_size=2),
    },
)

# --- breaking them -----------------------------------------------------------------------

# Values that sit on the edges where validators tend to differ.
ODD_VALUES = [
    None, True, False, 0, 1, -1, 1.0, -1.0, 0.5, 1.5, -0.0, 2.0, 1e300, -1e300, 2**63, 2**70, -(2**64),
    "", "x", "1", "1.0", "true", "null", "human", "auto", [], [1], ["a"], {}, {"a": 1},
    "0" * 64, "A" * 64, "0" * 63, "0" * 64 + "\n", "0" * 65, "\u0661" * 64,
    "2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z\n", "2024-01-01T00:00:00", "2024-01-01 00:00:00Z",
    "\u0662\u0660\u0662\u0664-01-01T00:00:00Z", "2024-01-01T00:00:00.5+01:00",
]


def _slots(node, out):
    """Every (container, key) in a document, and every dict (for unknown keys)."""
    if isinstance(node, dict):
        out["dicts"].append(node)
        for k, v in node.items():
            out["slots"].append((node, k))
            _slots(v, out)
    elif isinstance(node, list):
        out["lists"].append(node)
        for i, v in enumerate(node):
            out["slots"].append((node, i))
            _slots(v, out)


@st.composite
def documents(draw):
    doc = copy.deepcopy(draw(card_doc))
    how = draw(st.sampled_from(["valid", "replace", "replace", "replace", "delete", "unknown_key", "append"]))
    found = {"slots": [], "dicts": [], "lists": []}
    _slots(doc, found)
    if how == "replace" and found["slots"]:
        container, key = draw(st.sampled_from(found["slots"]))
        container[key] = draw(st.sampled_from(ODD_VALUES) | json_value)
    elif how == "delete" and found["slots"]:
        container, key = draw(st.sampled_from(found["slots"]))
        del container[key]
    elif how == "unknown_key":
        target = draw(st.sampled_from(found["dicts"]))
        target[draw(st.sampled_from(["zzz", "Index", "sae_name", "__proto__", ""]))] = draw(st.sampled_from(ODD_VALUES))
    elif how == "append" and found["lists"]:
        draw(st.sampled_from(found["lists"])).append(draw(st.sampled_from(ODD_VALUES)))
    return how, doc


def test_pydantic_and_jsonschema_agree_on_generated_cards():
    schema = load_committed("feature_card")
    validator = jsonschema.Draft202012Validator(schema)
    seen: Counter = Counter()

    @settings(
        max_examples=N_DOCUMENTS,
        deadline=None,
        derandomize=True,  # the same documents on every run and machine
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(documents())
    def check(case):
        how, doc = case
        raw = json.dumps(doc)  # finite floats only: this is JSON
        try:
            card = FeatureCard.model_validate_json(raw)
            by_pydantic = True
        except ValidationError:
            by_pydantic = False
        by_schema = validator.is_valid(json.loads(raw))
        # saekit's fast path (plain dicts, list lengths, plain ints) never accepts more,
        # and with its fallback to FeatureCard it reaches the same verdict and errors
        assert v._FAST is not None
        try:
            fast = v._FAST.validate_json(raw)[0]
        except ValidationError:
            fast = None
        assert fast is None or by_pydantic, raw
        found, errors = v._check_fast(raw.encode())
        assert (found is not None) == by_pydantic, raw
        if by_pydantic:
            assert errors == consistency_errors(card), raw
            if fast is not None:
                assert v.fast_consistency_errors(fast) == errors, raw
            seen["fast path"] += fast is not None
        assert by_pydantic == by_schema, (
            f"pydantic {'accepts' if by_pydantic else 'rejects'}, jsonschema "
            f"{'accepts' if by_schema else 'rejects'} ({how}): {raw}\n"
            + "; ".join(e.message for e in validator.iter_errors(json.loads(raw)))
        )
        if how == "valid":
            assert by_pydantic, raw  # the generator makes valid cards
        seen["total"] += 1
        seen["accepted" if by_pydantic else "rejected"] += 1

    check()
    assert seen["total"] >= 1000, seen
    assert seen["accepted"] >= 200 and seen["rejected"] >= 200, seen
    assert seen["fast path"] >= 0.25 * seen["accepted"], seen  # (cards with 1.0-style ints take the slow one)


def test_known_edge_cases_agree():
    """The cases that once split the two validators, pinned."""
    validator = jsonschema.Draft202012Validator(load_committed("feature_card"))
    base = {"sae": {"name": "s", "sha256": "0" * 64}, "index": 3}
    cases = {
        "index 1.0": ({**base, "index": 1.0}, True),
        "index 1.5": ({**base, "index": 1.5}, False),
        "index true": ({**base, "index": True}, False),
        "index '1'": ({**base, "index": "1"}, False),
        "index -1.0": ({**base, "index": -1.0}, False),
        "index 1e300": ({**base, "index": 1e300}, True),  # pydantic's float->int stops at 2**63
        "index 2.0**63": ({**base, "index": 2.0**63}, True),
        "index -1e300": ({**base, "index": -1e300}, False),
        "sha256 + newline": ({**base, "sae": {"name": "s", "sha256": "0" * 64 + "\n"}}, False),
        "timestamp + newline": ({**base, "provenance": {"created_at": "2024-01-01T00:00:00Z\n"}}, False),
        "arabic-indic digits": ({**base, "provenance": {"created_at": "\u0662\u0660\u0662\u0664-01-01T00:00:00Z"}}, False),
        "density bool": ({**base, "stats": {"density": True}}, False),
        "density int 1": ({**base, "stats": {"density": 1}}, True),
    }
    for label, (doc, expected) in cases.items():
        raw = json.dumps(doc)
        try:
            FeatureCard.model_validate_json(raw)
            ok = True
        except ValidationError:
            ok = False
        assert ok == expected, label
        assert validator.is_valid(json.loads(raw)) == expected, label
