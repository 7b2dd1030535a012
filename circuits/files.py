"""Graph files: a folder with

    graph.json              the pruned graph in Neuronpedia's graph schema (opens in their viewer)
    graph.safetensors       the full graph: adjacency, features, activations, logits, bias, masks;
                            the header's metadata records active_features and max_feature_nodes
    graph-meta.json         saekit's record: prompt, model, transcoders, settings, scores, node ranges
    index.html              a static page rendering the pruned graph offline (saekit.circuits.page)

No pickle: tensors in safetensors, everything else JSON.

Node ids follow circuit-tracer's ``frontend/graph_models.py`` (``Node.feature_node``,
``token_node``, ``logit_node``): feature ``{layer}_{feature}_{pos}``, embedding
``E_{token_id}_{pos}``, logit ``{n_layers + 1}_{token_id}_{pos}``. Error nodes take
Neuronpedia's converter's id ``{layer}_error_mlp_{pos}`` (``apps/graph/neuronpedia_graph/
format_converter.py``): circuit-tracer's ``0_{layer}_{pos}`` can equal a layer-0 feature's id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from saekit.circuits.attribution import Graph
from saekit.circuits.pruning import Pruned
from saekit.schemas import ArtifactFormatError
from saekit.schemas.safeio import load_json, read_bytes, write_bytes
from saekit.schemas.version import __version__

SCHEMA_VERSION = "1"
GRAPH_JSON = "graph.json"
TENSORS = "graph.safetensors"
META = "graph-meta.json"
PAGE = "index.html"
MAX_META_BYTES = 64 << 20


def cantor(x: int, y: int) -> int:
    """Neuronpedia's feature number of (layer, index): the Cantor pairing
    (circuit-tracer ``frontend/graph_models.py`` ``_cantor_pairing``)."""
    return (x + y) * (x + y + 1) // 2 + y


def node_ids(graph: Graph) -> list[str]:
    """The id of every node, in adjacency order."""
    ids = [f"{l}_{f}_{p}" for l, p, f in graph.features.tolist()]
    ids += [f"{l}_error_mlp_{p}" for l in range(graph.n_layers) for p in range(graph.n_pos)]
    ids += [f"E_{t}_{p}" for p, t in enumerate(graph.tokens.tolist())]
    ids += [f"{graph.n_layers + 1}_{t}_{graph.n_pos - 1}" for t in graph.logit_tokens.tolist()]
    return ids


def explanation(card: dict[str, Any] | None) -> str:
    """A card's explanation: the last annotation with a description, else a label (the same
    reading as saekit.releases.annotations, which sits above this layer)."""
    anns = (card or {}).get("annotations") or []
    desc = next((a["description"] for a in reversed(anns) if a.get("description")), None)
    return desc or next((a["label"] for a in anns if a.get("label")), None) or ""


def neuronpedia_graph(
    graph: Graph,
    pruned: Pruned,
    *,
    prompt: str,
    prompt_tokens: list[str],
    logit_strings: list[str],
    slug: str,
    scan: str,
    cards: dict[tuple[int, int], dict[str, Any]] | None = None,
    card_url: str | None = None,
    info: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The pruned graph as Neuronpedia's graph JSON (``apps/webapp/app/api/graph/graph-schema.json``).

    ``cards[(layer, index)]`` (card dicts) give feature nodes their ``clerp`` (the card's
    explanation) and a ``card`` block; ``card_url`` (``...{layer}...{feature}...``) their
    ``vis_link``, which Neuronpedia's viewer opens."""
    ids = node_ids(graph)
    cards = cards or {}
    nodes: dict[int, dict[str, Any]] = {}
    cum = pruned.cumulative.tolist()
    n_err_end = graph.token_start
    for i in torch.nonzero(pruned.node_mask).reshape(-1).tolist():
        node: dict[str, Any] = {"node_id": ids[i], "jsNodeId": ids[i], "influence": cum[i]}
        if i < graph.n_features:
            layer, pos, feat = graph.features[i].tolist()
            card = cards.get((layer, feat))
            node.update(feature=cantor(layer, feat), layer=str(layer), ctx_idx=pos,
                        feature_type="cross layer transcoder", clerp=explanation(card),
                        activation=float(graph.activations[i]),
                        card={"layer": layer, "index": feat, "has_card": card is not None})
            if card_url:
                node["vis_link"] = card_url.format(layer=layer, feature=feat)
        elif i < n_err_end:
            layer, pos = divmod(i - graph.n_features, graph.n_pos)
            node.update(feature=None, layer=str(layer), ctx_idx=pos, feature_type="mlp reconstruction error",
                        clerp=f'Err: mlp "{prompt_tokens[pos]}"')
        elif i < graph.logit_start:
            pos = i - graph.token_start
            node.update(feature=pos, layer="E", ctx_idx=pos, feature_type="embedding",
                        clerp=f'Emb: "{prompt_tokens[pos]}"')
        else:
            j = i - graph.logit_start
            p = float(graph.logit_probs[j])
            node.update(feature=int(graph.logit_tokens[j]), layer=str(graph.n_layers + 1), ctx_idx=graph.n_pos - 1,
                        feature_type="logit", token_prob=p, is_target_logit=j == 0,
                        clerp=f'Output "{logit_strings[j]}" (p={p:.3f})')
        nodes[i] = node
    dst, src = torch.nonzero(pruned.edge_mask, as_tuple=True)
    weights = graph.adjacency[dst, src].tolist()
    links = [{"source": ids[s], "target": ids[d], "weight": w}
             for s, d, w in zip(src.tolist(), dst.tolist(), weights) if s in nodes and d in nodes]
    used = {x for link in links for x in (link["source"], link["target"])}
    kept = [n for n in nodes.values() if n["node_id"] in used or n["feature_type"] in ("embedding", "logit")]
    settings = settings or {}
    metadata: dict[str, Any] = {
        "slug": slug, "scan": scan, "prompt_tokens": prompt_tokens, "prompt": prompt,
        "node_threshold": settings.get("node_threshold"), "schema_version": 1,
        "info": {"generator": {"name": "saekit", "version": __version__}, **(info or {})},
        "generation_settings": _generation_settings(settings),
        "pruning_settings": {k: settings[k] for k in ("node_threshold", "edge_threshold") if k in settings},
    }
    q = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": q, "nodes": kept, "links": links}


def _generation_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """circuit-tracer's attribute() options (the schema's generation_settings); update_interval
    only where max_feature_nodes makes it count."""
    keys = ["max_n_logits", "desired_logit_prob", "batch_size"]
    if settings.get("max_feature_nodes") is not None:
        keys += ["max_feature_nodes", "update_interval"]
    return {k: settings[k] for k in keys if k in settings}


def bound_of(graph: Graph) -> dict[str, str]:
    """The feature-node bound as graph.safetensors' header metadata (strings, as safetensors
    keeps them): every active feature counted, and max_feature_nodes ('none' without one)."""
    bound = graph.info.get("max_feature_nodes")
    return {"active_features": str(graph.info.get("active_features", graph.n_features)),
            "max_feature_nodes": "none" if bound is None else str(bound)}


def _read_bound(data: bytes) -> dict[str, int | None]:
    """graph.info back from graph.safetensors' header (what ``bound_of`` wrote; a file without
    it is a dense graph)."""
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}
    bound = header.get("max_feature_nodes", "none")
    return {"active_features": int(header["active_features"]) if "active_features" in header else None,
            "max_feature_nodes": None if bound == "none" else int(bound)}


def tensors(graph: Graph, pruned: Pruned) -> dict[str, torch.Tensor]:
    return {
        "adjacency": graph.adjacency, "bias": graph.bias, "target_values": graph.target_values,
        "tokens": graph.tokens.long(), "features": graph.features.long(), "activations": graph.activations,
        "logit_tokens": graph.logit_tokens.long(), "logit_probs": graph.logit_probs,
        "node_mask": pruned.node_mask, "edge_mask": pruned.edge_mask, "influence": pruned.cumulative,
    }


def write(folder: str | Path, graph: Graph, pruned: Pruned, np_graph: dict[str, Any], meta: dict[str, Any],
          page: str) -> Path:
    """Write the graph folder (every file through safeio.write_bytes: temp file, then rename)."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"saekit": {"schema_version": SCHEMA_VERSION, "kind": "attribution_graph", "version": __version__},
            **meta, "nodes": {"features": [0, graph.n_features], "errors": [graph.error_start, graph.token_start],
                              "tokens": [graph.token_start, graph.logit_start],
                              "logits": [graph.logit_start, graph.adjacency.shape[0]],
                              "n_layers": graph.n_layers, "n_pos": graph.n_pos,
                              "active_features": int(bound_of(graph)["active_features"]),
                              "max_feature_nodes": graph.info.get("max_feature_nodes"),
                              "order": "rows are targets, columns sources (circuit-tracer graph.py)"}}
    write_bytes(folder / TENSORS, save({k: v.contiguous() for k, v in tensors(graph, pruned).items()},
                                       metadata=bound_of(graph)))
    write_bytes(folder / GRAPH_JSON, json.dumps(np_graph, allow_nan=False).encode())
    write_bytes(folder / META, json.dumps(meta, indent=2, allow_nan=False).encode())
    write_bytes(folder / PAGE, page.encode())
    return folder


def read(folder: str | Path) -> tuple[Graph, Pruned, dict[str, Any]]:
    """A graph folder back: the graph, its pruning and the metadata (sizes checked)."""
    from safetensors.torch import load

    folder = Path(folder)
    meta = load_json(read_bytes(folder, META, max_bytes=MAX_META_BYTES), where=str(folder / META))
    try:
        data = read_bytes(folder, TENSORS)
        t = load(data)
        bound = _read_bound(data)
    except Exception as err:  # safetensors' own errors (SafetensorError, ...) on a bad header
        raise ArtifactFormatError(f"not a safetensors file: {err}".splitlines()[0], where=str(folder / TENSORS)) from None
    want = {"adjacency", "bias", "target_values", "tokens", "features", "activations", "logit_tokens",
            "logit_probs", "node_mask", "edge_mask", "influence"}
    if set(t) != want or not isinstance(meta, dict) or "nodes" not in meta:
        raise ArtifactFormatError(f"not a saekit graph (tensors {sorted(t)})", where=str(folder / TENSORS))
    n_layers = int(meta["nodes"]["n_layers"])
    g = Graph(tokens=t["tokens"], features=t["features"], activations=t["activations"],
              logit_tokens=t["logit_tokens"], logit_probs=t["logit_probs"], adjacency=t["adjacency"],
              bias=t["bias"], target_values=t["target_values"], n_layers=n_layers, info=bound)
    g.info["active_features"] = bound["active_features"] or g.n_features
    n = g.n_features + n_layers * g.n_pos + g.n_pos + g.n_logits
    if g.adjacency.shape != (n, n) or g.features.ndim != 2 or g.features.shape[1:] != (3,):
        raise ArtifactFormatError(f"adjacency {tuple(g.adjacency.shape)} does not fit {n} nodes",
                                  where=str(folder / TENSORS))
    return g, Pruned(t["node_mask"], t["edge_mask"], t["influence"]), meta
