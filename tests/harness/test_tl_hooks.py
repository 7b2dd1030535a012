"""TransformerLens names: saekit.activations equals TL's run_with_cache on the same weights.

For each family the catalogue covers, a tiny random Hugging Face model is built from its
transformers config; TransformerLens' own config conversion (convert_hf_model_config, or the
gemma-2 dict of loading_from_pretrained for Gemma 2, which TL builds from the name) and its
weight conversion (transformer_lens.pretrained.weight_conversions) give the HookedTransformer,
without weight processing (as SAELens loads models). No network.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HOOKS = ["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
         "ln1.hook_normalized", "ln2.hook_normalized", "attn.hook_z", "mlp.hook_post"]
TOL = 1e-4
SMALL = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             max_position_embeddings=64)


def _hf_config(family: str):
    import transformers as tf

    if family == "gpt2":
        return tf.GPT2Config(vocab_size=97, n_embd=64, n_layer=3, n_head=4, n_positions=64, n_ctx=64)
    if family == "pythia":
        return tf.GPTNeoXConfig(**SMALL, rotary_pct=0.25, use_parallel_residual=True)
    if family == "neox-sequential":
        return tf.GPTNeoXConfig(**SMALL, rotary_pct=0.5, use_parallel_residual=False)
    if family == "llama":
        return tf.LlamaConfig(**SMALL, num_key_value_heads=2)
    if family == "mistral":
        return tf.MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=None)
    if family == "qwen2":
        return tf.Qwen2Config(**SMALL, num_key_value_heads=2)
    if family == "qwen3":
        return tf.Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=16)
    if family == "gemma2":
        return tf.Gemma2Config(**SMALL, num_key_value_heads=2, head_dim=16, sliding_window=8,
                               query_pre_attn_scalar=16, final_logit_softcapping=30.0, attn_logit_softcapping=50.0)
    if family == "gemma":
        return tf.GemmaConfig(**SMALL, num_key_value_heads=1, head_dim=16, hidden_act="gelu_pytorch_tanh")
    if family == "gemma3":
        return tf.Gemma3TextConfig(**SMALL, num_key_value_heads=2, head_dim=16, sliding_window=8,
                                   query_pre_attn_scalar=16,
                                   layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    if family == "gemma3-multimodal":  # gemma-3-4b/12b/27b: text and vision (the check feeds text only)
        return tf.Gemma3Config(text_config=_hf_config("gemma3").to_dict(), mm_tokens_per_image=4,
                               vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                  num_attention_heads=2, image_size=28, patch_size=14))
    raise AssertionError(family)


CONVERT = {"gpt2": "convert_gpt2_weights", "pythia": "convert_neox_weights", "neox-sequential": "convert_neox_weights",
           "llama": "convert_llama_weights", "mistral": "convert_mistral_weights", "qwen2": "convert_qwen2_weights",
           "qwen3": "convert_qwen3_weights", "gemma": "convert_gemma_weights", "gemma2": "convert_gemma_weights",
           "gemma3": "convert_gemma_weights", "gemma3-multimodal": "convert_gemma_weights"}


def _gemma2_tl_config(c) -> dict:
    """TL's gemma-2-2b dict (loading_from_pretrained.convert_hf_model_config) at this size."""
    return {
        "d_model": c.hidden_size, "d_head": c.head_dim, "n_heads": c.num_attention_heads, "d_mlp": c.intermediate_size,
        "n_layers": c.num_hidden_layers, "n_ctx": c.max_position_embeddings, "eps": c.rms_norm_eps,
        "d_vocab": c.vocab_size, "act_fn": "gelu_pytorch_tanh", "normalization_type": "RMS",
        "rotary_base": c.rope_parameters["rope_theta"] if getattr(c, "rope_parameters", None) else 10000.0,
        "positional_embedding_type": "rotary", "use_attn_scale": True, "n_key_value_heads": c.num_key_value_heads,
        "window_size": c.sliding_window, "use_local_attn": True,
        "attn_types": ["local", "global"] * (c.num_hidden_layers // 2) + ["local"] * (c.num_hidden_layers % 2),
        "attn_scores_soft_cap": c.attn_logit_softcapping, "output_logits_soft_cap": c.final_logit_softcapping,
        "gated_mlp": True, "final_rms": True, "use_normalization_before_and_after": True,
        "original_architecture": "Gemma2ForCausalLM", "rotary_dim": c.head_dim,
    }


def _gemma_tl_config(c, family: str) -> dict:
    """TL's gemma-2b / gemma-3-270m dicts (convert_hf_model_config builds them from the name)."""
    if family == "gemma2":
        return _gemma2_tl_config(c)
    d = {
        "d_model": c.hidden_size, "d_head": c.head_dim, "n_heads": c.num_attention_heads, "d_mlp": c.intermediate_size,
        "n_layers": c.num_hidden_layers, "n_ctx": c.max_position_embeddings, "eps": c.rms_norm_eps,
        "d_vocab": c.vocab_size, "act_fn": "gelu_pytorch_tanh", "normalization_type": "RMS", "rotary_dim": c.head_dim,
        "positional_embedding_type": "rotary", "use_attn_scale": True, "n_key_value_heads": c.num_key_value_heads,
        "gated_mlp": True, "final_rms": True,
    }
    if family == "gemma":
        return {**d, "rotary_base": c.rope_parameters["rope_theta"], "original_architecture": "GemmaForCausalLM"}
    return {**d, "rotary_base": c.rope_parameters["full_attention"]["rope_theta"],
            "rotary_base_local": c.rope_parameters["sliding_attention"]["rope_theta"],
            "use_normalization_before_and_after": True, "use_qk_norm": True, "window_size": c.sliding_window,
            "use_local_attn": True, "attn_types": ["global" if t == "full_attention" else "local" for t in c.layer_types],
            "original_architecture": "Gemma3ForCausalLM"}


def tiny_pair(family: str, folder: Path):
    """(HF model, HookedTransformer) with the same random weights, float32, eval."""
    import torch
    import transformers as tf
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config
    from transformer_lens.pretrained import weight_conversions

    torch.manual_seed(0)
    config = _hf_config(family)
    hf = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # random norm gains and biases, so a missing or extra gain shows
        for p in hf.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    if family == "gemma3-multimodal":  # TL's gemma-3-4b dict: the text model's, this architecture
        cfg_dict = {**_gemma_tl_config(config.text_config, "gemma3"),
                    "original_architecture": "Gemma3ForConditionalGeneration"}
    elif family.startswith("gemma"):
        cfg_dict = _gemma_tl_config(config, family)
    else:
        path = folder / "tiny"  # no family word in the path: TL would take the name for the model
        hf.save_pretrained(path)
        cfg_dict = convert_hf_model_config(str(path))
    cfg = HookedTransformerConfig(**{**cfg_dict, "dtype": torch.float32, "device": "cpu", "tokenizer_name": None})
    tl = HookedTransformer(cfg)
    state = getattr(weight_conversions, CONVERT[family])(hf, cfg)
    tl.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                   fold_value_biases=False, refactor_factored_attn_matrices=False)
    return hf, tl.eval()


FAMILIES = list(CONVERT)


def _edit(a):
    """A change of the activation that no layer undoes (a norm would undo a plain scale)."""
    return a * 0.5 + 0.25 * a.roll(1, dims=-1)


def _tl_edit(kind: str):
    def hook(a, hook):
        if kind == "attn.hook_z":  # [.., n_heads, d_head]: edited as SAELens' flattened vector
            return _edit(a.flatten(-2)).unflatten(-1, a.shape[-2:])
        return _edit(a)

    return hook


@pytest.mark.parametrize("family", FAMILIES)
def test_activations_equal_run_with_cache(family: str, tmp_path: Path) -> None:
    import torch

    import saekit
    from saekit.harness.activations import spliced
    from saekit.schemas import InputError

    hf, tl = tiny_pair(family, tmp_path)
    tokens = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, cache = tl.run_with_cache(tokens)
        torch.testing.assert_close(hf(tokens).logits, logits, atol=TOL, rtol=TOL)  # same model
    worst = 0.0
    for layer in range(tl.cfg.n_layers):
        for kind in HOOKS:
            name = f"blocks.{layer}.{kind}"
            if name not in cache:  # TL has no such hook here (parallel blocks: resid_mid)
                assert kind == "hook_resid_mid" and tl.cfg.parallel_attn_mlp
                with pytest.raises(InputError, match="parallel"):
                    saekit.activations(hf, name, tokens)
                continue
            want = cache[name]
            if kind == "attn.hook_z":
                want = want.flatten(-2)  # SAELens' hook_z reshaping: [.., n_heads * d_head]
            got = saekit.activations(hf, name, tokens)
            assert got.shape == want.shape, name
            diff = (got - want).abs().max().item()
            assert diff < TOL, (name, diff)
            worst = max(worst, diff)
            # splicing there (the CE/KL of a check) changes the logits as TL's run_with_hooks does
            with torch.no_grad(), spliced(hf, name, _edit):
                got_logits = hf(tokens).logits
                want_logits = tl.run_with_hooks(tokens, fwd_hooks=[(name, _tl_edit(kind))])
            assert (want_logits - logits).abs().max() > 1e-3, name  # the edit matters
            torch.testing.assert_close(got_logits, want_logits, atol=TOL, rtol=TOL, msg=name)
    print(f"{family}: largest |saekit - TL| = {worst:.2e}")
    last = f"blocks.{tl.cfg.n_layers - 1}.hook_resid_post"
    with torch.no_grad():  # the trap: transformers' last hidden state is after the final norm
        final = hf(tokens, output_hidden_states=True).hidden_states[-1]
    assert (saekit.activations(hf, last, tokens) - final).abs().max() > 1e-2


def test_aliases_resolve_as_transformer_lens() -> None:
    """Every TransformerLens name (alias or official, any case) gives TL's official Hub id."""
    from transformer_lens.loading_from_pretrained import make_model_alias_map

    from saekit.harness.hooks import hub_id

    tl = make_model_alias_map()
    assert len(tl) > 500
    for name, official in tl.items():
        assert hub_id(name) == official, name
    assert hub_id("gpt2-small") == "gpt2" and hub_id("gemma-2-2b") == "google/gemma-2-2b"
    assert hub_id("pythia-70m-deduped") == "EleutherAI/pythia-70m-deduped"
    assert hub_id("someone/own-model") == "someone/own-model"


def test_refused_hooks_name_the_reason(tmp_path: Path) -> None:
    import torch
    import transformers as tf

    import saekit
    from saekit.schemas import InputError

    hf, _ = tiny_pair("llama", tmp_path)
    tokens = torch.zeros(1, 4, dtype=torch.long)
    # an HF module path still reads the module's output: model.layers.1 is TL's blocks.1.hook_resid_post
    torch.testing.assert_close(saekit.activations(hf, "model.layers.1", tokens),
                               saekit.activations(hf, "blocks.1.hook_resid_post", tokens))
    for name, match in [("blocks.3.hook_resid_pre", "has 3 blocks"), ("blocks.0.mlp.hook_pre", "not supported"),
                        ("model.layers.9", "no module"), ("hook_embed", "not supported")]:
        with pytest.raises(InputError, match=match):
            saekit.activations(hf, name, tokens)
    opt = tf.AutoModelForCausalLM.from_config(tf.OPTConfig(vocab_size=97, hidden_size=32, num_hidden_layers=1,
                                                            ffn_dim=64, num_attention_heads=2, word_embed_proj_dim=32))
    with pytest.raises(InputError, match="not mapped for model type 'opt'"):
        saekit.activations(opt, "blocks.0.hook_resid_pre", tokens)


@pytest.mark.parametrize("family", ["gpt2", "gemma2", "gemma3-multimodal"])
def test_unembedding_folds_the_final_norm_gain(family: str, tmp_path: Path) -> None:
    """W_U with the final norm's gain folded in, as TransformerLens' fold_ln gives it (Gemma's
    RMSNorm multiplies by 1 + weight; GPT-2's ln_f is a LayerNorm)."""
    import torch

    from saekit.harness.model import unembedding

    hf, tl = tiny_pair(family, tmp_path)
    if family == "gpt2":
        gain = hf.base_model.ln_f.weight
    else:
        gain = 1 + getattr(hf.base_model, "language_model", hf.base_model).norm.weight
    torch.testing.assert_close(unembedding(hf), gain[:, None] * tl.W_U)
