"""(a) Oracle: saekit's attribution graph of a small random Llama with skip transcoders equals
circuit-tracer 0.5.0's (run in its own venv, scripts/peer_venv.sh) within 1e-4: the same
active features, the same adjacency (features, errors, tokens, logits), the same logits, the
same pruned nodes and edges, the same replacement and completeness scores; and with
max_feature_nodes below the active features, the same visited features and packaged graph."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saekit.circuits.attribution import attribute
from saekit.circuits.pruning import prune, scores
from saekit.circuits.replacement import ReplacementModel

sys.path.insert(0, str(Path(__file__).parent))
from circuit_helpers import tiny_llama, tiny_transcoders  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ct_python() -> str:
    """circuit-tracer's venv (created on first use by scripts/peer_venv.sh; offline from the
    package index)."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "peer_venv.sh"), "circuit-tracer"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return str(ROOT / out.stdout.strip().splitlines()[-1])


def _write_case(folder: Path, model, tset, tokens: list[int], logit_tokens: list[int], batch_size: int,
                max_feature_nodes: int | None = None, update_interval: int = 4) -> None:
    c = model.config
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "n_layers": c.num_hidden_layers, "d_model": c.hidden_size, "n_heads": c.num_attention_heads,
        "n_kv": c.num_key_value_heads, "d_head": c.hidden_size // c.num_attention_heads,
        "d_mlp": c.intermediate_size, "vocab": c.vocab_size, "eps": c.rms_norm_eps,
        "rope_theta": c.rope_parameters["rope_theta"], "tokens": tokens, "logit_tokens": logit_tokens,
        "batch_size": batch_size, "node_threshold": 0.8, "edge_threshold": 0.98,
        "max_feature_nodes": max_feature_nodes, "update_interval": update_interval,
    }))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    for layer in tset.layers:
        tc = tset[layer]
        t = {"W_enc": tc.W_enc.T, "W_dec": tc.W_dec, "b_enc": tc.b_enc, "b_dec": tc.b_dec}
        if tc.W_skip is not None:
            t["W_skip"] = tc.W_skip
        if "threshold" in tc.tensors:
            t["activation_function.threshold"] = tc.tensors["threshold"]
        save_file({k: v.float().contiguous() for k, v in t.items()}, folder / f"layer_{layer}.safetensors")


def _case(arch: str, n_tokens: int):
    """The small random Llama, its transcoders, the prompt and its top 4 logits."""
    model = tiny_llama(n_layers=3, d_model=16, n_heads=4, n_kv=2, d_mlp=32, vocab=24, seed=3)
    tset = tiny_transcoders(model, arch=arch, d_sae=40, seed=4)
    tokens = [0] + list(range(3, 3 + n_tokens - 1))  # token 0 plays BOS (a special id for circuit-tracer)
    rm = ReplacementModel(model, tset)
    trace = rm.trace(torch.tensor(tokens))
    logit_tokens = torch.topk(trace.logits[-1], 4).indices.tolist()
    return model, tset, tokens, rm, trace, logit_tokens


def _circuit_tracer(ct_python: str, folder: Path, model, tset, tokens, logit_tokens, batch_size: int,
                    **bound) -> dict[str, torch.Tensor]:
    _write_case(folder, model, tset, tokens, logit_tokens, batch_size, **bound)
    run = subprocess.run([ct_python, str(Path(__file__).parent / "ct_oracle.py"), str(folder)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return load_file(folder / "ct_graph.safetensors")


def _same_pruning_and_scores(graph, ct: dict[str, torch.Tensor]) -> None:
    """prune and scores on the same graph as circuit-tracer's (graph.py prune_graph, compute_graph_scores)."""
    kept = prune(graph, 0.8, 0.98)
    assert torch.equal(kept.node_mask, ct["node_mask"])
    assert torch.equal(kept.edge_mask, ct["edge_mask"])
    assert 0 < int(kept.node_mask[: graph.n_features].sum()) < graph.n_features
    torch.testing.assert_close(kept.cumulative, ct["cumulative_scores"], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(scores(graph)), ct["scores"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,n_tokens,batch_size", [("skip_transcoder", 7, 5), ("jumprelu_transcoder", 5, 64)])
def test_adjacency_equals_circuit_tracer(ct_python: str, tmp_path: Path, arch: str, n_tokens: int,
                                         batch_size: int) -> None:
    model, tset, tokens, rm, trace, logit_tokens = _case(arch, n_tokens)
    # a partial last batch (n_targets % batch_size != 0) and one batch for everything
    graph = attribute(rm, torch.tensor(tokens), logit_tokens=torch.tensor(logit_tokens), batch_size=batch_size)
    ct = _circuit_tracer(ct_python, tmp_path, model, tset, tokens, logit_tokens, batch_size)

    torch.testing.assert_close(trace.logits, ct["logits"], atol=1e-4, rtol=0)
    assert graph.n_features > 10
    assert torch.equal(graph.features, ct["active_features"].long())
    torch.testing.assert_close(graph.activations, ct["activation_values"], atol=1e-4, rtol=0)
    torch.testing.assert_close(graph.logit_probs, ct["logit_probabilities"], atol=1e-6, rtol=0)
    assert graph.adjacency.shape == ct["adjacency"].shape
    # every block of the adjacency has edges that are not all zero, and all agree
    a, b = graph.adjacency, ct["adjacency"]
    for rows, cols in ((slice(0, graph.n_features), slice(0, graph.n_features)),
                       (slice(graph.logit_start, None), slice(graph.error_start, graph.token_start)),
                       (slice(graph.logit_start, None), slice(graph.token_start, graph.logit_start))):
        assert b[rows, cols].abs().max() > 1e-2
    assert (a - b).abs().max() < 1e-4, f"max |diff| {(a - b).abs().max():.3g} (max |edge| {b.abs().max():.3g})"
    _same_pruning_and_scores(graph, ct)


@pytest.mark.parametrize("arch,n_tokens,batch_size,update_interval",
                         [("skip_transcoder", 7, 5, 2), ("jumprelu_transcoder", 5, 16, 1)])
def test_bounded_graph_equals_circuit_tracers(ct_python: str, tmp_path: Path, arch: str, n_tokens: int,
                                              batch_size: int, update_interval: int) -> None:
    """max_feature_nodes below the active features: the same features visited (in order of
    estimated influence, re-estimated every update_interval batches), the same packaged graph."""
    model, tset, tokens, rm, trace, logit_tokens = _case(arch, n_tokens)
    dense = attribute(rm, torch.tensor(tokens), logit_tokens=torch.tensor(logit_tokens), batch_size=batch_size)
    n_keep = dense.n_features // 3
    graph = attribute(rm, torch.tensor(tokens), logit_tokens=torch.tensor(logit_tokens), batch_size=batch_size,
                      max_feature_nodes=n_keep, update_interval=update_interval)
    ct = _circuit_tracer(ct_python, tmp_path, model, tset, tokens, logit_tokens, batch_size,
                         max_feature_nodes=n_keep, update_interval=update_interval)

    selected = ct["selected_features"].long()
    assert graph.n_features == len(selected) == n_keep and graph.info["active_features"] == dense.n_features
    assert torch.equal(graph.features, ct["active_features"].long()[selected])
    assert not torch.equal(graph.features, dense.features[:n_keep])  # an order of influence, not of index
    torch.testing.assert_close(graph.activations, ct["activation_values"][selected], atol=1e-4, rtol=0)
    a, b = graph.adjacency, ct["adjacency"]
    assert a.shape == b.shape == (n_keep + 4 * n_tokens + 4,) * 2
    assert b[:n_keep, :n_keep].abs().max() > 1e-2 and b[graph.logit_start:].abs().max() > 1e-2
    assert (a - b).abs().max() < 1e-4, f"max |diff| {(a - b).abs().max():.3g} (max |edge| {b.abs().max():.3g})"
    _same_pruning_and_scores(graph, ct)

    # completeness of the logit rows: the features left out reach them as a constant (bias)
    ls = graph.logit_start
    last = trace.logits[-1]
    torch.testing.assert_close(graph.target_values[ls:], last[logit_tokens] - last.mean(), atol=1e-4, rtol=0)
    torch.testing.assert_close(a[ls:].sum(1) + graph.bias[ls:], graph.target_values[ls:], atol=1e-4, rtol=0)
    assert (graph.bias[ls:] - dense.bias[dense.logit_start:]).abs().max() > 1e-2
    # a kept feature's row is the dense graph's row on the kept columns
    index = {tuple(f): i for i, f in enumerate(dense.features.tolist())}
    rows = torch.tensor([index[tuple(f)] for f in graph.features.tolist()])
    cols = torch.cat([rows, torch.arange(dense.error_start, dense.logit_start)])
    torch.testing.assert_close(a[:n_keep, :len(cols)], dense.adjacency[rows][:, cols], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["skip_transcoder", "jumprelu_transcoder"])
def test_a_bound_at_or_above_the_active_features_is_the_dense_graph(arch: str) -> None:
    _, _, tokens, rm, trace, _ = _case(arch, 6)
    dense = attribute(rm, torch.tensor(tokens), batch_size=7, trace=trace)
    for bound in (dense.n_features, dense.n_features + 50):
        g = attribute(rm, torch.tensor(tokens), batch_size=7, trace=trace, max_feature_nodes=bound)
        for name in ("features", "activations", "adjacency", "bias", "target_values", "logit_tokens"):
            assert torch.equal(getattr(g, name), getattr(dense, name)), name
