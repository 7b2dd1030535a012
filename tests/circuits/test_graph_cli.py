"""``saekit graph`` and ``saekit.graph``: a set folder and a model folder on disk (a small random
Llama saved as safetensors, its tokenizer beside it), cards from a check folder, one-line
errors with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import saekit
from saekit.circuits import files

sys.path.insert(0, str(Path(__file__).parent))
from circuit_helpers import tiny_llama, tiny_tokenizer, tiny_transcoders  # noqa: E402


def _run(*args: str) -> subprocess.CompletedProcess:
    """The installed command, in its own process."""
    return subprocess.run([sys.executable, "-m", "saekit", *args], capture_output=True, text=True, timeout=300)


def _main(capsys, *args: str) -> tuple[int, str]:
    """The real entry point (saekit.cli.main) in this process: exit code, stderr."""
    from saekit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return exc.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory):
    from saekit.registry.transcoder_set import save_set
    from saekit.schemas import SAERef
    from saekit.schemas.card import FeatureCard

    root = tmp_path_factory.mktemp("cli")
    model = tiny_llama(n_layers=2, seed=5)
    model.save_pretrained(root / "model", safe_serialization=True)
    tiny_tokenizer().save_pretrained(root / "model")
    tset = tiny_transcoders(model, arch="jumprelu_skip_transcoder", seed=6, model_name=str(root / "model"))
    save_set(tset, root / "set")
    # cards as 'saekit check' of a set writes them: layer_{i}/feature_cards.jsonl
    for layer in tset.layers:
        (root / "checked" / f"layer_{layer}").mkdir(parents=True)
        lines = [FeatureCard(sae=SAERef(name=f"set/layer_{layer}", d_sae=48), index=i,
                             annotations=[{"description": f"L{layer} feature {i} explained"}]).model_dump_json()
                 for i in range(48)]
        (root / "checked" / f"layer_{layer}" / "feature_cards.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_cli_writes_a_graph_with_labelled_features(on_disk: Path) -> None:
    out = on_disk / "g"
    r = _run("graph", "w3 w5 w7 w2", "--transcoders", str(on_disk / "set"), "--model", str(on_disk / "model"),
             "--out", str(out), "--max-logits", "3", "--batch-size", "5", "--cards", str(on_disk / "checked"),
             "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["counts"]["features"] > 0 and 0 < data["scores"]["replacement"] <= 1
    assert 1 <= len(data["logits"]) <= 3
    top = data["top_features"][0]
    assert top["label"] == f"L{top['layer']} feature {top['feature']} explained"
    g, pruned, meta = files.read(out)
    assert meta["settings"]["batch_size"] == 5 and meta["model"]["id"] == str(on_disk / "model")
    assert meta["transcoders"]["sha256"] and len(meta["token_ids"]) == 5
    doc = json.loads((out / files.GRAPH_JSON).read_text())
    assert all(n["clerp"] for n in doc["nodes"])
    # the same graph from Python, on the set loaded in memory
    res = saekit.graph("w3 w5 w7 w2", saekit.load(on_disk / "set"), model=str(on_disk / "model"), max_n_logits=3,
                       batch_size=64)
    assert res.folder is None
    assert (res.graph.adjacency - g.adjacency).abs().max() < 1e-5


def test_cli_bounds_the_feature_nodes_and_the_files_record_it(on_disk: Path) -> None:
    out = on_disk / "bounded"
    r = _run("graph", "w3 w5 w7 w2", "--transcoders", str(on_disk / "set"), "--model", str(on_disk / "model"),
             "--out", str(out), "--max-logits", "3", "--batch-size", "4", "--max-feature-nodes", "9")
    assert r.returncode == 0, r.stderr
    g, pruned, meta = files.read(out)
    active = meta["counts"]["active_features"]
    assert f"graph of 5 tokens: {active} active features (9 feature nodes, --max-feature-nodes)" in r.stdout
    assert g.n_features == meta["counts"]["features"] == 9 < active
    assert g.info == {"active_features": active, "max_feature_nodes": 9}
    assert meta["settings"]["max_feature_nodes"] == 9 and meta["settings"]["update_interval"] == 4
    assert meta["nodes"]["max_feature_nodes"] == 9 and meta["nodes"]["active_features"] == active
    doc = json.loads((out / files.GRAPH_JSON).read_text())
    assert doc["metadata"]["generation_settings"]["max_feature_nodes"] == 9
    assert sum(n["feature_type"] == "cross layer transcoder" for n in doc["nodes"]) <= 9
    assert pruned.node_mask.shape == (g.adjacency.shape[0],) and g.adjacency.shape[0] == 9 + 2 * 5 + 5 + g.n_logits
    # the same graph from Python
    res = saekit.graph("w3 w5 w7 w2", on_disk / "set", model=str(on_disk / "model"), max_n_logits=3,
                       batch_size=4, max_feature_nodes=9)
    assert torch.equal(res.graph.features, g.features)
    assert (res.graph.adjacency - g.adjacency).abs().max() < 1e-5


def test_cli_errors_are_one_line_with_exit_2(on_disk: Path, real_sae_dir: Path, capsys) -> None:
    base = ("--model", str(on_disk / "model"), "--out", str(on_disk / "bad"))
    code, err = _main(capsys, "graph", "w1 w2", "--transcoders", str(real_sae_dir), *base)
    assert code == 2 and "not a transcoder set" in err and len(err.strip().splitlines()) == 1, err
    code, err = _main(capsys, "graph", "w1 w2", "--transcoders", str(on_disk / "set"), "--node-threshold", "1.5", *base)
    assert code == 2 and "node-threshold" in err, err
    code, err = _main(capsys, "graph", "", "--transcoders", str(on_disk / "set"), *base)
    assert code == 2 and "prompt is empty" in err, err
    code, err = _main(capsys, "graph", "w1 w2", "--transcoders", str(on_disk / "set"), "--max-feature-nodes", "0",
                      *base)
    assert code == 2 and "max-feature-nodes" in err, err
    code, err = _main(capsys, "graph", "w1", "--transcoders", str(on_disk / "nope"), *base)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    # the model does not fit the set (other width): refused before anything is written
    other = tiny_llama(n_layers=2, d_model=24)
    other.save_pretrained(on_disk / "model24", safe_serialization=True)
    tiny_tokenizer().save_pretrained(on_disk / "model24")
    code, err = _main(capsys, "graph", "w1 w2", "--transcoders", str(on_disk / "set"), "--model",
                      str(on_disk / "model24"), "--out", str(on_disk / "bad"))
    assert code == 2 and "needs model.layers.0.mlp" in err, err
    assert not (on_disk / "bad").exists()
