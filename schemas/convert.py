"""Convert feature cards to and from Neuronpedia's and OpenAI's sae-viewer formats.

Formats, as their sources define them:

- Neuronpedia feature JSON: a ``Neuron`` row (hijohnnylin/neuronpedia,
  apps/webapp/prisma/schema.prisma, ``model Neuron``) with its ``activations``
  (``model Activation``: tokens, values, maxValue, maxValueTokenIndex, minValue, dataIndex,
  dataSource, binMin/binMax/binContains, ...) and ``explanations`` (``model Explanation``:
  description, typeName, explanationModelName, authorId, scoreV1/scoreV2, createdAt, ...),
  as /api/feature/{modelId}/{layer}/{index} returns it and its exports carry.
- OpenAI sae-viewer ``FeatureInfo`` (openai/sparse_autoencoder, sae-viewer/src/types.ts):
  density, mean_act, mean_act_squared, hist, and ``top``/``random`` lists of
  ``SequenceInfo`` (tokens, token_ints, acts, act, idx, doc_id, ...). The viewer fetches
  one per latent from ``.../atoms/{atom}.json`` (sae-viewer/src/interpAPI.ts), so the index
  comes from the caller or the file name.

Every Neuronpedia field a card has no place for is kept under ``card.extra["neuronpedia"]``,
so Neuronpedia -> card -> Neuronpedia gives back the same document. OpenAI's fields a card
has no place for are kept under ``card.extra["openai"]`` (that direction is one-way: the
viewer reads files only OpenAI produces).

Files of any of these formats convert with :func:`convert_files` (what ``saekit cards
convert`` does), reading and writing through saekit.schemas.card_files:

    from saekit.schemas.convert import convert_files
    result = convert_files(["neuronpedia_650.json"], "feature_cards.jsonl")
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saekit.schemas.card import (
    ActivationExample,
    ActivationStats,
    Annotation,
    CardProvenance,
    ExampleSource,
    FeatureCard,
    Histogram,
    LogitEffect,
    LogitEffects,
    SAERef,
    SimilarLatent,
    consistency_errors,
)
from saekit.schemas.card_files import expand, json_path, parse_card, read_documents, write_lines
from saekit.schemas.errors import InputError

NP = "neuronpedia"
OPENAI = "openai-sae-viewer"

# Neuronpedia's parallel index/value arrays <-> SimilarLatent.kind
_NP_SIMILAR = {
    "decoder_cosine": ("topkCosSimIndices", "topkCosSimValues"),
    "neuron_alignment": ("neuron_alignment_indices", "neuron_alignment_values"),
    "correlated_neurons_pearson": ("correlated_neurons_indices", "correlated_neurons_pearson"),
    "correlated_features_pearson": ("correlated_features_indices", "correlated_features_pearson"),
}
# Every top-level key a full Neuronpedia feature carries that the card maps (the rest go to extra).
_NP_MAPPED = {
    "modelId", "layer", "index", "hookName", "maxActApprox", "frac_nonzero",
    "pos_str", "pos_values", "neg_str", "neg_values",
    "freq_hist_data_bar_heights", "freq_hist_data_bar_values",
    "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
    "activations", "explanations",
    *(k for pair in _NP_SIMILAR.values() for k in pair),
}
_NP_EXPLANATION_MAPPED = {"description", "authorId", "typeName", "explanationModelName", "scoreV1", "scoreV2", "createdAt"}
_NP_ACTIVATION_MAPPED = {"tokens", "values", "maxValue", "maxValueTokenIndex", "dataSource", "dataIndex"}
_TIMESTAMP = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$")


def detect_format(doc: Any) -> str:
    """``"saekit"``, ``"neuronpedia"`` or ``"openai"`` for one parsed document (a dict)."""
    if not isinstance(doc, dict):
        raise InputError(f"expected a JSON object, got {type(doc).__name__}")
    if "schema_version" in doc and "sae" in doc:
        return "saekit"
    if "pos_str" in doc or "frac_nonzero" in doc or ("activations" in doc and "modelId" in doc):
        return "neuronpedia"
    if "mean_act" in doc or ("top" in doc and "density" in doc):
        return "openai"
    raise InputError("cannot tell the format (not a saekit card, Neuronpedia feature or OpenAI FeatureInfo)")


# --- histograms: Neuronpedia keeps bar centres, a card keeps bin edges -------------------


def _edges_from_centres(centres: list[float]) -> list[float] | None:
    """Edges of equal-width bins around ``centres``; None if they are not evenly spaced."""
    if len(centres) < 2:
        return None
    width = (centres[-1] - centres[0]) / (len(centres) - 1)
    if width <= 0 or any(abs((b - a) - width) > 1e-6 * max(1.0, abs(width)) for a, b in zip(centres, centres[1:])):
        return None
    return [c - width / 2 for c in centres] + [centres[-1] + width / 2]


def _centres(edges: list[float]) -> list[float]:
    return [(a + b) / 2 for a, b in zip(edges, edges[1:])]


def _np_histogram(heights: list, centres: list, keep: dict, prefix: str) -> Histogram | None:
    if not heights and not centres:
        return None
    edges = _edges_from_centres(list(centres)) if len(heights) == len(centres) else None
    if edges is None:  # not expressible as a card histogram: keep as it came
        keep[f"{prefix}_bar_heights"] = heights
        keep[f"{prefix}_bar_values"] = centres
        return None
    if _centres(edges) != list(centres):  # rounding: keep the exact centres for the way back
        keep[f"{prefix}_bar_values"] = centres
    return Histogram(bin_edges=edges, counts=[float(h) for h in heights])


# --- Neuronpedia -> card ---------------------------------------------------------------


def from_neuronpedia(feature: dict, *, sae: SAERef | None = None) -> FeatureCard:
    """A FeatureCard from one Neuronpedia feature; ``sae`` defaults to its source id (layer)."""
    if not isinstance(feature, dict):
        raise InputError("a Neuronpedia feature must be a JSON object")
    try:
        index = int(feature["index"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"Neuronpedia feature without an integer 'index': {feature.get('index')!r}") from None
    keep: dict[str, Any] = {"keys": list(feature)}
    keep["feature"] = {k: v for k, v in feature.items() if k not in _NP_MAPPED}
    if sae is None:
        sae = SAERef(name=str(feature.get("layer") or feature.get("modelId") or "neuronpedia"))
    if "modelId" in feature:
        keep["modelId"] = feature["modelId"]
    if "layer" in feature:
        keep["layer"] = feature["layer"]

    annotations = []
    expl_extra = []
    for e in feature.get("explanations") or []:
        scores = {k: float(e[k]) for k in ("scoreV1", "scoreV2") if isinstance(e.get(k), (int, float))}
        created = e.get("createdAt")
        rest = {k: v for k, v in e.items() if k not in _NP_EXPLANATION_MAPPED}
        if created is not None and not (isinstance(created, str) and _TIMESTAMP.fullmatch(created)):
            rest["createdAt"] = created
            created = None
        for k in ("scoreV1", "scoreV2"):  # null or odd scores travel as they came
            if k in e and k not in scores:
                rest[k] = e[k]
        rest["_keys"] = list(e)
        annotations.append(
            Annotation(
                description=e.get("description"),
                source="auto" if e.get("explanationModelName") else "human",
                explainer_model=e.get("explanationModelName"),
                author=e.get("authorId"),
                type_name=e.get("typeName"),
                scores=scores,
                created_at=created,
            )
        )
        expl_extra.append(rest)
    if expl_extra:
        keep["explanations"] = expl_extra

    examples = []
    act_extra = []
    for a in feature.get("activations") or []:
        rest = {k: v for k, v in a.items() if k not in _NP_ACTIVATION_MAPPED}
        rest["_keys"] = list(a)
        data_source, data_index = a.get("dataSource"), a.get("dataIndex")
        if data_index is not None and not isinstance(data_index, str):  # schema says String?
            rest["dataIndex"], data_index = data_index, None
        bin_min = a.get("binMin")
        examples.append(
            ActivationExample(
                tokens=list(a.get("tokens") or []),
                values=[float(v) for v in a.get("values") or []],
                max_value=a.get("maxValue"),
                max_position=a.get("maxValueTokenIndex"),
                source=ExampleSource(dataset=data_source, document=data_index)
                if data_source is not None or data_index is not None
                else None,
                bin="top" if bin_min in (None, -1) else f"quantile[{bin_min}, {a.get('binMax')}]",
            )
        )
        act_extra.append(rest)
    if act_extra:
        keep["activations"] = act_extra

    stats = None
    hist = _np_histogram(feature.get("freq_hist_data_bar_heights") or [], feature.get("freq_hist_data_bar_values") or [], keep, "freq_hist_data")
    if "frac_nonzero" in feature or "maxActApprox" in feature:
        stats = ActivationStats(
            density=float(feature.get("frac_nonzero") or 0.0),
            max=feature.get("maxActApprox"),
            histogram=hist,
        )
    elif hist is not None:
        keep["freq_hist_data_bar_heights"] = feature.get("freq_hist_data_bar_heights")
        keep["freq_hist_data_bar_values"] = feature.get("freq_hist_data_bar_values")

    logit_hist = _np_histogram(
        feature.get("logits_hist_data_bar_heights") or [], feature.get("logits_hist_data_bar_values") or [], keep, "logits_hist_data"
    )
    raw = keep.setdefault("raw", {})  # mapped fields that did not convert cleanly, as they came
    for a, b in [("pos_str", "pos_values"), ("neg_str", "neg_values"), *_NP_SIMILAR.values()]:
        if len(feature.get(a) or []) != len(feature.get(b) or []):
            raw[a], raw[b] = feature.get(a), feature.get(b)
    if "frac_nonzero" in feature and not isinstance(feature["frac_nonzero"], (int, float)):
        raw["frac_nonzero"] = feature["frac_nonzero"]
    if not raw:
        del keep["raw"]
    logits = LogitEffects(
        positive=[LogitEffect(token=t, value=v) for t, v in zip(feature.get("pos_str") or [], feature.get("pos_values") or [])],
        negative=[LogitEffect(token=t, value=v) for t, v in zip(feature.get("neg_str") or [], feature.get("neg_values") or [])],
        histogram=logit_hist,
    )
    similar = []
    for kind, (ik, vk) in _NP_SIMILAR.items():
        similar += [SimilarLatent(index=int(i), value=float(v), kind=kind) for i, v in zip(feature.get(ik) or [], feature.get(vk) or [])]

    return FeatureCard(
        sae=sae,
        index=index,
        annotations=annotations,
        stats=stats,
        top_examples=examples,
        logit_effects=logits if (logits.positive or logits.negative or logits.histogram) else None,
        similar=similar,
        provenance=CardProvenance(
            tool=NP, model=feature.get("modelId"), hook_name=feature.get("hookName"), imported_from=NP
        ),
        extra={NP: keep},
    )


def _str_or_none(v: Any) -> str | None:
    return None if v is None else str(v)


# --- card -> Neuronpedia ---------------------------------------------------------------


def to_neuronpedia(card: FeatureCard, *, model_id: str | None = None, layer: str | None = None) -> dict:
    """A Neuronpedia feature document for ``card`` (the fields of its upload/export format)."""
    keep: dict[str, Any] = dict(card.extra.get(NP) or {})
    prov = card.provenance
    out: dict[str, Any] = {
        "modelId": model_id or keep.get("modelId") or (prov.model if prov else None) or "",
        "layer": layer or keep.get("layer") or card.sae.name,
        "index": str(card.index),
    }
    if prov and prov.hook_name is not None:
        out["hookName"] = prov.hook_name
    stats = card.stats
    out["maxActApprox"] = stats.max if stats and stats.max is not None else max(
        (e.max_value if e.max_value is not None else max(e.values)) for e in card.top_examples
    ) if card.top_examples else 0.0
    out["frac_nonzero"] = stats.density if stats else 0.0
    le = card.logit_effects or LogitEffects()
    out["pos_str"] = [x.token for x in le.positive]
    out["pos_values"] = [x.value for x in le.positive]
    out["neg_str"] = [x.token for x in le.negative]
    out["neg_values"] = [x.value for x in le.negative]
    for prefix, h in (("freq_hist_data", stats.histogram if stats else None), ("logits_hist_data", le.histogram)):
        out[f"{prefix}_bar_heights"] = keep.get(f"{prefix}_bar_heights", h.counts if h else [])
        out[f"{prefix}_bar_values"] = keep.get(f"{prefix}_bar_values", _centres(h.bin_edges) if h else [])
    for kind, (ik, vk) in _NP_SIMILAR.items():
        sims = [s for s in card.similar if s.kind == kind]
        out[ik] = [s.index for s in sims]
        out[vk] = [s.value for s in sims]

    act_extra = keep.get("activations") or []
    acts = []
    for i, ex in enumerate(card.top_examples):
        rest = dict(act_extra[i]) if i < len(act_extra) else {}
        keys = rest.pop("_keys", None)
        a: dict[str, Any] = {"tokens": list(ex.tokens), "values": list(ex.values)}
        a["maxValue"] = ex.max_value if ex.max_value is not None else max(ex.values)
        a["maxValueTokenIndex"] = ex.max_position if ex.max_position is not None else ex.values.index(max(ex.values))
        if ex.source is not None:
            a["dataSource"] = ex.source.dataset
            a["dataIndex"] = ex.source.document
        a.update(rest)
        acts.append(_ordered(a, keys))
    out["activations"] = acts

    expl_extra = keep.get("explanations") or []
    expls = []
    for i, ann in enumerate(card.annotations):
        if ann.description is None and ann.label is None and ann.provenance is not None and ann.provenance.error:
            continue  # a recorded failure (cards explain) is no explanation
        rest = dict(expl_extra[i]) if i < len(expl_extra) else {}
        keys = rest.pop("_keys", None)
        e: dict[str, Any] = {"description": ann.description if ann.description is not None else (ann.label or "")}
        if ann.author is not None:
            e["authorId"] = ann.author
        e["typeName"] = ann.type_name
        e["explanationModelName"] = ann.explainer_model
        for k in ("scoreV1", "scoreV2"):
            if k in ann.scores:
                e[k] = ann.scores[k]
        if ann.created_at is not None:
            e["createdAt"] = ann.created_at
        if ann.score_records:
            e["scores"] = neuronpedia_scores(ann)
        e.update(rest)
        expls.append(_ordered(e, keys))
    out["explanations"] = expls

    out.update(keep.get("raw") or {})
    out.update(keep.get("feature") or {})
    return _ordered(out, keep.get("keys"))


def neuronpedia_scores(ann: Annotation) -> list[dict]:
    """An annotation's scores as Neuronpedia's ``ExplanationScore`` rows (hijohnnylin/neuronpedia,
    apps/webapp/prisma/schema.prisma: value, explanationScoreTypeName, explanationScoreModelName,
    jsonDetails, a string). A score with no value (nothing could be scored) has no row: ``value``
    is required there. The control value, chance and counts go in jsonDetails."""
    controls = {(r.scorer, r.metric, r.scorer_model): r.value for r in ann.score_records if r.control}
    rows = []
    for r in ann.score_records:
        if r.control or r.value is None:
            continue
        details = {"metric": r.metric, "control_value": controls.get((r.scorer, r.metric, r.scorer_model)),
                   "chance": r.chance, "n_pos": r.n_pos, "n_neg": r.n_neg, "n_failed": r.n_failed,
                   "prompt_sha256": r.prompt_sha256}
        rows.append({"value": r.value, "explanationScoreTypeName": f"saekit_{r.scorer}_{r.metric}",
                     "explanationScoreModelName": r.scorer_model or "",
                     "jsonDetails": json.dumps(details, sort_keys=True)})
    return rows


def _ordered(doc: dict, keys: list[str] | None) -> dict:
    """``doc`` limited to (and ordered as) ``keys`` when it came from Neuronpedia."""
    if keys is None:
        return doc
    return {k: doc.get(k) for k in keys}


# --- OpenAI sae-viewer -> card ---------------------------------------------------------

_SEQ_MAPPED = {"tokens", "acts", "token_ints", "act", "idx", "doc_id", "normalized_acts"}


def from_openai(info: dict, *, sae: SAERef, index: int) -> FeatureCard:
    """A FeatureCard from one sae-viewer FeatureInfo (``top`` and ``random`` sequences)."""
    if not isinstance(info, dict):
        raise InputError("an OpenAI FeatureInfo must be a JSON object")
    examples = []
    seq_extra = []
    for bin_name in ("top", "random"):
        for s in info.get(bin_name) or []:
            examples.append(
                ActivationExample(
                    tokens=list(s.get("tokens") or []),
                    values=[float(v) for v in s.get("acts") or []],
                    token_ids=list(s["token_ints"]) if s.get("token_ints") is not None else None,
                    max_value=s.get("act"),
                    # idx: "which act this document was selected for" (types.ts)
                    max_position=s.get("idx"),
                    source=ExampleSource(document=str(s["doc_id"])) if s.get("doc_id") is not None else None,
                    bin=bin_name,
                )
            )
            seq_extra.append({k: v for k, v in s.items() if k not in _SEQ_MAPPED})
    keep: dict[str, Any] = {k: v for k, v in info.items() if k not in ("top", "random", "density")}
    if any(seq_extra):
        keep["sequences"] = seq_extra
    # mean_act stays in extra: the viewer does not say whether it averages over all tokens
    # or only where the latent fires (a card's stats.mean is the latter).
    stats = ActivationStats(density=float(info["density"])) if isinstance(info.get("density"), (int, float)) else None
    return FeatureCard(
        sae=sae,
        index=index,
        stats=stats,
        top_examples=examples,
        provenance=CardProvenance(tool=OPENAI, imported_from=OPENAI),
        extra={"openai": keep} if keep else {},
    )


def index_from_filename(name: str) -> int | None:
    """The latent index in sae-viewer file names (``atoms/123.json``), else None."""
    m = re.fullmatch(r"(\d+)(?:-ablated)?\.json", name)
    return int(m.group(1)) if m else None


# --- files ---------------------------------------------------------------------------

FROM_FORMATS = ("auto", "saekit", "neuronpedia", "openai")
TO_FORMATS = ("saekit", "neuronpedia")


@dataclass
class ConvertResult:
    """What a conversion wrote."""

    cards: list[FeatureCard]
    """The cards read (before rendering to the output format)."""
    out: str
    """Where they went (``-``: stdout)."""
    to: str
    """The output format: saekit or neuronpedia."""
    warnings: list[str] = field(default_factory=list)
    """Consistency problems of the cards (``card N: path: message``); written anyway."""


def first_error(err: Exception) -> str:
    """The first problem of a pydantic ValidationError (``json.path: message``), or the message."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        e = errors()[0]
        return f"{json_path(e['loc'])}: {e['msg']}"
    return str(err).splitlines()[0]


def _detect(doc: object, where: str) -> str:
    try:
        return detect_format(doc)
    except InputError as err:
        raise InputError(err.message, where=where) from None


def to_card(doc: Any, fmt: str, *, where: str, path: Path, sae: SAERef | None = None, index: int | None = None) -> FeatureCard:
    """One document of format ``fmt`` (saekit, neuronpedia, openai; auto: detected) as a card."""
    fmt = fmt if fmt != "auto" else _detect(doc, where)
    try:
        if fmt == "saekit":
            return parse_card(json.dumps(doc), where=where)
        if fmt == "neuronpedia":
            return from_neuronpedia(doc, sae=sae)
        idx = index if index is not None else index_from_filename(path.name)
        if idx is None:
            raise InputError("OpenAI FeatureInfo has no index: pass --index or name the file NNN.json", where=where)
        if sae is None:
            raise InputError("OpenAI FeatureInfo does not name its SAE: pass --sae", where=where)
        return from_openai(doc, sae=sae, index=idx)
    except InputError as err:
        if err.where is None:
            raise InputError(err.message, where=where) from None
        raise
    except ValueError as err:  # pydantic: the source document breaks the card schema
        raise InputError(f"cannot convert: {first_error(err)}", where=where) from None


def read_any_cards(
    inputs: Sequence[str | os.PathLike], *, from_format: str = "auto", sae: SAERef | None = None,
    index: int | None = None,
) -> list[FeatureCard]:
    """Every document of ``inputs`` (files, or folders of them; saekit cards, Neuronpedia
    features, OpenAI FeatureInfo; ``from_format`` one of FROM_FORMATS) as a FeatureCard (see
    ``to_card``)."""
    if from_format not in FROM_FORMATS:
        raise InputError(f"--from must be auto, saekit, neuronpedia or openai, not {from_format!r}")
    cards: list[FeatureCard] = []
    for path in expand(inputs):  # a folder stands for the card files under it
        for n, doc in read_documents(path):
            cards.append(to_card(doc, from_format, where=f"{path}:{n}", path=path, sae=sae, index=index))
    return cards


def render(cards: Sequence[FeatureCard], to: str) -> list[str]:
    """One JSON line per card: saekit cards, or Neuronpedia features."""
    if to == "saekit":
        return [c.model_dump_json(exclude_none=True) for c in cards]
    return [json.dumps(to_neuronpedia(c), ensure_ascii=False) for c in cards]


def convert_files(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    to: str = "saekit",
    from_format: str = "auto",
    sae: SAERef | None = None,
    index: int | None = None,
) -> ConvertResult:
    """Read ``inputs`` (any of FROM_FORMATS), write them to ``out`` as ``to`` (TO_FORMATS;
    .jsonl, .jsonl.gz, .json, or ``-`` for stdout)."""
    if to not in TO_FORMATS:
        raise InputError(f"--to must be saekit or neuronpedia, not {to!r}")
    cards = read_any_cards(inputs, from_format=from_format, sae=sae, index=index)
    warnings = [f"card {c.index}: {p}: {m}" for c in cards for p, m in consistency_errors(c)]
    write_lines(out, render(cards, to))
    return ConvertResult(cards=cards, out=str(out), to=to, warnings=warnings)
