"""FeatureCard: the documentation of one SAE latent.

A superset of what a Neuronpedia feature export and OpenAI's sae-viewer FeatureInfo carry,
so both convert in and out (see saekit.schemas.convert).
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal

from pydantic import Field, GetCoreSchemaHandler, GetJsonSchemaHandler, StringConstraints, WithJsonSchema
from pydantic_core import PydanticCustomError, core_schema

from saekit.schemas.common import Strict

# 1.1 adds Annotation.provenance and Annotation.score_records (issue 21); a 1.0 card is a
# valid 1.1 card, so readers take both and new cards are written as 1.1. FeatureCard's
# negative_examples (non-activating windows) came in 1.1 too, optional like the rest.
CARD_SCHEMA_VERSION = "1.1"

# --- field types that pydantic and JSON Schema validators read the same way ------------
#
# Found by tests/schemas/test_differential.py (pydantic vs jsonschema.Draft202012Validator):
# - JSON Schema's "integer" is "a number with a zero fractional part" (draft 2020-12
#   validation spec, 6.1.1), so validators accept 1.0 where strict pydantic rejects it;
#   JavaScript cannot even tell 1 from 1.0. JsonInt accepts 1.0 as 1 and still rejects
#   1.5, "1" and true.
# - jsonschema matches "pattern" with Python's re.search, where "$" also matches before a
#   final newline and "\d" matches any Unicode digit; pydantic's Rust regex and ECMA 262
#   (what the spec names) do neither. Hex digests get exact lengths, timestamps [0-9] and
#   a "no newline" clause that only Python's engine needs.


def _exact_int(value: float) -> int:
    if not value.is_integer():
        raise PydanticCustomError("int_from_float", "Input should be a valid integer, got a number with a fractional part")
    return int(value)


class JsonInt:
    """An integer as JSON Schema defines it (1.0 counts; 1.5, "1" and true do not).

    Integers stay in pydantic-core (no Python call per value); a float must convert exactly.
    Bounds are checked after, so their errors read plainly.
    """

    def __init__(self, *, ge: int | None = None, gt: int | None = None):
        self.ge, self.gt = ge, gt

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        exact = core_schema.union_schema(
            [
                core_schema.int_schema(strict=True),
                core_schema.chain_schema(
                    [
                        core_schema.float_schema(strict=True, allow_inf_nan=False),
                        # a Python call, but only for floats: pydantic's own float -> int
                        # conversion stops at 2**63, JSON Schema's integers do not
                        core_schema.no_info_plain_validator_function(_exact_int),
                    ]
                ),
            ],
            mode="left_to_right",
            custom_error_type="int_type",
        )
        # marked, so saekit.schemas.validate's fast path can use a plain strict int instead
        marker = {"saekit_json_int": {"ge": self.ge, "gt": self.gt}}
        if self.ge is None and self.gt is None:
            return {**exact, "metadata": marker}
        bounds = core_schema.int_schema(strict=True, ge=self.ge, gt=self.gt)
        return core_schema.chain_schema([exact, bounds], metadata=marker)

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict:
        out: dict[str, Any] = {"type": "integer"}
        if self.ge is not None:
            out["minimum"] = self.ge
        if self.gt is not None:
            out["exclusiveMinimum"] = self.gt
        return out


Int = Annotated[int, JsonInt()]
NonNegInt = Annotated[int, JsonInt(ge=0)]
PosInt = Annotated[int, JsonInt(gt=0)]
Hex64 = Annotated[str, StringConstraints(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")]
# RFC 3339 date-time as a pattern (JSON Schema's "format" only annotates by default).
_TIMESTAMP = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"
Timestamp = Annotated[
    str,
    StringConstraints(pattern=_TIMESTAMP),
    WithJsonSchema({"type": "string", "pattern": _TIMESTAMP, "not": {"pattern": "\n"}}),
]


class SAERef(Strict):
    """Which SAE a card (or record) describes: registry name, version and content hash."""

    name: str = Field(min_length=1, description="Registry name or release sae_id.")
    version: str | None = Field(None, description="Registry version or release revision.")
    sha256: Hex64 | None = Field(None, description="sha256 of the canonical artifact.")
    d_sae: PosInt | None = Field(None, description="Width of the SAE, to bound latent indices.")


class CarriedFrom(Strict):
    """Where a carried-over annotation came from (saekit diff / cards carry)."""

    sae: SAERef
    index: NonNegInt
    similarity: float = Field(ge=-1.0, le=1.0)


class SamplingParams(Strict):
    """How the model was asked to sample; temperature 0 and a fixed seed make a run repeatable."""

    temperature: float = Field(ge=0.0)
    seed: Int | None = None
    max_tokens: PosInt | None = None
    top_p: float | None = Field(None, gt=0.0, le=1.0)


class ExampleRef(Strict):
    """One example of this card that a prompt showed, by its list and place in it."""

    where: Literal["top_examples", "quantile_examples"]
    index: NonNegInt = Field(description="Position in that list.")
    bin: str | None = Field(None, description="The example's sampling bin, e.g. 'top' or 'quantile_3'.")


class AnnotationProvenance(Strict):
    """What wrote an auto annotation, enough to send the same request again (card schema 1.1)."""

    model: str = Field(min_length=1, description="Model id, as the endpoint or loader names it.")
    weights_sha256: Hex64 | None = Field(None, description="sha256 of the weights file, when the model ran locally.")
    endpoint_kind: Literal["local", "openai-compatible"]
    server_version: str | None = Field(None, description="Server name/version, if the server said.")
    prompt_template: str = Field(min_length=1, description="Name of the prompt template.")
    prompt_sha256: Hex64 = Field(description="sha256 of the prompt template text.")
    sampling: SamplingParams
    examples: list[ExampleRef] = Field(default_factory=list, description="The examples the prompt showed.")
    tokens_in: NonNegInt | None = None
    tokens_out: NonNegInt | None = None
    error: str | None = Field(None, description="Why there is no explanation: the request failed or did not parse.")


class ScoreRecord(Strict):
    """One score of an explanation, with what it must be read against (card schema 1.1).

    ``value`` is null when nothing could be scored; failed requests count in ``n_failed``,
    never as wrong answers.
    """

    scorer: str = Field(min_length=1, description="e.g. 'detection', 'fuzzing', 'saebench_autointerp'.")
    metric: str = Field(min_length=1, description="e.g. 'balanced_accuracy', 'auc'.")
    value: float | None = Field(None, description="Null (or absent) when nothing could be scored.")
    chance: float | None = Field(None, description="What guessing scores on this metric and split.")
    n_pos: NonNegInt
    n_neg: NonNegInt
    n_failed: NonNegInt = 0
    control: bool = Field(False, description="Scored with another latent's explanation (the baseline).")
    scorer_model: str | None = None
    prompt_sha256: Hex64 | None = None


class Annotation(Strict):
    """A human or automatic interpretation of the latent."""

    label: str | None = Field(None, description="Short name of the feature.")
    description: str | None = None
    source: Literal["human", "auto"] = "auto"
    explainer_model: str | None = Field(None, description="Model that wrote an auto explanation.")
    author: str | None = None
    type_name: str | None = Field(None, description="Explanation method, e.g. Neuronpedia's typeName.")
    scores: dict[str, float] = Field(default_factory=dict, description="e.g. detection, fuzzing.")
    created_at: Timestamp | None = None
    carried_from: CarriedFrom | None = None
    provenance: AnnotationProvenance | None = Field(None, description="How an auto annotation was made (1.1).")
    score_records: list[ScoreRecord] = Field(default_factory=list, description="Scores with their controls (1.1).")


class Histogram(Strict):
    """Counts over bins; ``len(bin_edges) == len(counts) + 1`` (checked by consistency_errors)."""

    bin_edges: list[float] = Field(min_length=2)
    counts: list[float] = Field(min_length=1)



class ActivationStats(Strict):
    """Statistics of the latent's activation over a token set."""

    density: float = Field(ge=0.0, le=1.0, description="Fraction of tokens where it fires.")
    mean: float | None = Field(None, description="Mean activation over tokens where it fires.")
    max: float | None = None
    n_tokens: NonNegInt | None = Field(None, description="Tokens the stats were computed on.")
    histogram: Histogram | None = Field(None, description="Histogram of non-zero activations.")
    data_fingerprint: str | None = Field(None, description="sha256 of the token ids.")


class ExampleSource(Strict):
    """Where an example came from, so it can be re-run."""

    dataset: str | None = None
    document: str | None = Field(None, description="Document id within the dataset.")
    position: NonNegInt | None = Field(None, description="Token offset of tokens[0] in the document.")


class ActivationExample(Strict):
    """A context window and the latent's activation on each of its tokens."""

    tokens: list[str] = Field(min_length=1)
    values: list[float] = Field(min_length=1)
    token_ids: list[Int] | None = None
    max_value: float | None = None
    max_position: NonNegInt | None = Field(None, description="Index in tokens of the maximum.")
    source: ExampleSource | None = None
    bin: str | None = Field(None, description="Sampling bin, e.g. 'top' or 'quantile_3'.")



class LogitEffect(Strict):
    """A token whose logit the latent's decoder direction raises or lowers."""

    token: str
    token_id: NonNegInt | None = None
    value: float


class LogitEffects(Strict):
    """Top tokens of W_dec[i] @ W_U, both directions."""

    positive: list[LogitEffect] = Field(default_factory=list)
    negative: list[LogitEffect] = Field(default_factory=list)
    histogram: Histogram | None = None


class DownstreamEval(Strict):
    """A downstream-task measurement of this latent, e.g. loss change when ablated."""

    task: str = Field(min_length=1)
    metric: str = Field(min_length=1)
    value: float
    method: str = Field(
        min_length=1,
        description="How it was measured, e.g. 'exact-ablation' or 'attribution' (first-order estimate); "
        "details['definition'] says it in full.",
    )
    n_tokens: NonNegInt | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class SimilarLatent(Strict):
    """Another latent (or neuron) and a similarity to it, e.g. decoder cosine."""

    index: NonNegInt
    value: float
    kind: str = Field("decoder_cosine", description="decoder_cosine, neuron_alignment, correlation...")


class CardProvenance(Strict):
    """What made the card."""

    tool: str = "saekit"
    tool_version: str | None = None
    created_at: Timestamp | None = None
    model: str | None = None
    model_revision: str | None = None
    hook_name: str | None = None
    dataset: str | None = None
    imported_from: str | None = Field(None, description="e.g. 'neuronpedia', 'openai-sae-viewer'.")


class FeatureCard(Strict):
    """Documentation of one latent: annotations, stats, examples, logit effects, evals."""

    schema_version: Literal["1.0", "1.1"] = CARD_SCHEMA_VERSION
    sae: SAERef
    index: NonNegInt = Field(description="Latent index in the SAE.")
    annotations: list[Annotation] = Field(default_factory=list)
    stats: ActivationStats | None = None
    top_examples: list[ActivationExample] = Field(default_factory=list)
    quantile_examples: list[ActivationExample] = Field(
        default_factory=list,
        description="Examples at quantiles of the latent's activations (bin 'quantile_50': the median), "
        "as Neuronpedia and SAEDashboard show beside the top examples.",
    )
    negative_examples: list[ActivationExample] = Field(
        default_factory=list,
        description="Windows of the same token set where the latent is zero on every token (bin 'negative'), "
        "for scoring explanations against (1.1): SAEBench's random sequences, delphi's non-activating examples.",
    )
    logit_effects: LogitEffects | None = None
    downstream: list[DownstreamEval] = Field(default_factory=list)
    similar: list[SimilarLatent] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    provenance: CardProvenance | None = None
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Fields of a source format saekit has no place for."
    )



def consistency_errors(card: FeatureCard) -> list[tuple[str, str]]:
    """Checks across fields that JSON Schema cannot express, as ``(json_path, message)``.

    Kept out of the pydantic model on purpose, so pydantic and the exported JSON Schema
    accept exactly the same documents; ``saekit cards validate`` runs both. Runs once per
    card on the validation hot path, hence the plain loops.
    """
    errors: list[tuple[str, str]] = []
    if card.sae.d_sae is not None and card.index >= card.sae.d_sae:
        errors.append(("index", f"{card.index} >= d_sae {card.sae.d_sae}"))
    if card.stats is not None and card.stats.histogram is not None:
        _histogram_errors("stats.histogram", card.stats.histogram, errors)
    if card.logit_effects is not None and card.logit_effects.histogram is not None:
        _histogram_errors("logit_effects.histogram", card.logit_effects.histogram, errors)
    errors += citation_errors(card)
    for i, ex in enumerate(card.top_examples):
        n = len(ex.tokens)
        if len(ex.values) != n:
            errors.append((f"top_examples[{i}].values", f"{len(ex.values)} values for {n} tokens"))
        if ex.token_ids is not None and len(ex.token_ids) != n:
            errors.append((f"top_examples[{i}].token_ids", f"{len(ex.token_ids)} ids for {n} tokens"))
        if ex.max_position is not None and ex.max_position >= n:
            errors.append((f"top_examples[{i}].max_position", f"{ex.max_position} outside {n} tokens"))
    return errors


def citation_errors(card: FeatureCard) -> list[tuple[str, str]]:
    """Examples an annotation's provenance cites that the card does not hold (list, index, bin)."""
    errors: list[tuple[str, str]] = []
    for i, ann in enumerate(card.annotations):
        if ann.provenance is not None and ann.provenance.examples:
            check_citations(i, [(r.where, r.index, r.bin) for r in ann.provenance.examples],
                            {"top_examples": [e.bin for e in card.top_examples],
                             "quantile_examples": [e.bin for e in card.quantile_examples]}, errors)
    return errors


def check_citations(i: int, refs: list[tuple[str, int, str | None]], bins: dict[str, list[str | None]],
                    errors: list[tuple[str, str]]) -> None:
    """Annotation ``i`` cites ``refs``; ``bins``: the bin of each example the card holds, per list."""
    for j, (where, index, bin_) in enumerate(refs):
        path = f"annotations[{i}].provenance.examples[{j}]"
        have = bins[where]
        if index >= len(have):
            errors.append((path, f"cites {where}[{index}], the card has {len(have)}"))
        elif bin_ is not None and have[index] != bin_:
            errors.append((path, f"cites bin {bin_!r}, {where}[{index}] is in bin {have[index]!r}"))


def _histogram_errors(path: str, h: Histogram, errors: list[tuple[str, str]]) -> None:
    edges = h.bin_edges
    if len(edges) != len(h.counts) + 1:
        errors.append((path, "needs len(bin_edges) == len(counts) + 1"))
    if not all(map(operator.lt, edges, edges[1:])):
        errors.append((f"{path}.bin_edges", "must be strictly increasing"))
