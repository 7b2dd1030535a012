"""LatentMatch: one line of a ``saekit diff`` mapping file (JSONL), and the diff's summary.

A mapping says, for every latent of SAE A, which latent(s) of SAE B carry the same feature
(matched by cosine similarity of decoder directions, optionally encoder directions and
co-activation), and one more line for every latent of B that nothing in A matched:

    {"a": 12, "b": [40],      "b_similarity": [0.97],       "relation": "same",  ...}
    {"a": 13, "b": [7, 901],  "b_similarity": [0.88, 0.81], "relation": "split", ...}
    {"a": 14, "b": [],        "b_similarity": [],           "relation": "gone",  ...}
    {"a": null, "b": [5],     "b_similarity": [0.31],       "relation": "new",   ...}
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

# NonNegInt/Timestamp: the integer and date-time types pydantic and JSON Schema validators
# read the same way (see saekit.schemas.card).
from saekit.schemas.card import Histogram, NonNegInt, SAERef, Timestamp
from saekit.schemas.common import SCHEMA_VERSION, Strict

Relation = Literal["same", "split", "merge", "new", "gone"]
RELATIONS: tuple[str, ...] = ("same", "split", "merge", "new", "gone")
Similarity = Annotated[float, Field(ge=-1.0, le=1.0)]
LatentIndex = NonNegInt


class LatentMatch(Strict):
    """Where one latent went between SAE A and SAE B.

    Relations (per latent, from the links above the threshold; see saekit.matching):
    ``same`` one A latent <-> one B latent; ``split`` one A latent -> several B latents;
    ``merge`` several A latents -> this one B latent (one line per A latent);
    ``gone`` an A latent with no link; ``new`` a B latent with no link (``a`` is null).
    """

    schema_version: Literal["1.0"] = SCHEMA_VERSION
    a: LatentIndex | None = Field(None, description="Latent in SAE A; null for relation 'new'.")
    b: list[LatentIndex] = Field(
        default_factory=list,
        description="Latent(s) in SAE B, best first: one for same/merge/new, two or more for split, none for gone.",
    )
    b_similarity: list[Similarity] = Field(
        default_factory=list, description="Similarity of a to each latent in b (same order)."
    )
    similarity: Similarity = Field(
        description="Best similarity of this latent to any latent on the other side (below the threshold for gone/new)."
    )
    nearest: LatentIndex | None = Field(
        None, description="That nearest latent on the other side (in B for a row with a, else in A)."
    )
    relation: Relation


class MatchSummary(Strict):
    """What ``saekit diff`` compared, how, and what it found."""

    schema_version: Literal["1.0"] = SCHEMA_VERSION
    sae_a: SAERef
    sae_b: SAERef
    by: list[Literal["decoder", "encoder", "coact"]] = Field(
        min_length=1, description="Similarity = mean of these cosines (coact: Pearson over a token batch)."
    )
    threshold: Similarity = Field(description="Minimum similarity of a link.")
    assignment: Literal["mnn", "exact"] = Field(
        description="One-to-one pairs: mutual nearest neighbours, or an exact linear assignment."
    )
    n_tokens: NonNegInt | None = Field(None, description="Tokens of the shared batch (coact only).")
    counts: dict[Relation, NonNegInt] = Field(description="Lines of the mapping per relation.")
    histogram: Histogram = Field(
        description="Best similarity of each A latent to B (values below the first edge fall in the first bin)."
    )
    histogram_b: Histogram = Field(description="Best similarity of each B latent to A.")
    seconds: float = Field(ge=0.0, description="Wall time of the matching.")
    created_at: Timestamp | None = None


def mapping_errors(row: LatentMatch) -> list[tuple[str, str]]:
    """Checks across fields that JSON Schema cannot express, as ``(json_path, message)``."""
    errors: list[tuple[str, str]] = []
    if len(row.b_similarity) != len(row.b):
        errors.append(("b_similarity", f"{len(row.b_similarity)} similarities for {len(row.b)} latents"))
    want = {"same": (1, 1), "merge": (1, 1), "new": (1, 1), "split": (2, None), "gone": (0, 0)}[row.relation]
    lo, hi = want
    if len(row.b) < lo or (hi is not None and len(row.b) > hi):
        errors.append(("b", f"relation {row.relation!r} needs {lo}{'' if hi == lo else '+'} latent(s), got {len(row.b)}"))
    if (row.a is None) != (row.relation == "new"):
        errors.append(("a", "must be null exactly when relation is 'new'"))
    if len(set(row.b)) != len(row.b):
        errors.append(("b", "repeats a latent"))
    return errors
