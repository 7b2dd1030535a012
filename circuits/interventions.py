"""Does the graph predict what ablating its features does? Each of the most influential feature
nodes is set to 0 in the replacement model (attention and norms frozen, errors held, downstream
transcoders re-encoding their changed inputs) and the change of the target logit (minus the mean
logit, as the logit node reads it) is compared with the graph's predictions:

- ``direct``: the edge feature -> logit, negated (exact when every MLP output is frozen:
  ``frozen`` below, circuit-tracer's ``feature_intervention`` with all layers constrained);
- ``paths``: the sum over every path of the graph from the feature to the logit, each
  downstream feature moving by the change of its pre-activation (active features stay in their
  linear range; features that switch on or off are what the graph cannot see).

``switched`` counts, per ablation, the features of other nodes that turned on or off in the
re-encoding replacement model (the ablated feature itself not counted): a diagnostic of how far
the actual run left the graph's linear regime, not part of "actual".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saekit.circuits.attribution import Graph
from saekit.circuits.pruning import influence, normalize
from saekit.circuits.replacement import ReplacementModel, Trace
from saekit.schemas import InputError


@dataclass
class AblationReport:
    nodes: list[tuple[int, int, int]]
    """(layer, position, feature) of each ablated node, most influential first."""
    direct: torch.Tensor
    paths: torch.Tensor
    actual: torch.Tensor
    """Change of the target logit in the replacement model, transcoders re-encoding."""
    frozen: torch.Tensor
    """Change with every MLP output frozen (equals ``direct``)."""
    switched: torch.Tensor
    """Features (other than the ablated one) that turned on or off in the actual run."""

    @staticmethod
    def _r(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1]) if len(a) > 1 else float("nan")

    @property
    def r_direct(self) -> float:
        return self._r(self.direct, self.actual)

    @property
    def r_paths(self) -> float:
        return self._r(self.paths, self.actual)

    def as_dict(self) -> dict:
        return {"n": len(self.nodes), "pearson_paths_vs_actual": self.r_paths,
                "pearson_direct_vs_actual": self.r_direct,
                "max_abs_frozen_minus_direct": float((self.frozen - self.direct).abs().max()) if self.nodes else 0.0,
                "mean_switched": float(self.switched.float().mean()) if self.nodes else 0.0,
                "nodes": [{"layer": l, "position": p, "feature": f, "direct": float(d), "paths": float(q),
                           "actual": float(a), "switched": int(s)} for (l, p, f), d, q, a, s in
                          zip(self.nodes, self.direct, self.paths, self.actual, self.switched)]}


def path_effects(graph: Graph, target: int) -> torch.Tensor:
    """[n_features] the graph's total effect on logit node ``target`` of removing each
    feature's output: -(sum over paths), each downstream feature moving by its pre-activation's
    change (edges out of a feature divided by its activation: the effect per unit)."""
    nf = graph.n_features
    a = graph.adjacency
    per_unit = a[:nf, :nf] / graph.activations[None, :]  # [target feature, source feature]
    to_logit = a[graph.logit_start + target, :nf] / graph.activations
    # total[k] = effect on the logit of a unit change of feature k, through every path
    total = to_logit.clone()
    for _ in range(graph.n_layers):  # features only feed later layers: n_layers rounds suffice
        total = to_logit + total @ per_unit
    return -total * graph.activations


def top_features(graph: Graph, n: int) -> list[int]:
    """Indices of the ``n`` feature nodes of most influence on the logits (circuit-tracer's
    node influence, saekit.circuits.pruning)."""
    inf = influence(normalize(graph.adjacency), graph.logit_weights())[: graph.n_features]
    return torch.argsort(inf, descending=True)[:n].tolist()


def ablate_top(rm: ReplacementModel, trace: Trace, graph: Graph, n: int = 20, target: int = 0,
               by: str = "influence") -> AblationReport:
    """Ablate each of the ``n`` top feature nodes, one at a time (see module doc): top by
    ``influence`` on the logits, or by the size of their ``direct`` edge into the target logit."""
    active = graph.info.get("active_features", graph.n_features)
    if graph.n_features < active:  # paths through the features left out are in no edge
        raise InputError(f"the graph has {graph.n_features} of {active} active features as nodes "
                         "(--max-feature-nodes): its paths cannot predict ablations; build it without the bound",
                         where="graph")
    tok = int(graph.logit_tokens[target])
    row = graph.logit_start + target

    def demeaned(logits: torch.Tensor) -> float:
        return float(logits[-1, tok] - logits[-1].mean())

    base = demeaned(rm.forward(trace))
    paths = path_effects(graph, target)
    if by == "influence":
        idx = top_features(graph, n)
    elif by == "direct":
        idx = torch.argsort(graph.adjacency[row, : graph.n_features].abs(), descending=True)[:n].tolist()
    else:
        raise ValueError(f"by must be 'influence' or 'direct', not {by!r}")
    active = [a > 0 for a in trace.acts]
    nodes, direct, via, actual, frozen, switched = [], [], [], [], [], []
    for j in idx:
        layer, pos, feat = graph.features[j].tolist()
        nodes.append((layer, pos, feat))
        direct.append(-float(graph.adjacency[row, j]))
        via.append(float(paths[j]))
        acts: list[torch.Tensor] = []
        actual.append(demeaned(rm.forward(trace, set_acts={(layer, pos, feat): 0.0}, acts_out=acts)) - base)
        flips = sum(int(((a > 0) != was).sum()) for a, was in zip(acts, active))
        switched.append(flips - 1)  # the ablated feature itself turned off
        frozen.append(demeaned(rm.forward(trace, set_acts={(layer, pos, feat): 0.0}, propagate=False)) - base)
    t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return AblationReport(nodes, t(direct), t(via), t(actual), t(frozen), torch.tensor(switched))
