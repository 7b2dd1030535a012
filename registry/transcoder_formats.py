"""Transcoder sets in other libraries' layouts: circuit-tracer's, and folders of per-layer
SAELens or sparsify transcoders. (Single transcoders of SAELens, sparsify and Gemma Scope
are read by saekit.registry.formats, which calls here for sets.)

circuit-tracer 0.5.0 (``circuit_tracer/utils/hf_utils.py`` load_transcoders,
``transcoder/single_layer_transcoder.py`` load_relu_transcoder / SingleLayerTranscoder):

    config.yaml               model_name, model_kind: transcoder_set, feature_input_hook and
                              feature_output_hook (TransformerLens hook names under
                              ``blocks.{layer}.``), optional ``transcoders`` (one path per
                              layer, in layer order; default ``layer_{i}.safetensors``)
    layer_{i}.safetensors     W_enc [d_sae, d_model] (transposed to saekit's [d_in, d_sae]),
                              W_dec [d_sae, d_model], b_enc, b_dec,
                              activation_function.threshold (JumpReLU; else ReLU),
                              W_skip [d_model, d_model] (optional)

    forward: acts = act(x @ W_enc.T + b_enc); y = acts @ W_dec + b_dec (+ x @ W_skip.T)

circuit-tracer's stock loader knows ReLU and JumpReLU only. A TopK layer is written with its
k as the tensor ``activation_function.k`` (int64 scalar): circuit-tracer's strict
``load_state_dict`` then refuses the file rather than run it as ReLU, while a reader that
builds circuit-tracer's ``TopK(k)`` gets the same latents whenever at least k
pre-activations are positive (circuit-tracer's TopK keeps the k largest pre-activations
unrectified; saekit's, like sparsify's, the k largest of relu(pre)).

Hooks: circuit-tracer's ``mlp.hook_in`` / ``mlp.hook_out`` are the input and output of
block i's MLP module, saekit's ``model.layers.{i}.mlp`` (the Hugging Face module of the
Llama, Qwen and Gemma families, as circuit-tracer's own tl_nnsight_mapping.py maps them);
any other hook is kept as the TransformerLens name ``blocks.{i}.{hook}``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from saekit.registry import artifact as art
from saekit.schemas import ArtifactFormatError, InputError, SAEConfig, UnsupportedSAEError, safeio

if TYPE_CHECKING:
    from saekit.kernels.transcoder import Transcoder, TranscoderSet

CT_CONFIG = "config.yaml"
CT_TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec", "activation_function.threshold", "activation_function.k", "W_skip")
_LAYER_FILE = re.compile(r"^layer_(\d+)\.safetensors$")
_MODULE_HOOK = re.compile(r"^model\.layers\.(\d+)\.mlp$")
_TL_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")
# circuit-tracer hook suffix <-> saekit module, for the MLP's own input and output
_CT_MODULE_HOOKS = {"mlp.hook_in", "mlp.hook_out"}


def _hook_from_ct(suffix: str, layer: int) -> str:
    return f"model.layers.{layer}.mlp" if suffix in _CT_MODULE_HOOKS else f"blocks.{layer}.{suffix}"


def _hook_to_ct(hook: str | None, layer: int, side: str, where: str) -> str:
    """circuit-tracer's per-set hook suffix for a saekit hook of ``layer``."""
    m = _MODULE_HOOK.fullmatch(hook or "")
    if m and int(m[1]) == layer:
        return f"mlp.hook_{side}"
    m = _TL_HOOK.fullmatch(hook or "")
    if m and int(m[1]) == layer:
        return m[2]
    raise InputError(f"layer {layer}: hook {hook!r} has no circuit-tracer name (model.layers.{layer}.mlp or "
                     f"blocks.{layer}.<TransformerLens hook>)", where=where)


# --- circuit-tracer ----------------------------------------------------------------------


def read_circuit_tracer(src: Path, *, model_name: str | None = None, model_revision: str | None = None,
                        **_: Any) -> TranscoderSet:
    """A circuit-tracer transcoder set folder (config.yaml + one safetensors file per layer)."""
    from saekit.kernels.transcoder import Transcoder, TranscoderSet

    src = Path(src)
    where = str(src / CT_CONFIG)
    if not safeio.exists(src, CT_CONFIG):
        raise ArtifactFormatError("missing config.yaml (a circuit-tracer transcoder set)", where=str(src))
    cfg = safeio.load_yaml(safeio.read_bytes(src, CT_CONFIG), where=where)
    if not isinstance(cfg, dict):
        raise ArtifactFormatError("not a YAML mapping", where=where)
    kind = cfg.get("model_kind")
    if kind != "transcoder_set":
        raise UnsupportedSAEError(f"model_kind {kind!r} is not supported (transcoder_set only; cross-layer "
                                  "transcoders are not)", where=where)
    hooks = []
    for key in ("feature_input_hook", "feature_output_hook"):
        value = cfg.get(key)
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.]+", value):
            raise ArtifactFormatError(f"{key} must be a TransformerLens hook name, got {value!r}", where=where)
        hooks.append(value)
    files = _layer_paths(src, cfg, where)
    model = model_name or (cfg.get("model_name") if isinstance(cfg.get("model_name"), str) else None)
    layers: dict[int, Transcoder] = {}
    for layer, name in enumerate(files):
        path = src / name
        st = art.read_safetensors(path)
        fwhere = str(path)
        extra = sorted(set(st) - set(CT_TENSORS))
        if extra:
            raise UnsupportedSAEError(f"tensor {extra[0]!r} is not one circuit-tracer's transcoders hold "
                                      f"({', '.join(CT_TENSORS)})", where=fwhere)
        for need in ("W_enc", "W_dec", "b_enc", "b_dec"):
            if need not in st:
                raise ArtifactFormatError(f"missing tensor {need!r}", where=fwhere)
        if st["W_enc"].ndim != 2 or st["W_dec"].ndim != 2:
            raise ArtifactFormatError("W_enc and W_dec must be 2-d [d_transcoder, d_model]", where=fwhere)
        d_sae, d_in = st["W_enc"].shape
        d_out = st["W_dec"].shape[1]
        k = None
        if "activation_function.k" in st:
            kt = st["activation_function.k"]
            if kt.numel() != 1 or kt.is_floating_point():
                raise ArtifactFormatError("activation_function.k must be one integer", where=fwhere)
            k, activation = int(kt.item()), "topk"
            if "activation_function.threshold" in st:
                raise ArtifactFormatError("both a JumpReLU threshold and a TopK k", where=fwhere)
        else:
            activation = "jumprelu" if "activation_function.threshold" in st else "relu"
        skip = "W_skip" in st
        arch = {"relu": "transcoder", "jumprelu": "jumprelu_transcoder", "topk": "topk_transcoder"}[activation]
        if skip:
            arch = arch.replace("transcoder", "skip_transcoder")
        dtype = art._TORCH_DTYPE_NAMES.get(str(st["W_enc"].dtype))
        if dtype is None:
            raise ArtifactFormatError(f"tensor 'W_enc' has unsupported dtype {st['W_enc'].dtype}", where=fwhere)
        tensors = {"W_enc": st["W_enc"].T.contiguous(), "b_enc": st["b_enc"], "W_dec": st["W_dec"], "b_dec": st["b_dec"]}
        if activation == "jumprelu":
            tensors["threshold"] = st["activation_function.threshold"]
        if skip:
            tensors["W_skip"] = st["W_skip"]
        config = _config({
            "architecture": arch, "d_in": int(d_in), "d_sae": int(d_sae), "d_out": int(d_out), "k": k,
            "dtype": dtype, "model_name": model, "model_revision": model_revision,
            "hook_name": _hook_from_ct(hooks[0], layer), "hook_name_out": _hook_from_ct(hooks[1], layer),
            "provenance": {"library": "circuit_tracer", "source": f"circuit-tracer:{src.name}/{name}"},
        }, fwhere)
        tensors = {n: t.contiguous() for n, t in tensors.items()}
        art.check_tensors(tensors, config, where=fwhere)
        layers[layer] = Transcoder(config, tensors)
    return TranscoderSet(layers, model_name=model, model_revision=model_revision)


def _layer_paths(src: Path, cfg: dict[str, Any], where: str) -> list[str]:
    """The layer files in layer order: ``transcoders`` (file names in the folder; an
    ``hf://`` entry is taken by its file name), or every ``layer_{i}.safetensors``."""
    listed = cfg.get("transcoders")
    if listed is not None:
        if not isinstance(listed, list) or not listed or not all(isinstance(p, str) for p in listed):
            raise ArtifactFormatError("transcoders must be a list of paths, one per layer", where=where)
        names = [p.rsplit("/", 1)[-1] for p in listed]
        for n in names:
            if not n.endswith(".safetensors"):
                raise UnsupportedSAEError(f"transcoder file {n!r} is not safetensors (Gemma Scope npz sets: "
                                          "import each params.npz with --from gemmascope-transcoder)", where=where)
            safeio.check_relpath(n, where=where)
            if not safeio.exists(src, n):
                raise ArtifactFormatError(f"transcoder file {n!r} is not in the folder", where=where)
        return names
    found = {}
    for name in safeio.list_files(src):
        m = _LAYER_FILE.fullmatch(name)
        if m:
            found[int(m[1])] = name
    if not found:
        raise ArtifactFormatError("no layer_{i}.safetensors files", where=str(src))
    if sorted(found) != list(range(len(found))):
        raise ArtifactFormatError(f"layer files must be layer_0 .. layer_{len(found) - 1}, found layers "
                                  f"{sorted(found)}", where=str(src))
    return [found[i] for i in range(len(found))]


def _config(fields: dict[str, Any], where: str) -> SAEConfig:
    from pydantic import ValidationError

    try:
        return SAEConfig.model_validate(fields, strict=False)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "cfg"
        raise ArtifactFormatError(f"{loc}: {first['msg']}", where=where) from None


def circuit_tracer_files(tset: TranscoderSet, *, scan: str | None = None) -> dict[str, bytes]:
    """config.yaml and layer_{i}.safetensors of a set in circuit-tracer's layout (bytes by name).
    circuit-tracer needs layers 0..n-1 and one pair of hooks for the whole set."""
    import torch
    import yaml
    from safetensors.torch import save

    where = repr(tset)
    if tset.layers != list(range(len(tset))):
        raise InputError(f"circuit-tracer needs every layer from 0 (this set has layers {tset.layers})", where=where)
    suffixes = {(_hook_to_ct(tset[i].hook_in, i, "in", where), _hook_to_ct(tset[i].hook_out, i, "out", where))
                for i in tset.layers}
    if len(suffixes) != 1:
        raise InputError(f"circuit-tracer takes one pair of hooks for the whole set, these layers use {sorted(suffixes)}",
                         where=where)
    hook_in, hook_out = suffixes.pop()
    widths = {tset[i].d_sae for i in tset.layers}
    if len(widths) != 1:  # single_layer_transcoder.py TranscoderSet.__init__ asserts one d_transcoder
        raise InputError(f"circuit-tracer needs one width for every layer (this set has d_sae {sorted(widths)})",
                         where=where)
    files: dict[str, bytes] = {}
    for i in tset.layers:
        tc = tset[i]
        if tc.d_out != tc.d_in:
            raise InputError(f"layer {i}: circuit-tracer transcoders map d_model to d_model (d_in {tc.d_in}, "
                             f"d_out {tc.d_out})", where=where)
        t = {n: v.detach().cpu() for n, v in tc.tensors.items()}
        out = {"W_enc": t["W_enc"].T.contiguous(), "W_dec": t["W_dec"].contiguous(), "b_enc": t["b_enc"],
               "b_dec": t["b_dec"]}
        if "threshold" in t:
            out["activation_function.threshold"] = t["threshold"]
        if tc.cfg.k is not None:
            out["activation_function.k"] = torch.tensor(tc.cfg.k, dtype=torch.int64)
        if "W_skip" in t:
            out["W_skip"] = t["W_skip"].contiguous()
        files[f"layer_{i}.safetensors"] = save(out)
    config = {"model_name": tset.model_name, "model_kind": "transcoder_set", "feature_input_hook": hook_in,
              "feature_output_hook": hook_out, "scan": scan or f"saekit/{tset.model_name}",
              "transcoders": [f"layer_{i}.safetensors" for i in tset.layers]}
    files[CT_CONFIG] = yaml.safe_dump(config, sort_keys=False).encode()
    return files


# --- folders of per-layer transcoders (SAELens, sparsify) --------------------------------

_LAYER_IN_NAME = re.compile(r"(?:^|[._/])(?:layer_|layers\.|blocks\.|h\.)(\d+)(?:$|[._/])")


def layer_of(name: str) -> int | None:
    """The layer a folder or hook name names: layer_4, layers.4.mlp, blocks.4.hook_mlp_out."""
    m = _LAYER_IN_NAME.search(name)
    return int(m[1]) if m else None


def read_layer_folders(src: Path, read_one: Callable[..., Any], fmt: str, **context: Any) -> TranscoderSet:
    """A folder of per-layer transcoder folders (SAELens ``layer_{i}/`` or sparsify
    ``layers.{i}.mlp/``, as ``SparseCoder.load_many`` reads them) as one set: each subfolder is
    read with ``read_one``; its layer comes from the folder name (else its hook)."""
    from saekit.kernels.transcoder import Transcoder, TranscoderSet

    src = Path(src)
    subs = sorted({n.split("/", 1)[0] for n in safeio.list_files(src) if "/" in n})
    if not subs:
        raise ArtifactFormatError(f"no {fmt} checkpoint (cfg.json) and no per-layer folders", where=str(src))
    layers: dict[int, Transcoder] = {}
    for sub in subs:
        ctx = dict(context)
        if fmt == "sparsify" and ctx.get("hook_name") is None:  # the folder is the hookpoint, a module of
            # the base model (layers.N.mlp) or of the causal LM saekit hooks (model.layers.N.mlp)
            ctx["hook_name"] = f"model.{sub}" if sub.startswith("layers.") else sub
        one = read_one(src / sub, **ctx)
        if not isinstance(one, Transcoder):
            raise UnsupportedSAEError(f"{sub} is a {one.cfg.architecture} SAE; a set holds transcoders only",
                                      where=str(src / sub))
        layer = layer_of(sub)
        if layer is None:
            layer = layer_of(one.hook_in or "")
        if layer is None:
            raise ArtifactFormatError(f"cannot tell the layer of {sub!r} (name folders layer_<i>)", where=str(src))
        if layer in layers:
            raise ArtifactFormatError(f"two folders for layer {layer}", where=str(src / sub))
        layers[layer] = one
    return TranscoderSet(layers, model_name=context.get("model_name"), model_revision=context.get("model_revision"))


def saelens_set_files(tset: TranscoderSet) -> dict[str, bytes]:
    """layer_{i}/cfg.json + sae_weights.safetensors for each layer (sae-lens loadable)."""
    from safetensors.torch import save

    from saekit.kernels import architectures as archs

    files: dict[str, bytes] = {}
    for i in tset.layers:
        tc = tset[i]
        if archs.architecture(tc.cfg).saelens_name is None:
            raise InputError(f"layer {i}: sae-lens has no {tc.architecture} class (its transcoders: transcoder, "
                             "skip_transcoder, jumprelu_transcoder, jumprelu_skip_transcoder)", where=repr(tset))
        cfg = tc.cfg.to_saelens_dict()
        cfg.pop("saekit", None)
        files[f"layer_{i}/{art.CFG}"] = json.dumps(cfg, indent=2).encode()
        files[f"layer_{i}/{art.WEIGHTS}"] = save({k: v.detach().cpu().contiguous() for k, v in tc.tensors.items()})
    return files
