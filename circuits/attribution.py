"""Direct-effect edges of the local replacement model, by batched backward passes.

Nodes, in circuit-tracer's order (``circuit_tracer/graph.py`` Graph docstring): active
transcoder features (sorted by layer, position, feature), error nodes (layer-major:
``layer * n_pos + pos``), token embeddings (one per position), logits (most probable first).
``adjacency[t, s]`` is the direct effect of source s on target t: rows are targets, columns
sources. A feature as a source writes ``a_f * W_dec[f]`` into the MLP output of its layer and
position; an error node writes its error vector there; a token node writes its embedding. A
feature as a target reads its pre-activation through ``W_enc[:, f]`` from the MLP input; a
logit reads the final normalised residual at the last position through its unembedding column
minus the mean column over the vocabulary (circuit-tracer ``attribution/targets.py``
``AttributionTargets._compute_logit_vecs``). One backward pass per batch of targets, through
the frozen (linear) replacement model, gives one row per target (circuit-tracer
``attribution/context_transformerlens.py`` ``AttributionContext.compute_batch``).

With ``max_feature_nodes`` N only N features are nodes: the ones circuit-tracer's
``attribute(max_feature_nodes=N)`` visits (``attribution/attribute.py``), in order of their
influence on the logits estimated from the rows computed so far. Rows then exist for those N
and the logits only, so memory is O((N + n_logits) x n_sources), not O(n_nodes^2).

What no node writes (the transcoders' b_dec, position 0's MLP outputs, attention biases, the
features a bound leaves out) reaches each target as a constant: ``bias[t]``;
``adjacency[t].sum() + bias[t]`` equals the target's input (a logit's value minus the mean
logit).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saekit.circuits.replacement import ReplacementModel, Trace
from saekit.schemas import InputError

DEFAULT_MAX_LOGITS = 10
DEFAULT_LOGIT_PROB = 0.95  # circuit-tracer attribute(desired_logit_prob=0.95)
DEFAULT_BATCH_SIZE = 64
DEFAULT_UPDATE_INTERVAL = 4  # circuit-tracer attribute(update_interval=4)
MAX_ADJACENCY_BYTES = 4 << 30  # float32 adjacency (+ rows with a bound); pruning holds a few copies of it


@dataclass
class Graph:
    """An attribution graph over one prompt (circuit-tracer's node order); ``info`` records
    active_features, max_feature_nodes and update_interval."""

    tokens: torch.Tensor
    """[n_pos] prompt token ids."""
    features: torch.Tensor
    """[n_features, 3] (layer, position, feature index) of every feature node: every active
    feature, or the ones visited under ``max_feature_nodes`` (``info['active_features']``
    counts them all)."""
    activations: torch.Tensor
    """[n_features] their activations."""
    logit_tokens: torch.Tensor
    """[n_logits] vocabulary ids of the logit nodes."""
    logit_probs: torch.Tensor
    """[n_logits] their probabilities at the last position."""
    adjacency: torch.Tensor
    """[n_nodes, n_nodes] direct effects, rows targets, columns sources."""
    bias: torch.Tensor
    """[n_nodes] constant input of each target (0 for sources that read nothing)."""
    target_values: torch.Tensor
    """[n_nodes] each target's input in the replacement model: feature pre-activation minus
    b_enc, logit minus the mean logit (0 for error and token nodes)."""
    n_layers: int
    info: dict = field(default_factory=dict)

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_logits(self) -> int:
        return int(self.logit_tokens.shape[0])

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    def logit_weights(self) -> torch.Tensor:
        """[n_nodes] the logit probabilities on the logit nodes, 0 elsewhere (circuit-tracer
        ``graph.py`` prune_graph / compute_graph_scores)."""
        w = torch.zeros(self.adjacency.shape[0])
        w[self.logit_start:] = self.logit_probs
        return w


def select_logits(logits: torch.Tensor, max_n_logits: int, desired_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The most probable tokens until their cumulative probability reaches ``desired_prob``,
    at most ``max_n_logits`` (circuit-tracer ``attribution/targets.py``
    ``AttributionTargets._from_salient``)."""
    probs = torch.softmax(logits.float(), dim=-1)
    top_p, top_idx = torch.topk(probs, min(max_n_logits, probs.shape[0]))
    cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0), desired_prob)) + 1
    return top_idx[:cutoff], top_p[:cutoff]


def active_features(trace: Trace) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, 3] (layer, pos, feature) of every active feature in lexicographic order, as
    circuit-tracer's coalesced sparse activation matrix, and [n] their activations."""
    found = []
    for layer, acts in enumerate(trace.acts):
        nz = torch.nonzero(acts)
        found.append(torch.cat([torch.full((len(nz), 1), layer), nz], 1))
    features = torch.cat(found)
    activations = torch.stack([trace.acts[l][p, f] for l, p, f in features.tolist()]) if len(features) \
        else torch.zeros(0)
    return features, activations


def attribute(
    rm: ReplacementModel,
    tokens: torch.Tensor,
    *,
    max_n_logits: int = DEFAULT_MAX_LOGITS,
    desired_logit_prob: float = DEFAULT_LOGIT_PROB,
    logit_tokens: torch.Tensor | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    trace: Trace | None = None,
    max_feature_nodes: int | None = None,
    update_interval: int = DEFAULT_UPDATE_INTERVAL,
) -> Graph:
    """The attribution graph of ``tokens`` [n_pos]: every active feature a node, or with
    ``max_feature_nodes`` N below the number of active features only the N features visited
    in order of their estimated influence on the logits (see ``_visit_by_influence``); what
    the other active features write then reaches each target as part of its bias."""
    for name, v in (("max_feature_nodes", max_feature_nodes), ("update_interval", update_interval)):
        if v is not None and v < 1:
            raise InputError(f"{name} must be >= 1, got {v}", where=name)
    trace = trace if trace is not None else rm.trace(tokens)
    features, activations = active_features(trace)
    logit_tokens, logit_probs = _logit_targets(trace, logit_tokens, max_n_logits, desired_logit_prob)
    W_U = rm.model.lm_head.weight.float()
    logit_vecs = W_U[logit_tokens] - W_U.mean(0, keepdim=True)  # [n_logits, d]
    n_active, n_logits = len(features), len(logit_tokens)
    n_keep = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)
    check_size(n_active, n_keep, rm.n_layers * trace.n_pos + trace.n_pos, n_logits)

    with torch.enable_grad():
        solver = _RowSolver(rm, trace, features, activations, batch_size)
        if n_keep == n_active:
            kept, adjacency = torch.arange(n_active), _dense_adjacency(solver, logit_vecs)
        else:  # circuit-tracer attribute.py _run_attribution, phases 3-5
            kept, adjacency, left_out = _bounded_adjacency(solver, logit_vecs, logit_probs, n_keep, update_interval)

    bias, values = _constants(rm, trace, solver, kept, logit_vecs, adjacency.shape[0])
    if n_keep < n_active:
        bias += left_out
    return Graph(
        tokens=trace.tokens.clone(),
        features=features[kept],
        activations=activations[kept],
        logit_tokens=logit_tokens,
        logit_probs=logit_probs,
        adjacency=adjacency,
        bias=bias,
        target_values=values,
        n_layers=rm.n_layers,
        info={"active_features": n_active, "max_feature_nodes": max_feature_nodes,
              "update_interval": update_interval},
    )


def _logit_targets(trace: Trace, logit_tokens, max_n_logits: int, desired_prob: float):
    """(token ids, probabilities) of the logit nodes: the given tokens, else the salient ones."""
    last_logits = trace.logits[-1]
    if logit_tokens is None:
        return select_logits(last_logits, max_n_logits, desired_prob)
    logit_tokens = torch.as_tensor(logit_tokens).reshape(-1)
    return logit_tokens, torch.softmax(last_logits, -1)[logit_tokens]


def check_size(n_active: int, n_keep: int, n_other: int, n_logits: int) -> None:
    """Refuse a graph whose float32 tensors pass MAX_ADJACENCY_BYTES: the dense adjacency, or
    with a bound the rows computed ((N + logits) x every source) plus the packaged graph."""
    n_nodes = n_keep + n_other + n_logits
    graph_bytes = n_nodes * n_nodes * 4
    if n_keep == n_active:
        if graph_bytes > MAX_ADJACENCY_BYTES:
            raise InputError(f"{n_active} active features make a {n_nodes} x {n_nodes} adjacency "
                             f"({graph_bytes / 2**30:.1f} GiB, more than {MAX_ADJACENCY_BYTES / 2**30:.0f}); "
                             "use a shorter prompt or bound the feature nodes (--max-feature-nodes)", where="prompt")
        return
    row_bytes = (n_keep + n_logits) * (n_active + n_other) * 4
    if row_bytes + graph_bytes > MAX_ADJACENCY_BYTES:
        raise InputError(f"{n_keep} of {n_active} active features need {(n_keep + n_logits)} x {n_active + n_other} "
                         f"rows and a {n_nodes} x {n_nodes} graph ({(row_bytes + graph_bytes) / 2**30:.1f} GiB, more "
                         f"than {MAX_ADJACENCY_BYTES / 2**30:.0f}); lower --max-feature-nodes or use a shorter prompt",
                         where="max_feature_nodes")


def _dense_adjacency(solver: "_RowSolver", logit_vecs: torch.Tensor) -> torch.Tensor:
    """Every active feature a node: feature rows, then logit rows, in batches of targets."""
    n_feat, n_logits, n_src = solver.n_active, len(logit_vecs), solver.n_sources
    n_nodes = n_src + n_logits
    t_layers, t_pos, t_vecs = solver.targets(torch.arange(n_feat), logit_vecs)
    t_rows = torch.cat([torch.arange(n_feat), torch.arange(n_src, n_nodes)])
    adjacency = torch.zeros(n_nodes, n_nodes)
    for start in range(0, len(t_rows), solver.batch_size):
        sl = slice(start, start + solver.batch_size)
        adjacency[t_rows[sl], :n_src] = solver.rows(t_layers[sl], t_pos[sl], t_vecs[sl])
    return adjacency


def _bounded_adjacency(solver: "_RowSolver", logit_vecs: torch.Tensor, logit_probs: torch.Tensor, n_keep: int,
                       update_interval: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kept feature indices, packaged adjacency, [n_nodes] what the features left out write
    into each target) with ``n_keep`` feature nodes. Rows over every source are computed for
    the logits, then for features in order of their influence estimated from the rows so far,
    re-estimated every ``update_interval`` batches; the graph keeps the visited features'
    columns (circuit-tracer attribute.py, phases 3-5). What the others write reaches the
    targets as a constant, like everything else no node writes: it goes into the bias."""
    edges, row_node, visited = _visit_by_influence(solver, logit_vecs, logit_probs, n_keep, update_interval)
    kept = torch.nonzero(visited).reshape(-1)
    cols = torch.cat([kept, torch.arange(solver.n_active, solver.n_sources)])
    order = torch.argsort(row_node)  # kept features by index (as ``kept``), then the logits
    n_logits = len(logit_vecs)
    n_nodes = len(cols) + n_logits
    adjacency = torch.zeros(n_nodes, n_nodes)
    adjacency[:n_keep, :len(cols)] = edges[order[:n_keep, None], cols[None]]
    adjacency[n_nodes - n_logits:, :len(cols)] = edges[order[n_keep:, None], cols[None]]
    left_out = torch.zeros(n_nodes)
    left_out[torch.cat([torch.arange(n_keep), torch.arange(n_nodes - n_logits, n_nodes)])] = \
        edges[order, :solver.n_active] @ (~visited).float()
    return kept, adjacency, left_out


def _visit_by_influence(solver: "_RowSolver", logit_vecs: torch.Tensor, logit_probs: torch.Tensor, n_keep: int,
                        update_interval: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows [n_logits + n_keep, n_sources] (logits first, then features as visited), the node
    each row belongs to (a feature's index, n_sources + j for logit j) and the visited mask."""
    bs, n_logits, n_src = solver.batch_size, len(logit_vecs), solver.n_sources
    edges = torch.zeros(n_logits + n_keep, n_src)
    row_node = torch.zeros(n_logits + n_keep, dtype=torch.long)
    layers, pos, _ = solver.targets(torch.arange(0), logit_vecs)
    for start in range(0, n_logits, bs):
        sl = slice(start, min(start + bs, n_logits))
        edges[sl] = solver.rows(layers[sl], pos[sl], logit_vecs[sl])
        row_node[sl] = torch.arange(n_src, n_src + n_logits)[sl]
    visited = torch.zeros(solver.n_active, dtype=torch.bool)
    filled = n_logits
    while filled < n_logits + n_keep:
        estimate = partial_influence(edges[:filled], row_node[:filled], logit_probs)
        rank = torch.argsort(estimate[:solver.n_active], descending=True, stable=True)
        queue = rank[~visited[rank]][: min(update_interval * bs, n_logits + n_keep - filled)]
        for batch in queue.split(bs):
            layers, pos, vecs = solver.targets(batch, logit_vecs[:0])
            edges[filled:filled + len(batch)] = solver.rows(layers, pos, vecs)
            row_node[filled:filled + len(batch)] = batch
            visited[batch] = True
            filled += len(batch)
    return edges, row_node, visited


def partial_influence(edges: torch.Tensor, row_node: torch.Tensor, logit_probs: torch.Tensor,
                      max_iter: int = 128) -> torch.Tensor:
    """[n_sources] influence on the logits estimated from the rows computed so far: the
    probability-weighted logits propagated back through the |rows| normalised to sum 1
    (circuit-tracer ``graph.py`` ``compute_partial_influences``)."""
    norm = edges.abs()
    norm /= norm.sum(dim=1, keepdim=True).clamp(min=1e-8)
    n_src = edges.shape[1]
    weight = torch.cat([torch.zeros(n_src), logit_probs])  # by node: sources, then logits
    total = torch.zeros(n_src)
    for _ in range(max_iter):
        flow = weight[row_node] @ norm
        if not flow.any():
            return total
        total += flow
        weight = torch.cat([flow, torch.zeros(len(logit_probs))])
    raise RuntimeError(f"partial influence did not converge in {max_iter} iterations")


def _constants(rm: ReplacementModel, trace: Trace, solver: "_RowSolver", kept: torch.Tensor,
               logit_vecs: torch.Tensor, n_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bias, target values) of the kept feature rows and the logit rows: what each target
    reads from the same linear model with every source zeroed, and with every source on."""
    n_logits = len(logit_vecs)
    t_layers, t_pos, t_vecs = solver.targets(kept, logit_vecs)
    t_rows = torch.cat([torch.arange(len(kept)), torch.arange(n_nodes - n_logits, n_nodes)])
    bias, values = torch.zeros(n_nodes), torch.zeros(n_nodes)
    if not len(t_rows):
        return bias, values
    with torch.no_grad():
        const_reads = _run_linear(rm, trace, torch.zeros_like(trace.embeds)[None], sources=False)
        full_reads = _run_linear(rm, trace, trace.embeds[None], sources=True)
        for reads_, out in ((const_reads, bias), (full_reads, values)):
            picked = torch.stack([reads_[int(l)][0, int(p)] for l, p in zip(t_layers, t_pos)])
            out[t_rows] = (picked * t_vecs).sum(-1)
    return bias, values


class _RowSolver:
    """Rows of the adjacency over every source (active features, errors, tokens) for batches
    of targets, by backward passes through one forward pass of the linearised model kept on
    ``batch_size`` copies of the prompt."""

    def __init__(self, rm: ReplacementModel, trace: Trace, features: torch.Tensor, activations: torch.Tensor,
                 batch_size: int):
        self.trace, self.features, self.batch_size = trace, features, batch_size
        self.n_layers, self.n_active = rm.n_layers, len(features)
        self.n_sources = self.n_active + (rm.n_layers + 1) * trace.n_pos
        # sources: decoder rows scaled by activations, grouped by layer; targets: encoder columns
        self.dec_vecs = torch.zeros(self.n_active, rm.d_model)
        self.enc_vecs = torch.zeros(self.n_active, rm.d_model)
        self.by_layer: list[torch.Tensor] = []
        for layer in range(rm.n_layers):
            idx = torch.nonzero(features[:, 0] == layer).reshape(-1)
            self.by_layer.append(idx)
            if len(idx):
                tc = rm.tc[layer]
                self.dec_vecs[idx] = activations[idx, None] * tc.W_dec.float()[features[idx, 2]]
                self.enc_vecs[idx] = tc.W_enc.float()[:, features[idx, 2]].T
        self.reads, self.writes, self.embeds = _linear_graph(rm, trace, batch_size)

    def targets(self, feature_idx: torch.Tensor, logit_vecs: torch.Tensor):
        """(layers, positions, read vectors) of these features, then these logits; layer
        n_layers is the final normalised residual at the last position."""
        n_logits = len(logit_vecs)
        layers = torch.cat([self.features[feature_idx, 0], torch.full((n_logits,), self.n_layers)])
        pos = torch.cat([self.features[feature_idx, 1], torch.full((n_logits,), self.trace.n_pos - 1)])
        return layers, pos, torch.cat([self.enc_vecs[feature_idx], logit_vecs])

    def rows(self, t_layers: torch.Tensor, t_pos: torch.Tensor, t_vecs: torch.Tensor) -> torch.Tensor:
        return _backward_rows(self.reads, self.writes, self.embeds, t_layers, t_pos, t_vecs, self.by_layer,
                              self.features, self.dec_vecs, self.trace, self.n_sources)


def _linear_mlp(rm: ReplacementModel, trace: Trace, *, sources: bool):
    """The MLP of the linearised model: skip(x) + what is held constant. With ``sources`` the
    constant is the traced output minus the traced skip term (features, errors and b_dec);
    without, only what no node writes: b_dec after the zero positions, the whole traced
    output before them."""
    from saekit.circuits.replacement import ZERO_POSITIONS

    consts = []
    for i, tc in enumerate(rm.tc):
        full = trace.mlp_out[i] - (tc.skip(trace.mlp_in[i]) if tc is not None else 0)
        if sources:
            consts.append(full)
        else:
            c = tc.b_dec.float().expand_as(full).clone() if tc is not None else torch.zeros_like(full)
            c[:ZERO_POSITIONS] = full[:ZERO_POSITIONS]
            consts.append(c)

    def mlp(i: int, x: torch.Tensor) -> torch.Tensor:
        return (rm.tc[i].skip(x) if rm.tc[i] is not None else 0) + consts[i]

    return mlp


def _run_linear(rm: ReplacementModel, trace: Trace, embeds: torch.Tensor, *, sources: bool) -> list[torch.Tensor]:
    """What every target reads ([mlp_in per layer] + [final]) in the linearised model."""
    reads: list[torch.Tensor] = []

    def hook(name: str, layer: int, t: torch.Tensor) -> None:
        if name in ("mlp_in", "final"):
            reads.append(t)

    rm.run(trace, embeds, _linear_mlp(rm, trace, sources=sources), hook=hook)
    return reads


def _linear_graph(rm: ReplacementModel, trace: Trace, batch_size: int):
    """One forward pass of the linearised model on ``batch_size`` copies of the prompt,
    kept for many backward passes: what targets read, what sources write, the embeddings."""
    embeds = trace.embeds[None].expand(batch_size, -1, -1).clone().requires_grad_(True)
    reads: list[torch.Tensor] = []
    writes: list[torch.Tensor] = []

    def hook(name: str, layer: int, t: torch.Tensor) -> None:
        (writes if name == "mlp_out" else reads).append(t)

    base = _linear_mlp(rm, trace, sources=True)

    def mlp(i: int, x: torch.Tensor) -> torch.Tensor:
        out = base(i, x).expand_as(x)  # without a skip term a constant: made a node so its gradient exists
        return out if out.requires_grad else out + torch.zeros((), requires_grad=True)

    rm.run(trace, embeds, mlp, hook=hook)
    return reads, writes, embeds


def _backward_rows(reads, writes, embeds, t_layers, t_pos, t_vecs, by_layer, features, dec_vecs, trace, n_sources):
    """Rows [b, n_sources] of the adjacency (every column but the logits') for a batch of b
    targets, one backward pass: the gradient of each target's read (batch element i reads
    target i) at every place a source writes, contracted with what it writes."""
    b, n_pos, n_feat = len(t_layers), trace.n_pos, features.shape[0]
    loss = torch.zeros(())
    for layer in t_layers.unique().tolist():
        m = torch.nonzero(t_layers == layer).reshape(-1)
        loss = loss + (reads[layer][m, t_pos[m]] * t_vecs[m]).sum()
    g_embed, *g_out = torch.autograd.grad(loss, [embeds, *writes], retain_graph=True, allow_unused=True)
    rows = torch.zeros(b, n_sources)
    for layer, g in enumerate(g_out):
        if g is None:  # no target of this batch reads after this layer
            continue
        g = g[:b]
        idx = by_layer[layer]
        if len(idx):
            rows[:, idx] = torch.einsum("bfd,fd->bf", g[:, features[idx, 1]], dec_vecs[idx])
        e0 = n_feat + layer * n_pos
        rows[:, e0:e0 + n_pos] = torch.einsum("bpd,pd->bp", g, trace.errors[layer])
    t0 = n_feat + len(g_out) * n_pos
    rows[:, t0:t0 + n_pos] = torch.einsum("bpd,pd->bp", g_embed[:b], trace.embeds)
    return rows
