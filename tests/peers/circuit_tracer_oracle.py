"""Run INSIDE circuit-tracer's own venv (scripts/peer_venv.sh circuit-tracer): load a set
saekit exported with circuit-tracer 0.5.0's loader and write its outputs.

    python circuit_tracer_oracle.py SET_DIR INPUTS.safetensors OUTPUTS.safetensors

Inputs: x_{layer} [n, d_model]. Outputs: y_{layer} (forward, skip included) and acts_{layer}
(encode). ReLU/JumpReLU sets go through circuit-tracer's own ``load_transcoders`` (the path
``config.yaml`` users take). A TopK layer (k stored as ``activation_function.k``) must be
refused by that loader; it is then built as circuit-tracer's SingleLayerTranscoder with its
own TopK(k) activation. Tensors travel as safetensors, never pickle.
"""

import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

set_dir, inputs, outputs = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
config = yaml.safe_load((set_dir / "config.yaml").read_text())
config["transcoders"] = [str(set_dir / p) for p in config["transcoders"]]
config.setdefault("scan", "saekit-oracle")
xs = load_file(inputs)
topk = {i: int(load_file(p)["activation_function.k"]) for i, p in enumerate(config["transcoders"])
        if "activation_function.k" in load_file(p)}

from circuit_tracer.transcoder.activation_functions import TopK  # noqa: E402
from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder  # noqa: E402
from circuit_tracer.utils.hf_utils import load_transcoders  # noqa: E402

if topk:
    try:
        load_transcoders(config, device=torch.device("cpu"), dtype=torch.float32)
    except RuntimeError as err:
        assert "activation_function.k" in str(err), err
    else:
        raise SystemExit("circuit-tracer's loader accepted a TopK layer as ReLU")
    layers = {}
    for i, path in enumerate(config["transcoders"]):
        sd = load_file(path)
        k = sd.pop("activation_function.k", None)
        act = TopK(int(k)) if k is not None else (
            torch.nn.functional.relu if "activation_function.threshold" not in sd else None)
        if act is None:
            from circuit_tracer.transcoder.activation_functions import JumpReLU
            act = JumpReLU(sd["activation_function.threshold"], 0.1)
        d_sae, d_model = sd["W_enc"].shape
        tc = SingleLayerTranscoder(d_model, d_sae, act, i, skip_connection="W_skip" in sd,
                                   device=torch.device("cpu"), dtype=torch.float32)
        tc.load_state_dict(sd)
        layers[i] = tc
else:
    tset = load_transcoders(config, device=torch.device("cpu"), dtype=torch.float32)
    layers = {i: tset[i] for i in range(len(tset))}
out = {}
with torch.no_grad():
    for name, x in xs.items():
        i = int(name.split("_")[1])
        out[f"y_{i}"] = layers[i](x).contiguous()
        out[f"acts_{i}"] = layers[i].encode(x).contiguous()
save_file(out, outputs)
print("ok", sorted(out))
