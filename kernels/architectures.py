"""The one table of SAE architectures and input normalisations, used by registry, kernels
and harness alike: which tensors each architecture has, their shapes, and which saved
settings saekit computes exactly as sae-lens does. Everything else is refused with one
line (``UnsupportedSAEError``, CLI exit 2), never loaded with different maths.

Maths, from sae-lens 6.54.12 (``site-packages/sae_lens/saes/``), for one token x:

    sae_in = norm_in(x.to(dtype)) - b_dec * apply_b_dec_to_input      sae.py SAE.process_sae_in
    standard  acts = relu(sae_in @ W_enc + b_enc)                      standard_sae.py StandardSAE.encode
    topk      pre = sae_in @ W_enc + b_enc (* ||W_dec[i]|| if rescale_acts_by_decoder_norm);
              acts = relu(top k of pre), others 0                      topk_sae.py TopKSAE.encode, TopK.forward
    jumprelu  pre = sae_in @ W_enc + b_enc; acts = relu(pre) * (pre > threshold)
                                                                       jumprelu_sae.py JumpReLUSAE.encode
    gated     gate = (sae_in @ W_enc + b_gate > 0);
              acts = gate * relu(sae_in @ (W_enc * exp(r_mag)) + b_mag) gated_sae.py GatedSAE.encode
    decode    x_hat = norm_out(acts @ W_dec + b_dec)  (topk with rescale: acts / ||W_dec[i]||)
                                                                       *_sae.py decode, topk_sae.py act_times_W_dec

BatchTopK and Matryoshka BatchTopK SAEs are saved by sae-lens for inference as JumpReLU
SAEs (batchtopk_sae.py ``BatchTopKTrainingSAEConfig.get_inference_config_class`` returns
JumpReLUSAEConfig; ``process_state_dict_for_saving_inference`` turns topk_threshold into a
constant ``threshold``): their cfg.json says "jumprelu" and they load as such.
saekit's own ``batchtopk`` architecture (not a sae-lens inference class) encodes a per-token
top k, like ``topk``.

Transcoders (sae-lens saes/transcoder.py; sparsify sparse_coder.py with transcode=True), for
one token x [d_in] predicting y [d_out]:

    sae_in = x.to(dtype)                      (no b_dec shift: b_dec is d_out wide)
    pre = sae_in @ W_enc + b_enc; acts = relu(pre) | relu(pre) * (pre > threshold) | top k of relu(pre)
    y_hat = acts @ W_dec + b_dec (+ x @ W_skip.T for the skip variants)

Input normalisation (sae.py ``SAE._setup_activation_normalization``):

    none                    identity
    layer_norm              mu = mean(x), s = std(x) (unbiased, torch.std), eps 1e-5:
                            in: (x - mu) / (s + eps); out: y * s + mu
    constant_norm_rescale   c = sqrt(d_in) / ||x||; in: x * c; out: y / c
    expected_average_only_in  a training-time scaling factor s that sae-lens folds into the
                            weights (``SAE.fold_activation_norm_scaling_factor``: W_enc *= s,
                            W_dec /= s, b_dec /= s; ``from_pretrained`` does so with the
                            release's norm_scaling_factor). With s in cfg.json
                            (``norm_scaling_factor``) saekit applies the same maths at run
                            time: in: x * s; out: y / s. Without s it is refused (sae-lens'
                            own ``load_from_disk`` would silently run without it).
    covariance_whitening    refused: sae-lens folds it at the end of training and saves
                            "none"; a cfg that still says it has no whitening to apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saekit.schemas import SAEConfig, UnsupportedSAEError

# tensor name -> shape in terms of d_in / d_sae / d_out (d_out = d_in for SAEs)
SHAPES: dict[str, tuple[str, ...]] = {
    "W_enc": ("d_in", "d_sae"),
    "b_enc": ("d_sae",),
    "W_dec": ("d_sae", "d_out"),
    "b_dec": ("d_out",),
    "W_skip": ("d_out", "d_in"),
    "threshold": ("d_sae",),
    "b_gate": ("d_sae",),
    "r_mag": ("d_sae",),
    "b_mag": ("d_sae",),
}


@dataclass(frozen=True)
class Architecture:
    """One architecture saekit computes: its tensors and its sae-lens name."""

    name: str
    saelens_name: str | None
    """cfg.json "architecture" sae-lens writes for it (None: not a sae-lens inference class)."""
    tensors: tuple[str, ...]
    """Tensors its weights file must hold (sae-lens state_dict names)."""
    encoder_bias: str
    """The per-latent encoder bias SAEBench reports (core/main.py get_featurewise_weight_based_metrics)."""
    topk: bool = False
    transcoder: bool = False
    """Predicts a module's output (d_out wide) from its input; see kernels.transcoder."""
    activation: str = ""
    """Transcoders: relu, jumprelu or topk (relu, then the k largest; sparsify's fused_encoder)."""
    skip: bool = False
    """Transcoders: a linear skip term x @ W_skip.T is added to the output."""
    b_dec_in: bool = True
    """Whether b_dec may shift the input (cfg.apply_b_dec_to_input). False for transcoders:
    sae-lens' Transcoder.process_sae_in and sparsify's encode (``if not self.cfg.transcode``)
    never subtract it."""


def _tc(name: str, saelens: str | None, activation: str, skip: bool) -> Architecture:
    tensors = ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if activation == "jumprelu" else ())
    return Architecture(name, saelens, tensors + (("W_skip",) if skip else ()), "b_enc",
                        topk=activation == "topk", transcoder=True, activation=activation, skip=skip,
                        b_dec_in=False)


_BASE = ("W_enc", "W_dec", "b_dec")
ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("relu", "standard", _BASE + ("b_enc",), "b_enc"),
        Architecture("topk", "topk", _BASE + ("b_enc",), "b_enc", topk=True),
        Architecture("batchtopk", None, _BASE + ("b_enc",), "b_enc", topk=True),
        Architecture("jumprelu", "jumprelu", _BASE + ("b_enc", "threshold"), "b_enc"),
        Architecture("gated", "gated", _BASE + ("b_gate", "r_mag", "b_mag"), "b_mag"),
        # transcoders: sae-lens 6.54.12 saes/transcoder.py (its four classes), sparsify 1.3.3
        # sparse_coder.py with transcode=True (TopK, with or without skip_connection)
        _tc("transcoder", "transcoder", "relu", False),
        _tc("skip_transcoder", "skip_transcoder", "relu", True),
        _tc("jumprelu_transcoder", "jumprelu_transcoder", "jumprelu", False),
        _tc("jumprelu_skip_transcoder", "jumprelu_skip_transcoder", "jumprelu", True),
        _tc("topk_transcoder", None, "topk", False),
        _tc("topk_skip_transcoder", None, "topk", True),
    )
}
# sae-lens cfg.json name -> saekit name
FROM_SAELENS = {a.saelens_name: a.name for a in ARCHITECTURES.values() if a.saelens_name}
TO_SAELENS = {a.name: a.saelens_name for a in ARCHITECTURES.values() if a.saelens_name}

# normalisations applied at run time, on the way in and out
RUNTIME_NORMS = ("none", "layer_norm", "constant_norm_rescale")
LAYER_NORM_EPS = 1e-5  # sae.py run_time_activation_ln_in(x, eps=1e-5)
SCALED_NORM = "expected_average_only_in"
DTYPES = ("float32", "bfloat16", "float16", "float64")


def architecture(cfg: SAEConfig) -> Architecture:
    return ARCHITECTURES[cfg.architecture]


def shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """Expected shape of every tensor name saekit knows, for this config."""
    dims = {"d_in": cfg.d_in, "d_sae": cfg.d_sae, "d_out": cfg.d_out or cfg.d_in}
    return {name: tuple(dims[d] for d in dim) for name, dim in SHAPES.items()}


def check_raw_cfg(raw: dict[str, Any], where: str) -> None:
    """Refuse, with one line, a sae-lens cfg.json whose settings saekit does not compute
    exactly as sae-lens (before it becomes an SAEConfig)."""
    arch = raw.get("architecture", "standard")
    if arch not in FROM_SAELENS and arch not in ARCHITECTURES:
        known = ", ".join(sorted(set(FROM_SAELENS) | set(ARCHITECTURES)))
        raise UnsupportedSAEError(f"architecture {arch!r} is not supported (supported: {known})", where=where)
    reshape = raw.get("reshape_activations", "none")
    if reshape not in (None, "none"):
        raise UnsupportedSAEError(f"reshape_activations {reshape!r} is not supported (only 'none')", where=where)
    check_norm(raw.get("normalize_activations", "none"), raw, where)
    dtype = raw.get("dtype", "float32")
    if isinstance(dtype, str) and dtype.removeprefix("torch.") not in DTYPES:
        raise UnsupportedSAEError(f"dtype {dtype!r} is not supported ({', '.join(DTYPES)})", where=where)


def check_norm(norm: Any, raw: dict[str, Any] | None, where: str) -> None:
    if norm in RUNTIME_NORMS:
        return
    if norm == SCALED_NORM:
        factor = scaling_factor(raw or {})
        if factor is None:
            raise UnsupportedSAEError(
                "normalize_activations 'expected_average_only_in' without a scaling factor "
                "(give norm_scaling_factor in cfg.json to fold it in)", where=where,
            )
        return
    raise UnsupportedSAEError(
        f"normalize_activations {norm!r} is not supported (none, layer_norm, constant_norm_rescale, "
        f"expected_average_only_in with norm_scaling_factor)", where=where,
    )


def scaling_factor(raw: dict[str, Any]) -> float | None:
    """The expected_average_only_in scaling factor a cfg.json carries, if any: sae-lens'
    pretrained_saes.yaml calls it ``norm_scaling_factor`` (sae.py get_norm_scaling_factor);
    a training run saves it in activation_scaler.json as ``scaling_factor``."""
    for key in ("norm_scaling_factor", "scaling_factor"):
        for src in (raw, raw.get("metadata") or {}):
            v = src.get(key) if isinstance(src, dict) else None
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
                return float(v)
    return None


def check_supported(cfg: SAEConfig, where: str) -> None:
    """Refuse an SAEConfig whose settings saekit does not compute exactly as sae-lens."""
    if cfg.architecture not in ARCHITECTURES:
        raise UnsupportedSAEError(f"architecture {cfg.architecture!r} is not supported", where=where)
    check_norm(cfg.normalize_activations, {"norm_scaling_factor": cfg.norm_scaling_factor}, where)
    arch = ARCHITECTURES[cfg.architecture]
    if arch.transcoder and cfg.normalize_activations != "none":
        # sae-lens normalises a transcoder's input but never undoes it on the output
        # (transcoder.py Transcoder.decode); no transcoder saekit imports is saved that way
        raise UnsupportedSAEError(
            f"normalize_activations {cfg.normalize_activations!r} on a transcoder is not supported (only 'none')",
            where=where,
        )
    if cfg.apply_b_dec_to_input and not arch.b_dec_in:
        raise UnsupportedSAEError(f"apply_b_dec_to_input on a {cfg.architecture} is not supported", where=where)
    if cfg.rescale_acts_by_decoder_norm and cfg.architecture != "topk":
        raise UnsupportedSAEError(
            f"rescale_acts_by_decoder_norm on a {cfg.architecture} SAE is not supported (topk only)", where=where
        )
