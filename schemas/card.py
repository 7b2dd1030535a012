"""FeatureCard: the documentation of one SAE latent.

A superset of what a Neuronpedia feature export and OpenAI's sae-viewer FeatureInfo carry,
so both convert in and out (see saekit.schemas.convert).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from saekit.schemas.common import SCHEMA_VERSION, Hex64, Strict, Timestamp


class SAERef(Strict):
    """Which SAE a card (or record) describes: registry name, version and content hash."""

    name: str = Field(min_length=1, description="Registry name or release sae_id.")
    version: str | None = Field(None, description="Registry version or release revision.")
    sha256: Hex64 | None = Field(None, description="sha256 of the canonical artifact.")
    d_sae: int | None = Field(None, gt=0, description="Width of the SAE, to bound latent indices.")


class CarriedFrom(Strict):
    """Where a carried-over annotation came from (saekit diff / cards carry)."""

    sae: SAERef
    index: int = Field(ge=0)
    similarity: float = Field(ge=-1.0, le=1.0)


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


class Histogram(Strict):
    """Counts over bins; ``len(bin_edges) == len(counts) + 1`` (checked by consistency_errors)."""

    bin_edges: list[float] = Field(min_length=2)
    counts: list[float] = Field(min_length=1)



class ActivationStats(Strict):
    """Statistics of the latent's activation over a token set."""

    density: float = Field(ge=0.0, le=1.0, description="Fraction of tokens where it fires.")
    mean: float | None = Field(None, description="Mean activation over tokens where it fires.")
    max: float | None = None
    n_tokens: int | None = Field(None, ge=0, description="Tokens the stats were computed on.")
    histogram: Histogram | None = Field(None, description="Histogram of non-zero activations.")
    data_fingerprint: str | None = Field(None, description="sha256 of the token ids.")


class ExampleSource(Strict):
    """Where an example came from, so it can be re-run."""

    dataset: str | None = None
    document: str | None = Field(None, description="Document id within the dataset.")
    position: int | None = Field(None, ge=0, description="Token offset of tokens[0] in the document.")


class ActivationExample(Strict):
    """A context window and the latent's activation on each of its tokens."""

    tokens: list[str] = Field(min_length=1)
    values: list[float] = Field(min_length=1)
    token_ids: list[int] | None = None
    max_value: float | None = None
    max_position: int | None = Field(None, ge=0, description="Index in tokens of the maximum.")
    source: ExampleSource | None = None
    bin: str | None = Field(None, description="Sampling bin, e.g. 'top' or 'quantile_3'.")



class LogitEffect(Strict):
    """A token whose logit the latent's decoder direction raises or lowers."""

    token: str
    token_id: int | None = Field(None, ge=0)
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
    method: str = Field(min_length=1, description="How it was measured, e.g. 'zero-ablation'.")
    n_tokens: int | None = Field(None, ge=0)
    details: dict[str, Any] = Field(default_factory=dict)


class SimilarLatent(Strict):
    """Another latent (or neuron) and a similarity to it, e.g. decoder cosine."""

    index: int = Field(ge=0)
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

    schema_version: Literal["1.0"] = SCHEMA_VERSION
    sae: SAERef
    index: int = Field(ge=0, description="Latent index in the SAE.")
    annotations: list[Annotation] = Field(default_factory=list)
    stats: ActivationStats | None = None
    top_examples: list[ActivationExample] = Field(default_factory=list)
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
    accept exactly the same documents; ``saekit cards validate`` runs both.
    """
    errors: list[tuple[str, str]] = []

    def hist(path: str, h: Histogram | None) -> None:
        if h is None:
            return
        if len(h.bin_edges) != len(h.counts) + 1:
            errors.append((path, "needs len(bin_edges) == len(counts) + 1"))
        if any(b <= a for a, b in zip(h.bin_edges, h.bin_edges[1:])):
            errors.append((f"{path}.bin_edges", "must be strictly increasing"))

    if card.sae.d_sae is not None and card.index >= card.sae.d_sae:
        errors.append(("index", f"{card.index} >= d_sae {card.sae.d_sae}"))
    if card.stats is not None:
        hist("stats.histogram", card.stats.histogram)
    if card.logit_effects is not None:
        hist("logit_effects.histogram", card.logit_effects.histogram)
    for i, ex in enumerate(card.top_examples):
        p = f"top_examples[{i}]"
        if len(ex.values) != len(ex.tokens):
            errors.append((f"{p}.values", f"{len(ex.values)} values for {len(ex.tokens)} tokens"))
        if ex.token_ids is not None and len(ex.token_ids) != len(ex.tokens):
            errors.append((f"{p}.token_ids", f"{len(ex.token_ids)} ids for {len(ex.tokens)} tokens"))
        if ex.max_position is not None and ex.max_position >= len(ex.tokens):
            errors.append((f"{p}.max_position", f"{ex.max_position} outside {len(ex.tokens)} tokens"))
    return errors
