"""TransformerLens names on Hugging Face models: model aliases and hook names.

SAELens names most models and hooks the TransformerLens way (``gpt2-small``,
``blocks.8.hook_resid_pre``). saekit runs the Hugging Face model, so a TL hook name becomes
a *site*: a module of the HF model and what to read there (its output, its input, or its
input normalised as TL's ``ln2.hook_normalized``). Every site reads the same tensor
TransformerLens computes (transformer_lens/components/transformer_block.py, TL 3.9, on a
model loaded without weight processing, as SAELens loads it), which the tests check
against ``run_with_cache`` per family. What the HF model does not compute as TL does is
refused, never mapped to another activation:

- ``hook_resid_pre`` is the block's *input*; ``hook_resid_post`` its output (before
  GPT-2's ``ln_f``, which only the model's last hidden state has);
- ``hook_resid_mid`` is the input of the second norm; a parallel block (Pythia) has none;
- ``hook_attn_out`` / ``hook_mlp_out`` are after Gemma 2/3's post-attention / post-feedforward
  norms (TL's ``ln1_post`` / ``ln2_post``), elsewhere the attention / MLP output;
- ``ln1/ln2.hook_normalized`` are the first / second norm's input normalised, before gain and bias;
- ``mlp.hook_post`` is the MLP's hidden activation: the input of its output projection;
- ``attn.hook_z`` is the input of the attention's output projection: [.., n_heads*d_head],
  the flattening SAELens' ``reshape_activations="hook_z"`` applies.

Other names are module paths of the HF model (``model.layers.6``: its output).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from saekit.harness.model_aliases import ALIASES
from saekit.schemas import InputError

TL_HOOK = re.compile(
    r"blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out"
    r"|ln1\.hook_normalized|ln2\.hook_normalized|attn\.hook_z|mlp\.hook_post)"
)


@dataclass(frozen=True)
class Layout:
    """Module names of one family's blocks (relative to the block, except ``layers``)."""

    layers: str
    attn_out: str  # what the block adds to the residual from attention (TL hook_attn_out)
    mlp_out: str  # ... and from the MLP (TL hook_mlp_out)
    ln1: str  # the norm before attention (TL ln1)
    ln2: str  # the norm before the MLP (TL ln2)
    o_proj: str  # the attention's output projection; its input is TL's hook_z, flattened
    down_proj: str  # the MLP's output projection; its input is TL's mlp.hook_post


_LLAMA = Layout("model.layers", "self_attn", "mlp", "input_layernorm", "post_attention_layernorm", "self_attn.o_proj",
                "mlp.down_proj")
# Gemma 2 and 3 norm attention's and MLP's outputs before adding them (TL: ln1_post, ln2_post)
_GEMMA2 = Layout("model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "input_layernorm",
                 "pre_feedforward_layernorm", "self_attn.o_proj", "mlp.down_proj")
LAYOUTS: dict[str, Layout] = {
    "gpt2": Layout("transformer.h", "attn", "mlp", "ln_1", "ln_2", "attn.c_proj", "mlp.c_proj"),
    "gpt_neox": Layout("gpt_neox.layers", "attention", "mlp", "input_layernorm", "post_attention_layernorm",
                       "attention.dense", "mlp.dense_4h_to_h"),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _GEMMA2,
    "gemma3_text": _GEMMA2,
    # Gemma 3 4b/12b/27b: Gemma3ForConditionalGeneration, its text model under language_model
    "gemma3": replace(_GEMMA2, layers="model.language_model.layers"),
}


@dataclass(frozen=True)
class Site:
    """Where an activation is read: ``module``'s output, input, or input normalised (TL's
    hook_normalized). ``carry``: the module whose output the block adds to the residual
    after ``module`` (a spliced resid_mid must reach the residual, not only the MLP)."""

    module: str
    read: str  # "output" | "input" | "normalized"
    carry: str | None = None


def hub_id(name: str) -> str:
    """The Hub id of a TransformerLens / SAELens model name (``gpt2-small`` -> ``gpt2``);
    other names unchanged."""
    return ALIASES.get(name.lower(), name)


def _is_parallel(config: Any) -> bool:
    return bool(getattr(config, "use_parallel_residual", False))


def site(model: Any, hook_name: str) -> Site:
    """The site of ``hook_name`` on the HF ``model``; InputError (one line) where the model
    has no such module or TL's hook cannot be reproduced on its family."""
    m = TL_HOOK.fullmatch(hook_name)
    if m is None:
        if hook_name.startswith(("blocks.", "hook_", "ln_final.")):
            raise InputError(f"TransformerLens hook {hook_name!r} is not supported (supported: blocks.N."
                             "hook_resid_pre/mid/post, hook_attn_out, hook_mlp_out, ln1/ln2.hook_normalized, "
                             "attn.hook_z, mlp.hook_post)", where="hook_name")
        module(model, hook_name)
        return Site(hook_name, "output")
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", None)
    layout = LAYOUTS.get(family or "")
    if layout is None:
        raise InputError(f"TransformerLens hook names are not mapped for model type {family!r} (mapped: "
                         f"{', '.join(sorted(LAYOUTS))}); name a module instead (e.g. model.layers.N)",
                         where="hook_name")
    layer, kind = int(m.group(1)), m.group(2)
    n_layers = len(module(model, layout.layers))
    if layer >= n_layers:
        raise InputError(f"{hook_name!r}: the model has {n_layers} blocks", where="hook_name")
    block = f"{layout.layers}.{layer}"
    if kind == "hook_resid_pre":
        return Site(block, "input")
    if kind == "hook_resid_post":
        return Site(block, "output")
    if kind == "hook_resid_mid":
        if _is_parallel(config):
            raise InputError(f"{hook_name!r}: {family} runs attention and MLP in parallel, so TransformerLens "
                             "has no hook_resid_mid", where="hook_name")
        return Site(f"{block}.{layout.ln2}", "input", carry=f"{block}.{layout.mlp_out}")
    if kind == "hook_attn_out":
        return Site(f"{block}.{layout.attn_out}", "output")
    if kind == "hook_mlp_out":
        return Site(f"{block}.{layout.mlp_out}", "output")
    if kind == "ln1.hook_normalized":
        return Site(f"{block}.{layout.ln1}", "normalized")
    if kind == "ln2.hook_normalized":
        return Site(f"{block}.{layout.ln2}", "normalized")
    if kind == "mlp.hook_post":
        return Site(f"{block}.{layout.down_proj}", "input")
    return Site(f"{block}.{layout.o_proj}", "input")  # attn.hook_z


def module(model: Any, path: str) -> Any:
    """The submodule at ``path``; InputError naming it when there is none."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise InputError(f"no module {path!r} in {type(model).__name__}", where="hook_name") from None


def norm_gain(norm: Any) -> tuple[Any, Any, bool]:
    """(gain, bias or None, centred) of a LayerNorm / RMSNorm module: its output is
    ``normalized * gain + bias``. Gemma's RMSNorm multiplies by ``1 + weight``."""
    import torch

    if isinstance(norm, torch.nn.LayerNorm):
        return norm.weight, norm.bias, True
    weight = norm.weight
    if type(norm).__name__.startswith("Gemma"):
        weight = 1.0 + weight.float()
    return weight, None, False


def normalized(norm: Any, x: Any) -> Any:
    """TL's ``hook_normalized`` of the norm module ``norm`` on input ``x``: centred (LayerNorm)
    and divided by the RMS, in float32 as TL computes it, returned in ``x``'s dtype."""
    _, _, centred = norm_gain(norm)
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None:
        eps = norm.eps
    h = x.float()
    if centred:
        h = h - h.mean(-1, keepdim=True)
    return (h / (h.pow(2).mean(-1, keepdim=True) + eps).sqrt()).to(x.dtype)
