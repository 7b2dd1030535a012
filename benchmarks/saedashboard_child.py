"""SAEDashboard's feature data for the demo SAE, run in an environment of its own.

Run by benchmarks/saedashboard.py with the Python of a separate virtual environment that
holds sae-dashboard 0.8.0 and its pins (TransformerLens 2.x, transformers < 4.57): they
clash with saekit's. Never imports saekit.

TransformerLens 2.17 does not list SmolLM2, so the HookedSAETransformer is built from the
same converted checkpoint saekit uses (a LlamaForCausalLM: TransformerLens' own Llama config
mapping, loading_from_pretrained.py convert_hf_model_config, with SmolLM2's rope theta) and
its logits are checked against transformers' before anything is timed.

    python saedashboard_child.py MODEL_DIR SAE_DIR TOKENS.safetensors LAYER OUT.json
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch


def hooked_model(model_dir: Path):
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
    from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast

    # transformers 4.56 reads rope_theta, not transformers 5's rope_parameters
    tmp = Path(tempfile.mkdtemp())
    for f in model_dir.iterdir():
        if f.name.endswith((".safetensors", ".json")) and not f.name.startswith(("config", "tokenizer")):
            (tmp / f.name).symlink_to(f)
    conf = json.loads((model_dir / "config.json").read_text())
    conf["rope_theta"] = conf.get("rope_parameters", {}).get("rope_theta", 10000.0)
    (tmp / "config.json").write_text(json.dumps(conf))
    hf = LlamaForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))  # v5's config names a v5 class
    tok.bos_token, tok.eos_token = tok.convert_ids_to_tokens(c_ids := [conf["bos_token_id"], conf["eos_token_id"]])
    tok.pad_token = tok.convert_ids_to_tokens(conf.get("pad_token_id", c_ids[1]))
    tok.save_pretrained(tmp / "tok")  # a v4 tokenizer folder: TransformerLens reloads it by path
    tok = AutoTokenizer.from_pretrained(tmp / "tok")
    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.hidden_size // c.num_attention_heads, n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=2048, eps=c.rms_norm_eps,
        d_vocab=c.vocab_size, act_fn=c.hidden_act, n_key_value_heads=c.num_key_value_heads,
        normalization_type="RMS", positional_embedding_type="rotary", rotary_adjacent_pairs=False,
        rotary_dim=c.hidden_size // c.num_attention_heads, rotary_base=conf["rope_theta"], final_rms=True,
        gated_mlp=True, original_architecture="LlamaForCausalLM", dtype=torch.float32, device="cpu",
        default_prepend_bos=False,
    )
    state = convert_llama_weights(hf, cfg)
    model = HookedSAETransformer(cfg, tokenizer=tok)
    model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False)
    model.eval()
    probe = torch.tensor([[1, 504, 3458, 314, 260, 1789, 30, 216, 1423, 28]])
    with torch.no_grad():
        diff = (model(probe) - hf(probe).logits).abs().max().item()
    shutil.rmtree(tmp, ignore_errors=True)
    return model, diff


def main() -> None:
    model_dir, sae_dir, tokens_path, layer, out = sys.argv[1:6]
    from safetensors.torch import load_file
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner
    from sae_lens import SAE

    torch.set_num_threads(int(sys.argv[6]) if len(sys.argv) > 6 else torch.get_num_threads())
    t0 = time.perf_counter()
    model, diff = hooked_model(Path(model_dir))
    if diff > 1e-3:
        raise SystemExit(f"TransformerLens model differs from transformers: max |logit diff| {diff}")
    hook = f"blocks.{layer}.hook_resid_post"  # the output of decoder layer `layer` (saekit's model.layers.L)
    sae = SAE.load_from_disk(sae_dir, device="cpu")
    sae.cfg.metadata.hook_name = hook
    # SaeVisRunner folds the decoder norms into the encoder, which sae-lens refuses for TopK
    # SAEs (it could change the top k). The demo SAE's decoder rows are unit-norm, so the fold
    # is the identity: check that, then skip it.
    norms = sae.W_dec.norm(dim=1)
    if (norms - 1).abs().max() > 1e-5:
        raise SystemExit("decoder rows are not unit-norm: SAEDashboard cannot fold them for a TopK SAE")
    sae.fold_W_dec_norm = lambda: None
    tokens = load_file(tokens_path)["tokens"].long()
    t_load = time.perf_counter() - t0
    cfg = SaeVisConfig(hook_point=hook, features=range(int(sys.argv[7]) if len(sys.argv) > 7 else sae.cfg.d_sae), minibatch_size_features=256,
                       minibatch_size_tokens=64, device="cpu", dtype="float32", verbose=False)
    t = time.perf_counter()
    data = SaeVisRunner(cfg).run(encoder=sae, model=model, tokens=tokens)
    t_run = time.perf_counter() - t
    n = len(data.feature_data_dict)
    Path(out).write_text(json.dumps({
        "load_s": round(t_load, 2), "run_s": round(t_run, 2), "features": n, "tokens": int(tokens.numel()),
        "max_logit_diff_vs_transformers": diff, "torch_threads": torch.get_num_threads(),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == "__main__":
    main()
