"""Graph files: the Neuronpedia JSON validates against Neuronpedia's own graph schema, node ids
are unique and every link joins two listed nodes, feature nodes carry their cards' explanations,
the safetensors + JSON round-trip, and the static page renders the graph in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import torch

from saekit.circuits import files
from saekit.circuits.build import build_graph
from saekit.schemas import InputError

sys.path.insert(0, str(Path(__file__).parent))
from circuit_helpers import tiny_llama, tiny_tokenizer, tiny_transcoders  # noqa: E402

SCHEMA = json.loads((Path(__file__).parent / "data" / "neuronpedia-graph-schema.json").read_text())
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    model = tiny_llama(n_layers=3)
    tset = tiny_transcoders(model, arch="skip_transcoder")
    cards = {(1, f): {"annotations": [{"label": "lbl", "description": f"explained feature {f}"}]} for f in range(48)}
    out = tmp_path_factory.mktemp("graph") / "g"
    res = build_graph("w3 w5 w7 w2 w9", tset, model, tiny_tokenizer(), out=out, batch_size=9, cards=cards,
                      card_url="../cards/layer_{layer}.html#latent={feature}", transcoders_ref="tiny-set@v1")
    return res, out


def test_graph_json_validates_against_neuronpedias_schema(built) -> None:
    res, out = built
    doc = json.loads((out / files.GRAPH_JSON).read_text())
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(doc)
    ids = [n["node_id"] for n in doc["nodes"]]
    assert len(ids) == len(set(ids))
    assert all(link["source"] in ids and link["target"] in ids for link in doc["links"])
    kinds = {n["feature_type"] for n in doc["nodes"]}
    assert {"cross layer transcoder", "embedding", "logit"} <= kinds
    assert sum(n["feature_type"] == "embedding" for n in doc["nodes"]) == res.graph.n_pos
    assert doc["metadata"]["prompt_tokens"] == ["<s>", "w3", "w5", "w7", "w2", "w9"]
    assert "max_feature_nodes" not in doc["metadata"]["generation_settings"]  # every active feature a node
    # a feature node: circuit-tracer's id and Cantor number, its card's explanation as clerp
    f = next(n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder" and n["layer"] == "1")
    layer, feat, pos = map(int, f["node_id"].split("_"))
    assert f["feature"] == (layer + feat) * (layer + feat + 1) // 2 + feat
    assert f["clerp"] == f"explained feature {feat}" and f["vis_link"] == f"../cards/layer_1.html#latent={feat}"
    g0 = next(n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder" and n["layer"] == "0")
    assert g0["clerp"] == "" and g0["card"]["has_card"] is False
    top = next(n for n in doc["nodes"] if n["feature_type"] == "logit" and n["is_target_logit"])
    assert top["node_id"] == f"4_{int(res.graph.logit_tokens[0])}_5"
    # a link's weight is the adjacency's entry (target row, source column)
    index = {node_id: i for i, node_id in enumerate(files.node_ids(res.graph))}
    link = max(doc["links"], key=lambda l: abs(l["weight"]))
    assert link["weight"] == pytest.approx(float(res.graph.adjacency[index[link["target"]], index[link["source"]]]))


def test_graph_files_round_trip_without_pickle(built) -> None:
    res, out = built
    assert sorted(p.name for p in out.iterdir()) == sorted([files.GRAPH_JSON, files.TENSORS, files.META, files.PAGE])
    g, pruned, meta = files.read(out)
    assert torch.equal(g.adjacency, res.graph.adjacency) and torch.equal(g.features, res.graph.features)
    assert torch.equal(pruned.edge_mask, res.pruned.edge_mask)
    assert g.info == {"active_features": g.n_features, "max_feature_nodes": None}
    assert meta["saekit"]["kind"] == "attribution_graph" and meta["transcoders"]["ref"] == "tiny-set@v1"
    assert meta["scores"]["replacement"] == pytest.approx(res.replacement_score)
    assert 0 < res.replacement_score < 1 and 0 < res.completeness_score < 1
    lo, hi = meta["nodes"]["logits"]
    assert hi - lo == g.n_logits and hi == g.adjacency.shape[0]
    (out / "graph.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(InputError, match="not a saekit graph"):
        files.read(out)
    (out / "graph.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(InputError, match="not a safetensors file"):
        files.read(out)


def test_a_bounded_graph_validates_and_round_trips(tmp_path: Path) -> None:
    """With max_feature_nodes the files hold the packaged graph (visited features only), valid
    for Neuronpedia's schema, and record the bound and the active features."""
    model = tiny_llama(n_layers=3)
    tset = tiny_transcoders(model, arch="skip_transcoder")
    res = build_graph("w3 w5 w7 w2 w9", tset, model, tiny_tokenizer(), out=tmp_path / "g", batch_size=9,
                      max_feature_nodes=20, update_interval=2)
    doc = json.loads((tmp_path / "g" / files.GRAPH_JSON).read_text())
    jsonschema.Draft7Validator(SCHEMA).validate(doc)
    assert doc["metadata"]["generation_settings"] == {"max_n_logits": 10, "desired_logit_prob": 0.95,
                                                      "batch_size": 9, "max_feature_nodes": 20, "update_interval": 2}
    ids = set(files.node_ids(res.graph))
    assert all(n["node_id"] in ids for n in doc["nodes"])
    g, pruned, meta = files.read(tmp_path / "g")
    assert g.n_features == 20 < g.info["active_features"] == meta["counts"]["active_features"]
    assert g.info["max_feature_nodes"] == meta["settings"]["max_feature_nodes"] == 20
    assert torch.equal(g.adjacency, res.graph.adjacency) and torch.equal(pruned.node_mask, res.pruned.node_mask)
    with pytest.raises(InputError, match="update_interval must be >= 1"):
        build_graph("w1 w2", tset, model, tiny_tokenizer(), update_interval=0, out=tmp_path / "x")


def test_bad_settings_are_refused_before_any_work(tmp_path: Path) -> None:
    model = tiny_llama()
    tset = tiny_transcoders(model)
    with pytest.raises(InputError, match="node_threshold"):
        build_graph("w1 w2", tset, model, tiny_tokenizer(), node_threshold=1.5, out=tmp_path / "x")
    with pytest.raises(InputError, match="batch_size"):
        build_graph("w1 w2", tset, model, tiny_tokenizer(), batch_size=0, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/setup.sh installs it)")
def test_page_renders_the_pruned_graph_offline(built) -> None:
    res, out = built
    page = out / files.PAGE
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text) and "fetch(" not in text
    doc = json.loads((out / files.GRAPH_JSON).read_text())
    feat = next(n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder" and n["layer"] == "1")
    r = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--virtual-time-budget=3000", "--dump-dom", f"{page.as_uri()}#node={feat['node_id']}"],
        capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    svg = dom[dom.index('<svg id="graph"'):dom.index("</svg>")]
    assert len(re.findall(r'class="node ', svg)) == len(doc["nodes"])
    assert len(re.findall(r'class="edge"', svg)) == len(doc["links"])
    assert f'{len(doc["nodes"])} nodes, {len(doc["links"])} edges' in dom
    # the clicked node's panel: its card's explanation, activation and card link
    assert f'<h2 id="node-title">explained feature {feat["feature"] and feat["node_id"].split("_")[1]}</h2>' in dom
    assert f'<b id="node-act">{feat["activation"]:.3f}</b>' in dom
    assert 'id="card-link" href="../cards/layer_1.html#latent=' in dom
    assert re.search(r'class="node feature sel" data-id="' + re.escape(feat["node_id"]), dom)
