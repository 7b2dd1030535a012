"""The local replacement model of a Llama-family Hugging Face causal LM at one prompt.

At the prompt, the real forward pass fixes, for every layer, the attention patterns and the
RMSNorm denominators; each MLP becomes its transcoder plus an error term (the real MLP output
minus the transcoder's prediction) held constant, so the replacement's outputs at the prompt
equal the real model's. A layer the set does not cover keeps its real MLP output, all of it an
error node. With the patterns, denominators, transcoder activations and errors held
fixed, the map from what each node writes (token embeddings, decoded features, errors) to what
each node reads (feature pre-activations, logits) is linear: the direct effects of the
attribution graph are its partial derivatives (circuit-tracer 0.5.0,
``replacement_model/replacement_model_transformerlens.py`` ``_configure_gradient_flow``: pattern
and ``hook_scale`` detached, MLP output = skip + (out - skip).detach()).

Position 0 is left out of the graph as circuit-tracer leaves it (``zero_positions = slice(0, 1)``
in ``_configure_replacement_model``): its transcoder features and error are not nodes, and its
MLP output is a constant (the attention sink of the first token).

Llama's blocks, written out here with the model's own weights (transformers
``models/llama/modeling_llama.py`` LlamaDecoderLayer, LlamaAttention with eager attention,
LlamaRMSNorm): ``h = x + o_proj(softmax(q k^T / sqrt(d_head) + causal) v)`` on
``input_layernorm(x)``, then ``h + mlp(post_attention_layernorm(h))``; logits =
``lm_head(norm(h_L))``. Everything runs in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from saekit.kernels.transcoder import TranscoderSet
from saekit.schemas import InputError

SUPPORTED_MODEL_TYPES = ("llama",)
ZERO_POSITIONS = 1
"""Leading positions whose features and errors are not graph nodes (circuit-tracer: the first)."""


@dataclass
class Trace:
    """What the real forward pass at one prompt fixes: every tensor float32, batch dim dropped."""

    tokens: torch.Tensor
    """[n_pos] token ids."""
    embeds: torch.Tensor
    """[n_pos, d_model] token embeddings (the token nodes' vectors)."""
    attn_scale: list[torch.Tensor]
    """Per layer [n_pos, 1]: input_layernorm's 1/sqrt(mean(x^2) + eps), frozen."""
    patterns: list[torch.Tensor]
    """Per layer [n_heads, n_pos, n_pos]: softmax attention weights, frozen."""
    mlp_scale: list[torch.Tensor]
    """Per layer [n_pos, 1]: post_attention_layernorm's reciprocal RMS, frozen."""
    final_scale: torch.Tensor
    """[n_pos, 1]: the final norm's reciprocal RMS, frozen."""
    mlp_in: list[torch.Tensor]
    """Per layer [n_pos, d_model]: the MLP's input (what the transcoder reads)."""
    mlp_out: list[torch.Tensor]
    """Per layer [n_pos, d_model]: the real MLP's output."""
    acts: list[torch.Tensor]
    """Per layer [n_pos, d_sae]: transcoder activations (positions < ZERO_POSITIONS zeroed;
    [n_pos, 0] for a layer without a transcoder)."""
    errors: list[torch.Tensor]
    """Per layer [n_pos, d_model]: real MLP output - transcoder output (zero before ZERO_POSITIONS)."""
    logits: torch.Tensor
    """[n_pos, vocab]: the real model's logits."""

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])


class ReplacementModel:
    """A Llama-family causal LM with each MLP replaced by its transcoder + a constant error."""

    def __init__(self, model, transcoders: TranscoderSet):
        cfg = model.config
        if getattr(cfg, "model_type", None) not in SUPPORTED_MODEL_TYPES:
            raise InputError(f"attribution graphs support Llama-family models, not {cfg.model_type!r}",
                             where=type(model).__name__)
        self.model = model
        self.layers = list(model.model.layers)
        n = len(self.layers)
        if not set(transcoders.layers) <= set(range(n)):
            raise InputError(f"the transcoder set covers layers {transcoders.layers}, the model has 0..{n - 1}",
                             where="transcoders")
        for i in transcoders.layers:
            tc = transcoders[i]
            want = f"model.layers.{i}.mlp"
            if (tc.hook_in, tc.hook_out) != (want, want) or tc.d_in != cfg.hidden_size or tc.d_out != cfg.hidden_size:
                raise InputError(f"layer {i}: transcoder reads {tc.hook_in} -> {tc.hook_out} "
                                 f"({tc.d_in} -> {tc.d_out}); the graph needs {want} ({cfg.hidden_size} wide)",
                                 where="transcoders")
        self.transcoders = transcoders.to(dtype=torch.float32)
        self.tc = [self.transcoders[i] if i in self.transcoders else None for i in range(n)]
        """Each layer's transcoder; None: the layer's MLP output is all error (held constant)."""
        self.n_layers = n
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.d_model = cfg.hidden_size

    # -- pieces of a Llama block, in float32 ---------------------------------------------
    def _lin(self, mod, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, mod.weight.float(), None if mod.bias is None else mod.bias.float())

    @staticmethod
    def _rms(norm, x: torch.Tensor) -> torch.Tensor:
        """Reciprocal RMS of x [..., d] (LlamaRMSNorm), [..., 1]."""
        return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(*x.shape[:-1], n, self.d_head).transpose(-3, -2)  # [B, n, pos, d_head]

    def _values(self, layer: int, normed: torch.Tensor) -> torch.Tensor:
        """Attention output given the frozen pattern: o_proj(pattern @ v), [B, pos, d]."""
        attn = self.layers[layer].self_attn
        v = self._heads(self._lin(attn.v_proj, normed), self.n_kv)
        v = v.repeat_interleave(self.n_heads // self.n_kv, dim=-3)
        return v  # [B, heads, pos, d_head]

    def _attn_out(self, layer: int, pattern: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
        v = self._values(layer, normed)
        z = (pattern @ v).transpose(-3, -2).reshape(*normed.shape[:-1], self.n_heads * self.d_head)
        return self._lin(self.layers[layer].self_attn.o_proj, z)

    # -- the real forward pass -----------------------------------------------------------
    @torch.no_grad()
    def trace(self, tokens: torch.Tensor) -> Trace:
        """Run the real model on ``tokens`` [n_pos] and keep what the replacement freezes."""
        tokens = torch.as_tensor(tokens).reshape(-1).to(self.model.device)
        inner = self.model.model
        n_pos = tokens.shape[0]
        pos_ids = torch.arange(n_pos, device=tokens.device)[None]
        x = inner.embed_tokens(tokens[None]).float()
        embeds = x[0].clone()
        cos, sin = inner.rotary_emb(x, pos_ids)
        cos, sin = cos.float()[:, None], sin.float()[:, None]
        causal = torch.full((n_pos, n_pos), float("-inf"), device=x.device).triu(1)
        t = Trace(tokens.cpu(), embeds, [], [], [], None, [], [], [], [], None)  # type: ignore[arg-type]
        for i, block in enumerate(self.layers):
            s1 = self._rms(block.input_layernorm, x)
            normed = x * s1 * block.input_layernorm.weight.float()
            attn = block.self_attn
            q = self._heads(self._lin(attn.q_proj, normed), self.n_heads)
            k = self._heads(self._lin(attn.k_proj, normed), self.n_kv)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=-3)
            pattern = torch.softmax(q @ k.transpose(-1, -2) * self.d_head**-0.5 + causal, dim=-1)
            x = x + self._attn_out(i, pattern, normed)
            s2 = self._rms(block.post_attention_layernorm, x)
            mlp_in = x * s2 * block.post_attention_layernorm.weight.float()
            mlp_out = _run_mlp(block.mlp, mlp_in)
            x = x + mlp_out
            tc = self.tc[i]
            if tc is None:
                acts = mlp_in.new_zeros(n_pos, 0)
                err = mlp_out[0].clone()
            else:
                acts = tc.encode_dense(mlp_in[0])
                acts[:ZERO_POSITIONS] = 0
                err = mlp_out[0] - tc.forward(mlp_in[0])
            err[:ZERO_POSITIONS] = 0
            t.attn_scale.append(s1[0])
            t.patterns.append(pattern[0])
            t.mlp_scale.append(s2[0])
            t.mlp_in.append(mlp_in[0])
            t.mlp_out.append(mlp_out[0])
            t.acts.append(acts)
            t.errors.append(err)
        t.final_scale = self._rms(inner.norm, x)[0]
        t.logits = self._lin(self.model.lm_head, x * t.final_scale * inner.norm.weight.float())[0]
        return t

    # -- the replacement forward pass -----------------------------------------------------
    def run(
        self,
        trace: Trace,
        embeds: torch.Tensor,
        mlp: Callable[[int, torch.Tensor], torch.Tensor],
        *,
        hook: Callable[[str, int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Forward with the trace's attention patterns and norm denominators frozen.

        ``embeds`` [B, n_pos, d]; ``mlp(layer, mlp_in)`` gives each layer's MLP output;
        ``hook(name, layer, tensor)`` sees ``"mlp_in"`` / ``"mlp_out"`` per layer and
        ``"final"`` (the normalised last residual, what lm_head reads). Returns that
        normalised residual [B, n_pos, d]."""
        x = embeds
        for i, block in enumerate(self.layers):
            normed = x * trace.attn_scale[i] * block.input_layernorm.weight.float()
            x = x + self._attn_out(i, trace.patterns[i], normed)
            mlp_in = x * trace.mlp_scale[i] * block.post_attention_layernorm.weight.float()
            if hook:
                hook("mlp_in", i, mlp_in)
            out = mlp(i, mlp_in)
            if hook:
                hook("mlp_out", i, out)
            x = x + out
        final = x * trace.final_scale * self.model.model.norm.weight.float()
        if hook:
            hook("final", self.n_layers, final)
        return final

    def logits(self, final: torch.Tensor) -> torch.Tensor:
        return self._lin(self.model.lm_head, final)

    def forward(
        self,
        trace: Trace,
        *,
        set_acts: dict[tuple[int, int, int], float] | None = None,
        propagate: bool = True,
        acts_out: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits [n_pos, vocab] of the replacement model, frozen attention and norms.

        ``set_acts`` {(layer, pos, feature): value} overrides transcoder activations.
        ``propagate``: transcoders re-encode their (changed) inputs, errors held constant;
        otherwise every MLP output is held at its traced value except the overridden
        features' change and the skip connections (direct effects only: circuit-tracer's
        ``feature_intervention`` with ``constrained_layers`` covering every layer).
        Without overrides the logits equal the real model's. ``acts_out``, when given, receives
        each layer's activations [n_pos, d_sae] after the overrides (empty for a layer
        without a transcoder)."""
        edits: dict[int, list[tuple[int, int, float]]] = {}
        for (layer, pos, feat), value in (set_acts or {}).items():
            edits.setdefault(layer, []).append((pos, feat, value))

        def mlp(i: int, x: torch.Tensor) -> torch.Tensor:
            tc = self.tc[i]
            if tc is None:  # no transcoder: the MLP output is held
                if acts_out is not None:
                    acts_out.append(trace.acts[i])
                return trace.mlp_out[i][None]
            xin = x[0]
            if propagate:
                acts = tc.encode_dense(xin)
                acts[:ZERO_POSITIONS] = trace.acts[i][:ZERO_POSITIONS]
            else:
                acts = trace.acts[i].clone()
            base = acts.clone()
            for pos, feat, value in edits.get(i, ()):
                acts[pos, feat] = value
            if acts_out is not None:
                acts_out.append(acts)
            if propagate:
                out = tc.decode_dense(acts) + tc.skip(xin) + trace.errors[i]
                out[:ZERO_POSITIONS] = trace.mlp_out[i][:ZERO_POSITIONS]
            else:  # traced output + change of the overridden features + change of the skip term
                out = trace.mlp_out[i] + (acts - base) @ tc.W_dec.float() + tc.skip(xin) - tc.skip(trace.mlp_in[i])
            return out[None]

        with torch.no_grad():
            return self.logits(self.run(trace, trace.embeds[None], mlp))[0]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _run_mlp(mlp, x: torch.Tensor) -> torch.Tensor:
    """The model's own MLP in float32 (a copy of its weights if they are not)."""
    if mlp.down_proj.weight.dtype == torch.float32:
        return mlp(x)
    act = mlp.act_fn
    lin = lambda m, v: F.linear(v, m.weight.float(), None if m.bias is None else m.bias.float())  # noqa: E731
    return lin(mlp.down_proj, act(lin(mlp.gate_proj, x)) * lin(mlp.up_proj, x))
