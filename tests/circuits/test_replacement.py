"""The replacement model and the maths of the edges on small random Llamas: outputs equal the
real model's, (c) completeness (edges into each logit + constant bias = that logit), and each
feature's direct effect equals the change of the logits when it is ablated with every MLP
output frozen."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from saekit.circuits.attribution import attribute
from saekit.circuits.replacement import ReplacementModel
from saekit.kernels.transcoder import TranscoderSet
from saekit.schemas import InputError

sys.path.insert(0, str(Path(__file__).parent))
from circuit_helpers import tiny_llama, tiny_transcoders  # noqa: E402

CASES = [  # arch, tokens, batch size, model options (layers: the set covers only these)
    ("skip_transcoder", [0, 5, 7, 3, 9, 2], 7, {}),
    ("topk_transcoder", [0, 5, 7, 3, 9, 2, 11], 4, {"n_layers": 4, "layers": [1, 2]}),
    ("topk_skip_transcoder", [1, 2, 3, 4, 5, 6, 7, 8, 9], 16, {"n_kv": 4, "tie": True}),
    ("jumprelu_transcoder", [4, 4, 4], 1, {"n_layers": 3}),
]


def _setup(arch, opts):
    opts = dict(opts)
    layers = opts.pop("layers", None)
    model = tiny_llama(**opts)
    tset = tiny_transcoders(model, arch=arch)
    if layers is not None:
        tset = TranscoderSet({i: tset[i] for i in layers})
    return model, ReplacementModel(model, tset)


@pytest.mark.parametrize("arch,tokens,batch,opts", CASES)
def test_replacement_outputs_equal_the_real_model(arch, tokens, batch, opts) -> None:
    model, rm = _setup(arch, opts)
    trace = rm.trace(torch.tensor(tokens))
    real = model(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(trace.logits, real, atol=1e-4, rtol=0)
    torch.testing.assert_close(rm.forward(trace), real, atol=1e-4, rtol=0)
    torch.testing.assert_close(rm.forward(trace, propagate=False), real, atol=1e-4, rtol=0)
    # the transcoders reconstruct badly (random): the error terms are what makes it exact
    assert max(e.abs().max() for e in trace.errors) > 0.1


@pytest.mark.parametrize("arch,tokens,batch,opts", CASES)
def test_completeness_and_direct_effects(arch, tokens, batch, opts) -> None:
    model, rm = _setup(arch, opts)
    trace = rm.trace(torch.tensor(tokens))
    graph = attribute(rm, torch.tensor(tokens), batch_size=batch, max_n_logits=3, desired_logit_prob=0.99)
    logits = torch.arange(graph.logit_start, graph.adjacency.shape[0])
    lt = graph.logit_tokens
    demeaned = trace.logits[-1, lt] - trace.logits[-1].mean()
    # (c) completeness: edges into each logit node + its constant terms = that (demeaned) logit
    total = graph.adjacency[logits].sum(1) + graph.bias[logits]
    torch.testing.assert_close(total, demeaned, atol=1e-4, rtol=0)
    assert graph.adjacency[logits].abs().sum() > 1.0 and graph.bias[logits].abs().max() > 1e-3
    # ... and into each feature: its pre-activation minus b_enc
    feats = torch.arange(graph.n_features)
    pre = torch.stack([trace.mlp_in[l][p] @ rm.transcoders[l].W_enc[:, f] for l, p, f in graph.features.tolist()])
    torch.testing.assert_close(graph.adjacency[feats].sum(1) + graph.bias[feats], pre, atol=1e-4, rtol=1e-5)
    # direct effects: ablating feature j with every MLP output frozen moves logit t by -A[t, j]
    assert graph.n_features > 0
    assert set(graph.features[:, 0].tolist()) == set(rm.transcoders.layers)
    for j in range(0, graph.n_features, max(1, graph.n_features // 12)):
        layer, pos, f = graph.features[j].tolist()
        out = rm.forward(trace, set_acts={(layer, pos, f): 0.0}, propagate=False)
        change = (out[-1, lt] - out[-1].mean()) - demeaned
        torch.testing.assert_close(change, -graph.adjacency[logits, j], atol=1e-4, rtol=1e-4)


def test_refuses_a_set_that_does_not_fit_the_model() -> None:
    model = tiny_llama(n_layers=2)
    other = tiny_llama(n_layers=3)
    with pytest.raises(InputError, match="covers layers"):
        ReplacementModel(model, tiny_transcoders(other))
    wide = tiny_llama(d_model=24, n_layers=2)
    with pytest.raises(InputError, match="needs model.layers.0.mlp"):
        ReplacementModel(model, tiny_transcoders(wide))


def test_an_adjacency_too_large_is_refused_with_one_line(monkeypatch) -> None:
    from saekit.circuits import attribution

    model = tiny_llama()
    rm = ReplacementModel(model, tiny_transcoders(model))
    monkeypatch.setattr(attribution, "MAX_ADJACENCY_BYTES", 1000)
    with pytest.raises(InputError, match="active features make a .* adjacency .* use a shorter prompt or bound "
                                         "the feature nodes \\(--max-feature-nodes\\)"):
        attribute(rm, torch.tensor([0, 1, 2, 3]))


def test_a_bound_on_feature_nodes_is_what_the_size_check_counts(monkeypatch) -> None:
    """With max_feature_nodes the refusal counts (N + logits) x sources rows plus the packaged
    graph, not the dense adjacency: a bound lets through what the dense graph cannot, and a
    bound too high is refused with what to lower."""
    from saekit.circuits import attribution

    model = tiny_llama()
    rm = ReplacementModel(model, tiny_transcoders(model))
    tokens = torch.tensor([0, 1, 2, 3, 4, 5])
    dense = attribute(rm, tokens, logit_tokens=torch.tensor([1, 2]))
    n_other = dense.adjacency.shape[0] - dense.n_features  # errors, tokens, logits
    n_src = dense.adjacency.shape[0] - 2
    bounded_bytes = (4 + 2) * n_src * 4 + (4 + n_other) ** 2 * 4
    assert bounded_bytes < dense.adjacency.numel() * 4
    monkeypatch.setattr(attribution, "MAX_ADJACENCY_BYTES", bounded_bytes)
    with pytest.raises(InputError, match="use a shorter prompt or bound"):
        attribute(rm, tokens, logit_tokens=torch.tensor([1, 2]))
    g = attribute(rm, tokens, logit_tokens=torch.tensor([1, 2]), max_feature_nodes=4)
    assert g.n_features == 4 and g.adjacency.shape == (4 + n_other,) * 2
    with pytest.raises(InputError, match=r"max_feature_nodes: 5 of \d+ active features need 7 x \d+ rows and a \d+ x \d+ graph "
                                         r".*; lower --max-feature-nodes or use a shorter prompt"):
        attribute(rm, tokens, logit_tokens=torch.tensor([1, 2]), max_feature_nodes=5)
    with pytest.raises(InputError, match="max_feature_nodes must be >= 1"):
        attribute(rm, tokens, max_feature_nodes=0)


def test_ablations_refuse_a_graph_with_features_left_out() -> None:
    """Under --max-feature-nodes the features left out are in the bias, not in any path: the
    ablation check refuses such a graph rather than predict without them; bounded at or above
    the active features, it runs."""
    from saekit.circuits.interventions import ablate_top

    model, rm = _setup("skip_transcoder", {})
    tokens = torch.tensor([0, 5, 7, 3, 9, 2])
    trace = rm.trace(tokens)
    full = attribute(rm, tokens, batch_size=7, max_n_logits=2, desired_logit_prob=0.99)
    bounded = attribute(rm, tokens, batch_size=7, max_n_logits=2, desired_logit_prob=0.99,
                        max_feature_nodes=full.n_features // 2)
    with pytest.raises(InputError, match="max-feature-nodes"):
        ablate_top(rm, trace, bounded, n=3)
    report = ablate_top(rm, trace, full, n=3)
    torch.testing.assert_close(report.frozen, report.direct, atol=1e-4, rtol=1e-3)
