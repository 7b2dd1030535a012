"""Pruning by cumulative influence, and the replacement and completeness scores, as
circuit-tracer 0.5.0 defines them (``circuit_tracer/graph.py``; each function below names the
one it follows). Influence is computed on the absolute adjacency with each row normalised to
sum 1, propagated from the logits weighted by their probabilities.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from saekit.circuits.attribution import Graph
from saekit.schemas import InputError


def normalize(adjacency: torch.Tensor) -> torch.Tensor:
    """|A| with rows summing to 1 (graph.py ``normalize_matrix``)."""
    a = adjacency.abs()
    return a / a.sum(dim=1, keepdim=True).clamp(min=1e-10)


def influence(normalized: torch.Tensor, logit_weights: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """w A + w A^2 + ... for the logit weights w (graph.py ``compute_influence``): the graph
    is acyclic, so the series ends."""
    current = logit_weights @ normalized
    total = current.clone()
    for _ in range(max_iter):
        if not current.any():
            return total
        current = current @ normalized
        total += current
    raise RuntimeError(f"influence did not converge in {max_iter} iterations (is the graph acyclic?)")


def find_threshold(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """The score above which the highest scores hold ``fraction`` of the total
    (graph.py ``find_threshold``)."""
    ordered = torch.sort(scores, descending=True).values
    cumulative = torch.cumsum(ordered, dim=0) / ordered.sum()
    i = min(int(torch.searchsorted(cumulative, fraction).item()), len(cumulative) - 1)
    return ordered[i]


class Pruned(NamedTuple):
    node_mask: torch.Tensor
    """[n_nodes] nodes kept (token and logit nodes always)."""
    edge_mask: torch.Tensor
    """[n_nodes, n_nodes] edges kept."""
    cumulative: torch.Tensor
    """[n_nodes] each node's cumulative influence share, in order of influence (the
    ``influence`` field Neuronpedia prunes with)."""


def prune(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """Keep the nodes, then the edges, that carry the given fractions of the influence on the
    logits; then drop feature and error nodes left without an outgoing edge and feature nodes
    without an incoming one, until nothing changes (graph.py ``prune_graph``)."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise InputError(f"{name} must be between 0 and 1, got {v}", where=name)
    a = graph.adjacency
    w = graph.logit_weights()
    keep_always = graph.n_pos + graph.n_logits
    node_inf = influence(normalize(a), w)
    node_mask = node_inf >= find_threshold(node_inf, node_threshold)
    node_mask[-keep_always:] = True

    pruned = a.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    norm = normalize(pruned)  # graph.py compute_edge_influence
    edge_scores = norm * (influence(norm, w) + w)[:, None]
    edge_mask = edge_scores >= find_threshold(edge_scores.flatten(), edge_threshold)

    nf = graph.n_features
    while True:
        old = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:-keep_always] &= edge_mask[:, :-keep_always].any(0)  # feature/error: an outgoing edge
        node_mask[:nf] &= edge_mask[:nf].any(1)  # feature: an incoming edge
        if torch.equal(node_mask, old):
            break

    ordered, order = torch.sort(node_inf, descending=True)
    cumulative = torch.zeros_like(node_inf)
    cumulative[order] = torch.cumsum(ordered, dim=0) / ordered.sum()
    return Pruned(node_mask, edge_mask, cumulative)


def scores(graph: Graph) -> tuple[float, float]:
    """(replacement score, completeness score) (graph.py ``compute_graph_scores``).

    Replacement: of the influence tokens and errors have on the logits, the share of the
    tokens'. Completeness: the share of each node's normalised input that does not come from
    error nodes, averaged with weights = the node's influence plus its logit weight."""
    w = graph.logit_weights()
    norm = normalize(graph.adjacency)
    node_inf = influence(norm, w)
    e0, e1 = graph.error_start, graph.token_start
    token_inf = node_inf[e1:graph.logit_start].sum()
    error_inf = node_inf[e0:e1].sum()
    replacement = token_inf / (token_inf + error_inf)
    non_error = 1 - norm[:, e0:e1].sum(dim=-1)
    out_inf = node_inf + w
    completeness = (non_error * out_inf).sum() / out_inf.sum()
    return float(replacement), float(completeness)
