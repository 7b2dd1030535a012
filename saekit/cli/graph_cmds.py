"""``saekit graph``: the attribution graph of a prompt over a transcoder set (saekit.circuits).

Heavy imports (torch, transformers) happen inside the command, never at module import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from saekit.cli.app import JSON_OPTION, app, emit


@app.command("graph")
def graph_cmd(
    prompt: str = typer.Argument(..., help="The prompt whose next token is attributed."),
    transcoders: str = typer.Option(..., "--transcoders", help="Transcoder set: NAME@ALIAS, NAME/VERSION or a folder."),
    out: Path = typer.Option(..., "--out", help="Folder for graph.json, graph.safetensors, graph-meta.json, index.html."),
    max_logits: int = typer.Option(10, "--max-logits", min=1, help="Most logit nodes (top tokens to 95% probability)."),
    node_threshold: float = typer.Option(0.8, "--node-threshold", min=0.0, max=1.0,
                                         help="Keep the nodes holding this share of the influence."),
    edge_threshold: float = typer.Option(0.98, "--edge-threshold", min=0.0, max=1.0,
                                         help="Keep the edges holding this share of the influence."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Targets per backward pass."),
    max_feature_nodes: Optional[int] = typer.Option(
        None, "--max-feature-nodes", min=1, help="At most N feature nodes: the features of most estimated influence "
        "on the logits (circuit-tracer's max_feature_nodes); memory and time then grow with N, not with every "
        "active feature (default: every active feature a node)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model (default: the set's, SmolLM2-135M-Instruct)."),
    cards: Optional[Path] = typer.Option(None, "--cards", help="Folder with layer_{i}/feature_cards.jsonl (as "
                                         "'saekit check' of the set writes); labels feature nodes."),
    card_url: Optional[str] = typer.Option(None, "--card-url", help="Link of a feature node's card, with {layer} "
                                           "and {feature} (e.g. 'browser/index.html#latent=layer_{layer}:{feature}')."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Attribution graph of PROMPT: direct effects between transcoder features, errors, tokens and the top logits, pruned by influence."""
    from saekit.circuits.build import graph
    from saekit.circuits.files import GRAPH_JSON, PAGE

    res = graph(prompt, transcoders, model=model, cards=cards, out=out, max_n_logits=max_logits,
                node_threshold=node_threshold, edge_threshold=edge_threshold, batch_size=batch_size,
                max_feature_nodes=max_feature_nodes, card_url=card_url)
    m = res.meta
    top = sorted((n for n in res.neuronpedia["nodes"] if n["feature_type"] == "cross layer transcoder"),
                 key=lambda n: n["influence"])[:5]
    data = {"folder": str(res.folder), "scores": m["scores"], "counts": m["counts"], "logits": m["logits"],
            "timings_s": m["timings_s"], "top_features": [
                {"node_id": n["node_id"], "layer": int(n["layer"]), "position": n["ctx_idx"],
                 "feature": int(n["node_id"].split("_")[1]), "activation": n["activation"], "label": n["clerp"]}
                for n in top]}
    c = m["counts"]
    bounded = f" ({c['features']} feature nodes, --max-feature-nodes)" if c["features"] < c["active_features"] else ""
    lines = [f"graph of {len(m['prompt_tokens'])} tokens: {c['active_features']} active features{bounded}, "
             f"{c['kept_features']} kept ({c['kept_nodes']} nodes, {c['kept_edges']} edges)",
             f"replacement score {m['scores']['replacement']:.3f}, completeness score {m['scores']['completeness']:.3f}",
             "top logits: " + ", ".join(f"{x['token']!r} {x['prob']:.3f}" for x in m["logits"][:5])]
    lines += [f"  L{d['layer']} #{d['feature']} at {m['prompt_tokens'][d['position']]!r}: act {d['activation']:.3f}"
              + (f"  {d['label']}" if d["label"] else "") for d in data["top_features"]]
    lines.append(f"wrote {res.folder / GRAPH_JSON} and {res.folder / PAGE}")
    emit(data, json_out, lines)
