"""One attribution graph, end to end: tokenize, trace, attribute, prune, score, write."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saekit.circuits import files, page
from saekit.circuits.attribution import (DEFAULT_BATCH_SIZE, DEFAULT_LOGIT_PROB, DEFAULT_MAX_LOGITS,
                                         DEFAULT_UPDATE_INTERVAL, Graph, attribute)
from saekit.circuits.pruning import Pruned, prune, scores
from saekit.circuits.replacement import ReplacementModel
from saekit.kernels.transcoder import TranscoderSet
from saekit.schemas import InputError

MAX_PROMPT_TOKENS = 256


@dataclass
class GraphResult:
    graph: Graph
    pruned: Pruned
    replacement_score: float
    completeness_score: float
    prompt_tokens: list[str]
    neuronpedia: dict[str, Any]
    meta: dict[str, Any]
    folder: Path | None


def tokenize(tokenizer, prompt: str) -> torch.Tensor:
    """Token ids of ``prompt`` with a special token in front unless it starts with one: position
    0 is left out of the graph (circuit-tracer ``replacement_model/common.py`` ensure_tokenized:
    BOS, else PAD, else EOS, else any special token)."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    special = list(getattr(tokenizer, "all_special_ids", []) or [])
    if not ids or ids[0] not in special:
        cands = [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, *special]
        first = next((c for c in cands if c is not None), None)
        if first is None:
            raise InputError("the tokenizer has no special token to put before the prompt", where="tokenizer")
        ids = [first, *ids]
    if len(ids) > MAX_PROMPT_TOKENS:
        raise InputError(f"the prompt has {len(ids)} tokens; graphs take at most {MAX_PROMPT_TOKENS}", where="prompt")
    return torch.tensor(ids)


def build_graph(
    prompt: str,
    transcoders: TranscoderSet,
    model,
    tokenizer,
    *,
    out: str | Path | None = None,
    max_n_logits: int = DEFAULT_MAX_LOGITS,
    desired_logit_prob: float = DEFAULT_LOGIT_PROB,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_feature_nodes: int | None = None,
    update_interval: int = DEFAULT_UPDATE_INTERVAL,
    cards: dict[tuple[int, int], dict[str, Any]] | None = None,
    card_url: str | None = None,
    scan: str | None = None,
    transcoders_ref: str | None = None,
    model_info: dict[str, Any] | None = None,
) -> GraphResult:
    """The attribution graph of ``prompt`` on ``model`` with ``transcoders``, pruned and scored;
    written to ``out`` when given (see saekit.circuits.files). ``max_feature_nodes`` bounds the
    feature nodes (circuit-tracer's option of that name, see saekit.circuits.attribution)."""
    if not prompt:
        raise InputError("the prompt is empty", where="prompt")
    for name, v in (("max_n_logits", max_n_logits), ("batch_size", batch_size),
                    ("max_feature_nodes", max_feature_nodes), ("update_interval", update_interval)):
        if v is not None and v < 1:
            raise InputError(f"{name} must be >= 1, got {v}", where=name)
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise InputError(f"{name} must be between 0 and 1, got {v}", where=name)
    t0 = time.perf_counter()
    rm = ReplacementModel(model, transcoders)
    tokens = tokenize(tokenizer, prompt)
    trace = rm.trace(tokens)
    t1 = time.perf_counter()
    graph = attribute(rm, tokens, max_n_logits=max_n_logits, desired_logit_prob=desired_logit_prob,
                      batch_size=batch_size, trace=trace, max_feature_nodes=max_feature_nodes,
                      update_interval=update_interval)
    t2 = time.perf_counter()
    pruned = prune(graph, node_threshold, edge_threshold)
    replacement, completeness = scores(graph)
    t3 = time.perf_counter()

    prompt_tokens = [tokenizer.decode([t]) for t in tokens.tolist()]
    logit_strings = [tokenizer.decode([t]) for t in graph.logit_tokens.tolist()]
    settings = {"max_n_logits": max_n_logits, "desired_logit_prob": desired_logit_prob, "batch_size": batch_size,
                "max_feature_nodes": max_feature_nodes, "update_interval": update_interval,
                "node_threshold": node_threshold, "edge_threshold": edge_threshold}
    scan = scan or transcoders.model_name or model.config.name_or_path or "model"
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "graph"
    np_graph = files.neuronpedia_graph(
        graph, pruned, prompt=prompt, prompt_tokens=prompt_tokens, logit_strings=logit_strings, slug=slug,
        scan=scan, cards=cards, card_url=card_url, settings=settings,
        info={"description": f"replacement score {replacement:.3f}, completeness score {completeness:.3f}",
              **({"source_urls": [transcoders_ref]} if transcoders_ref else {})},
    )
    kept = pruned.node_mask
    meta = {
        "prompt": prompt, "prompt_tokens": prompt_tokens, "token_ids": tokens.tolist(),
        "model": model_info or {"id": scan}, "transcoders": {"ref": transcoders_ref, "layers": transcoders.layers,
                                                              "sha256": transcoders.ref.sha256 if transcoders.ref else None,
                                                              "model_name": transcoders.model_name,
                                                              "model_revision": transcoders.model_revision},
        "settings": settings,
        "scores": {"replacement": replacement, "completeness": completeness},
        "logits": [{"token": s, "token_id": int(i), "prob": float(p)}
                   for s, i, p in zip(logit_strings, graph.logit_tokens.tolist(), graph.logit_probs.tolist())],
        "counts": {"active_features": graph.info["active_features"], "features": graph.n_features,
                   "nodes": int(graph.adjacency.shape[0]),
                   "kept_features": int(kept[: graph.n_features].sum()), "kept_nodes": int(kept.sum()),
                   "kept_edges": int(pruned.edge_mask.sum())},
        "timings_s": {"trace": t1 - t0, "attribution": t2 - t1, "pruning_and_scores": t3 - t2},
    }
    folder = None
    if out is not None:
        summary = {"model": scan, "transcoders": transcoders_ref or "(in memory)",
                   "replacement score": f"{replacement:.3f}", "completeness score": f"{completeness:.3f}",
                   "features (active / nodes / kept)":
                       f"{graph.info['active_features']} / {graph.n_features} / {meta['counts']['kept_features']}",
                   "top logit": f"{logit_strings[0]!r} p={float(graph.logit_probs[0]):.3f}"}
        html = page.render(np_graph, title=f"Attribution graph: {prompt}", summary=summary)
        folder = files.write(out, graph, pruned, np_graph, meta, html)
    return GraphResult(graph, pruned, replacement, completeness, prompt_tokens, np_graph, meta, folder)


def read_layer_cards(folder: str | Path, layers: list[int]) -> dict[tuple[int, int], dict[str, Any]]:
    """Feature cards of a set by (layer, index), from ``FOLDER/layer_{i}/feature_cards.jsonl``
    (what ``saekit check`` of a set writes, and a set folder that holds cards)."""
    from saekit.schemas.card_files import read_cards

    out: dict[tuple[int, int], dict[str, Any]] = {}
    for layer in layers:
        path = Path(folder) / f"layer_{layer}" / "feature_cards.jsonl"
        if path.is_file():
            for card in read_cards(path):
                out[(layer, card.index)] = card.model_dump(mode="json", exclude_none=True)
    return out


def graph(
    prompt: str,
    transcoders: Any,
    *,
    model: str | None = None,
    cards: str | Path | None = None,
    **kwargs: Any,
) -> GraphResult:
    """``saekit graph``: load the set (a reference or a TranscoderSet) and its model (the set's
    model unless ``model`` names one: an id, ``ID@REV`` or a folder, see
    saekit.harness.model.load_lm), read cards from ``cards`` (or the set's own folder), build
    the graph."""
    from saekit.harness.model import DEFAULT_MODEL_ID, load_lm
    from saekit.registry.store import load_ref

    ref = None
    if not isinstance(transcoders, TranscoderSet):
        ref = str(transcoders)
        loaded = load_ref(ref)
        if not isinstance(loaded, TranscoderSet):
            raise InputError("is an SAE, not a transcoder set (attribution graphs need one transcoder per MLP)",
                             where=ref)
        transcoders = loaded
        if cards is None and Path(ref).is_dir():
            cards = ref
    if ref is None and transcoders.ref is not None:
        ref = f"{transcoders.ref.name}/{transcoders.ref.version}" if transcoders.ref.version else transcoders.ref.name
    model_id = model or transcoders.model_name
    lm, tok = load_lm(None if model_id in (None, DEFAULT_MODEL_ID) else model_id)
    info = getattr(lm, "saekit_info", None)
    model_info = ({"id": info.id, "revision": info.revision, "weights_sha256": info.weights_sha256}
                  if info is not None else {"id": model_id})
    card_map = read_layer_cards(cards, transcoders.layers) if cards is not None else {}
    kwargs.setdefault("transcoders_ref", ref)
    return build_graph(prompt, transcoders, lm, tok, cards=card_map, model_info=model_info,
                       scan=kwargs.pop("scan", None) or model_info["id"], **kwargs)
