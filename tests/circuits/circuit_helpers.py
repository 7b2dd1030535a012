"""A small random Llama (Hugging Face) with a random transcoder per MLP, for the circuits tests:
the pattern circuit-tracer's own tests use (tests/test_attributions_llama.py: a 2-layer
Llama-3-like config, skip transcoders, weights uniform in [-1, 1])."""

from __future__ import annotations

import torch

from saekit.kernels.transcoder import Transcoder, TranscoderSet
from saekit.schemas import SAEConfig


def tiny_llama(*, n_layers: int = 2, d_model: int = 16, n_heads: int = 4, n_kv: int = 2, d_mlp: int = 32,
               vocab: int = 24, seed: int = 0, tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
                      num_attention_heads=n_heads, num_key_value_heads=n_kv, max_position_embeddings=64,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tie, attn_implementation="eager")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-1, 1)
    model.eval().requires_grad_(False)
    return model


def tiny_transcoders(model, *, arch: str = "skip_transcoder", d_sae: int = 48, k: int = 4, seed: int = 1,
                     scale: float = 1.0, model_name: str = "tiny-llama") -> TranscoderSet:
    g = torch.Generator().manual_seed(seed)
    d = model.config.hidden_size
    out = {}
    for layer in range(model.config.num_hidden_layers):
        t = {
            "W_enc": (torch.rand(d, d_sae, generator=g) * 2 - 1) * scale,
            "b_enc": (torch.rand(d_sae, generator=g) * 2 - 1) * scale,
            "W_dec": (torch.rand(d_sae, d, generator=g) * 2 - 1) * scale,
            "b_dec": (torch.rand(d, generator=g) * 2 - 1) * scale,
        }
        if "jumprelu" in arch:
            t["threshold"] = torch.rand(d_sae, generator=g) * 0.5
        if "skip" in arch:
            t["W_skip"] = (torch.rand(d, d, generator=g) * 2 - 1) * scale
        cfg = SAEConfig(architecture=arch, d_in=d, d_sae=d_sae, d_out=d, k=k if "topk" in arch else None,
                        model_name=model_name, hook_name=f"model.layers.{layer}.mlp")
        out[layer] = Transcoder(cfg, t)
    return TranscoderSet(out)


def tiny_tokenizer(vocab: int = 24):
    """A word-level tokenizer over ``<s>`` (id 0, BOS) and the words ``w1`` .. ``w{vocab-1}``."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    words = {"<s>": 0, **{f"w{i}": i for i in range(1, vocab)}}
    tok = Tokenizer(WordLevel(words, unk_token="<s>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>")
