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

What no node writes (the transcoders' b_dec, position 0's MLP outputs, attention biases)
reaches each target as a constant: ``bias[t]``; ``adjacency[t].sum() + bias[t]`` equals the
target's input (a logit's value minus the mean logit).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saekit.circuits.replacement import ReplacementModel, Trace
from saekit.schemas import InputError

DEFAULT_MAX_LOGITS = 10
DEFAULT_LOGIT_PROB = 0.95  # circuit-tracer attribute(desired_logit_prob=0.95)
DEFAULT_BATCH_SIZE = 64
MAX_ADJACENCY_BYTES = 4 << 30  # the dense float32 adjacency; pruning holds a few copies of it


@dataclass
class Graph:
    """A dense attribution graph over one prompt (circuit-tracer's node order)."""

    tokens: torch.Tensor
    """[n_pos] prompt token ids."""
    features: torch.Tensor
    """[n_features, 3] (layer, position, feature index) of every active feature."""
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


def attribute(
    rm: ReplacementModel,
    tokens: torch.Tensor,
    *,
    max_n_logits: int = DEFAULT_MAX_LOGITS,
    desired_logit_prob: float = DEFAULT_LOGIT_PROB,
    logit_tokens: torch.Tensor | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    trace: Trace | None = None,
) -> Graph:
    """The dense attribution graph of ``tokens`` [n_pos] (every active feature a node)."""
    trace = trace if trace is not None else rm.trace(tokens)
    n_layers, n_pos = rm.n_layers, trace.n_pos
    tcs = rm.tc

    # active features in lexicographic (layer, pos, feature) order, as circuit-tracer's coalesced sparse tensor
    found = []
    for layer, acts in enumerate(trace.acts):
        nz = torch.nonzero(acts)
        found.append(torch.cat([torch.full((len(nz), 1), layer), nz], 1))
    features = torch.cat(found)
    activations = torch.stack([trace.acts[l][p, f] for l, p, f in features.tolist()]) if len(features) \
        else torch.zeros(0)
    n_feat = features.shape[0]

    last_logits = trace.logits[-1]
    if logit_tokens is None:
        logit_tokens, logit_probs = select_logits(last_logits, max_n_logits, desired_logit_prob)
    else:
        logit_tokens = torch.as_tensor(logit_tokens).reshape(-1)
        logit_probs = torch.softmax(last_logits, -1)[logit_tokens]
    W_U = rm.model.lm_head.weight.float()
    logit_vecs = W_U[logit_tokens] - W_U.mean(0, keepdim=True)  # [n_logits, d]
    n_logits = logit_tokens.shape[0]

    n_err = n_layers * n_pos
    n_nodes = n_feat + n_err + n_pos + n_logits
    if n_nodes * n_nodes * 4 > MAX_ADJACENCY_BYTES:
        raise InputError(f"{n_feat} active features make a {n_nodes} x {n_nodes} adjacency "
                         f"({n_nodes * n_nodes * 4 / 2**30:.1f} GiB, more than {MAX_ADJACENCY_BYTES / 2**30:.0f}); "
                         "use a shorter prompt", where="prompt")
    logit_start = n_feat + n_err + n_pos

    # Sources: decoder rows scaled by activations, grouped by layer; errors; embeddings.
    dec_vecs = torch.zeros(n_feat, rm.d_model)
    by_layer: list[torch.Tensor] = []
    for layer in range(n_layers):
        idx = torch.nonzero(features[:, 0] == layer).reshape(-1)
        by_layer.append(idx)
        if len(idx):
            dec_vecs[idx] = activations[idx, None] * tcs[layer].W_dec.float()[features[idx, 2]]

    # Targets: (layer, pos, read vector); layer n_layers = the final normalised residual.
    enc_vecs = torch.zeros(n_feat, rm.d_model)
    for layer, idx in enumerate(by_layer):
        if len(idx):
            enc_vecs[idx] = tcs[layer].W_enc.float()[:, features[idx, 2]].T
    t_layers = torch.cat([features[:, 0], torch.full((n_logits,), n_layers)])
    t_pos = torch.cat([features[:, 1], torch.full((n_logits,), n_pos - 1)])
    t_vecs = torch.cat([enc_vecs, logit_vecs])
    t_rows = torch.cat([torch.arange(n_feat), torch.arange(logit_start, n_nodes)])

    adjacency = torch.zeros(n_nodes, n_nodes)
    with torch.enable_grad():
        reads, writes, embeds = _linear_graph(rm, trace, batch_size)
        for start in range(0, len(t_rows), batch_size):
            sl = slice(start, start + batch_size)
            rows = _backward_rows(reads, writes, embeds, t_layers[sl], t_pos[sl], t_vecs[sl],
                                  by_layer, features, dec_vecs, trace, n_nodes)
            adjacency[t_rows[sl]] = rows

    # constants: the same linear model with every source zeroed
    bias = torch.zeros(n_nodes)
    values = torch.zeros(n_nodes)
    with torch.no_grad():
        const_reads = _run_linear(rm, trace, torch.zeros_like(trace.embeds)[None], sources=False)
        full_reads = _run_linear(rm, trace, trace.embeds[None], sources=True)
        for reads_, out in ((const_reads, bias), (full_reads, values)):
            picked = torch.stack([reads_[int(l)][0, int(p)] for l, p in zip(t_layers, t_pos)]) if len(t_rows) else None
            if picked is not None:
                out[t_rows] = (picked * t_vecs).sum(-1)

    return Graph(
        tokens=trace.tokens.clone(),
        features=features,
        activations=activations,
        logit_tokens=logit_tokens,
        logit_probs=logit_probs,
        adjacency=adjacency,
        bias=bias,
        target_values=values,
        n_layers=n_layers,
    )


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


def _backward_rows(reads, writes, embeds, t_layers, t_pos, t_vecs, by_layer, features, dec_vecs, trace, n_nodes):
    """Rows [b, n_nodes] of the adjacency for a batch of b targets, one backward pass: the
    gradient of each target's read (batch element i reads target i) at every place a source
    writes, contracted with what it writes."""
    b, n_pos, n_feat = len(t_layers), trace.n_pos, features.shape[0]
    loss = torch.zeros(())
    for layer in t_layers.unique().tolist():
        m = torch.nonzero(t_layers == layer).reshape(-1)
        loss = loss + (reads[layer][m, t_pos[m]] * t_vecs[m]).sum()
    g_embed, *g_out = torch.autograd.grad(loss, [embeds, *writes], retain_graph=True, allow_unused=True)
    rows = torch.zeros(b, n_nodes)
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
