"""circuit-tracer 0.5.0's attribution graph of a small Llama, run in circuit-tracer's own venv
(its pins clash with saekit's): the oracle of tests/circuits/test_oracle.py.

    python ct_oracle.py DIR

DIR holds what the test wrote: ``config.json`` (the model's shapes, the prompt's token ids,
the logit token ids, the batch size, max_feature_nodes, update_interval),
``model.safetensors`` (Hugging Face Llama tensor names) and ``layer_{i}.safetensors``
(circuit-tracer's transcoder format: W_enc [d_sae, d_model], W_dec, b_enc, b_dec, W_skip,
activation_function.threshold). Writes ``ct_graph.safetensors`` (adjacency, active_features,
selected_features, activation_values, logit_probabilities, logits, prune_graph's masks and
cumulative scores, compute_graph_scores) into DIR.
Data pass as safetensors and JSON only, never pickle.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformerConfig

from circuit_tracer.attribution.attribute import attribute
from circuit_tracer.graph import compute_graph_scores, prune_graph
from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
from circuit_tracer.transcoder.single_layer_transcoder import TranscoderSet, load_relu_transcoder


class Tokenizer:
    """What attribute() asks of a tokenizer, for a vocabulary of numbered tokens."""

    def __init__(self, vocab: int):
        self.vocab_size = vocab
        self.all_special_ids = [0]
        self.bos_token_id = 0
        self.padding_side = "right"

    def decode(self, ids) -> str:
        ids = [ids] if isinstance(ids, int) else list(ids)
        return " ".join(f"t{int(i)}" for i in ids)


def tl_state_dict(hf: dict[str, torch.Tensor], c: dict) -> dict[str, torch.Tensor]:
    """Hugging Face Llama tensors under TransformerLens names (weights only: no biases)."""
    n, kv, dh = c["n_heads"], c["n_kv"], c["d_head"]
    sd = {"embed.W_E": hf["model.embed_tokens.weight"], "ln_final.w": hf["model.norm.weight"],
          "unembed.W_U": hf.get("lm_head.weight", hf["model.embed_tokens.weight"]).T.contiguous()}
    for i in range(c["n_layers"]):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        sd[b + "ln1.w"] = hf[p + "input_layernorm.weight"]
        sd[b + "ln2.w"] = hf[p + "post_attention_layernorm.weight"]
        q = hf[p + "self_attn.q_proj.weight"]
        sd[b + "attn.W_Q"] = q.reshape(n, dh, -1).transpose(1, 2).contiguous()
        sd[b + "attn._W_K"] = hf[p + "self_attn.k_proj.weight"].reshape(kv, dh, -1).transpose(1, 2).contiguous()
        sd[b + "attn._W_V"] = hf[p + "self_attn.v_proj.weight"].reshape(kv, dh, -1).transpose(1, 2).contiguous()
        sd[b + "attn.W_O"] = hf[p + "self_attn.o_proj.weight"].T.reshape(n, dh, -1).contiguous()
        sd[b + "mlp.W_gate"] = hf[p + "mlp.gate_proj.weight"].T.contiguous()
        sd[b + "mlp.W_in"] = hf[p + "mlp.up_proj.weight"].T.contiguous()
        sd[b + "mlp.W_out"] = hf[p + "mlp.down_proj.weight"].T.contiguous()
    return sd


def main(folder: Path) -> None:
    c = json.loads((folder / "config.json").read_text())
    cfg = HookedTransformerConfig(
        n_layers=c["n_layers"], d_model=c["d_model"], n_ctx=64, d_head=c["d_head"], n_heads=c["n_heads"],
        n_key_value_heads=c["n_kv"], d_mlp=c["d_mlp"], d_vocab=c["vocab"], act_fn="silu", eps=c["eps"],
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=c["d_head"],
        rotary_base=c["rope_theta"], rotary_adjacent_pairs=False, gated_mlp=True, final_rms=True,
        original_architecture="LlamaForCausalLM", model_name="tiny-llama", tokenizer_name=None,
        default_prepend_bos=False, dtype=torch.float32, device="cpu",
    )
    model = TransformerLensReplacementModel(cfg)
    missing, unexpected = model.load_state_dict(tl_state_dict(load_file(folder / "model.safetensors"), c),
                                                strict=False)
    assert not unexpected, unexpected
    with torch.no_grad():  # the biases TransformerLens adds (Llama has none) stay zero
        for name, p in model.named_parameters():
            if name in missing:
                assert name.rsplit(".", 1)[-1].lstrip("_").startswith("b_"), name
                p.zero_()
    model.tokenizer = Tokenizer(c["vocab"])
    transcoders = {i: load_relu_transcoder(str(folder / f"layer_{i}.safetensors"), i, device=torch.device("cpu"),
                                           lazy_encoder=False, lazy_decoder=False)
                   for i in range(c["n_layers"])}
    tset = TranscoderSet(transcoders, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out",
                         scan="tiny-llama")
    model._configure_replacement_model(tset)
    tokens = torch.tensor(c["tokens"])
    with torch.no_grad():
        logits = model(tokens[None])[0]
    graph = attribute(tokens, model, attribution_targets=torch.tensor(c["logit_tokens"]),
                      batch_size=c["batch_size"], max_feature_nodes=c.get("max_feature_nodes"),
                      update_interval=c.get("update_interval", 4))
    pruned = prune_graph(graph, node_threshold=c["node_threshold"], edge_threshold=c["edge_threshold"])
    replacement, completeness = compute_graph_scores(graph)
    save_file({
        "node_mask": pruned.node_mask.contiguous(),
        "edge_mask": pruned.edge_mask.contiguous(),
        "cumulative_scores": pruned.cumulative_scores.contiguous(),
        "scores": torch.tensor([replacement, completeness]),
        "adjacency": graph.adjacency_matrix.contiguous(),
        "active_features": graph.active_features.contiguous(),
        "selected_features": graph.selected_features.contiguous(),
        "activation_values": graph.activation_values.contiguous(),
        "logit_probabilities": graph.logit_probabilities.contiguous(),
        "logits": logits.contiguous(),
    }, folder / "ct_graph.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
