"""Importers from other SAE libraries into the canonical artifact, and exporters back.

Formats and where their layout is defined:

- ``saelens``: a folder written by SAELens' ``SAE.save_model`` (sae_lens/saes/sae.py):
  cfg.json (v6 keys) + sae_weights.safetensors with SAELens names; the canonical layout.
- ``sparsify``: a folder written by EleutherAI sparsify's ``SparseCoder.save_to_disk``
  (sparsify/sparse_coder.py): cfg.json (SparseCoderConfig + d_in) + sae.safetensors with
  encoder.weight [d_sae, d_in], encoder.bias [d_sae], W_dec [d_sae, d_in], b_dec [d_in].
  Encodes ``topk(relu(encoder(x - b_dec)))``.
- ``gemmascope``: a Gemma Scope ``params.npz`` (google/gemma-scope on the Hub; the Gemma
  Scope tutorial's JumpReLUSAE): W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec,
  threshold; ``acts = (pre > threshold) * relu(pre)`` with ``pre = x @ W_enc + b_enc``
  (no b_dec subtracted from the input).
- ``openai``: an openai/sparse_autoencoder ``Autoencoder.state_dict()`` saved with
  torch.save (sparse_autoencoder/model.py): encoder.weight [d_sae, d_in] (encoder.bias if
  present), decoder.weight [d_in, d_sae], pre_bias [d_in], latent_bias [d_sae],
  stats_last_nonzero, "activation" ("ReLU" | "TopK") and "activation_state_dict" {"k"}.
  ``latents = activation(encoder(LN?(x) - pre_bias) + latent_bias)``; TopK checkpoints
  normalise inputs with LN (``Autoencoder.from_state_dict``: "normalize = activation == TopK"),
  recorded here as SAELens' ``normalize_activations = "layer_norm"`` (same LN, eps 1e-5).

Nothing here unpickles: ``allow_pickle=False`` for npy, ``torch.load(weights_only=True)``.
Each file is opened once (``safeio.open_regular``: O_NOFOLLOW, fstat) and read only from
that descriptor, so a file swapped for a link after the tree check is never read. Every
tensor's declared shape is checked against the bytes it has before it is materialised
(``artifact.check_shape``), and its dtype against the config (``artifact.check_tensors``).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saekit.registry import artifact as art
from saekit.registry import transcoder_formats as tf
from saekit.registry import transcoder_set as tset
from saekit.schemas import ArtifactFormatError, InputError, NotFoundError, SaekitError, SAEConfig, safeio

if TYPE_CHECKING:
    from saekit.kernels import SAE
    from saekit.kernels.transcoder import TranscoderSet

IMPORT_FORMATS = ("saekit", "saelens", "sparsify", "gemmascope", "gemmascope-transcoder", "openai", "circuit-tracer")
EXPORT_FORMATS = ("saelens", "sparsify", "circuit-tracer")


def _context(cfg: dict[str, Any], model_name, hook_name, model_revision) -> dict[str, Any]:
    for key, value in (("model_name", model_name), ("hook_name", hook_name), ("model_revision", model_revision)):
        if value is not None:
            cfg[key] = value
    return cfg


def _config(fields: dict[str, Any], where: str) -> SAEConfig:
    from pydantic import ValidationError

    try:
        return SAEConfig.model_validate(fields, strict=False)
    except ValidationError as err:
        raise ArtifactFormatError(_first_error(err), where=where) from None


def _first_error(err: Any) -> str:
    """A pydantic ValidationError as one line: the first field and what is wrong with it."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "cfg"
    return f"{loc}: {first['msg']}"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise NotFoundError("no such file", where=str(path))
    try:
        d = safeio.load_json(safeio.read_bytes(path.parent, path.name), where=str(path))
    except InputError as err:
        raise ArtifactFormatError(err.message, where=err.where) from None
    if not isinstance(d, dict):
        raise ArtifactFormatError("not a JSON object", where=str(path))
    return d


def _dtype_of(t: Any, name: str, where: str) -> str:
    """The config dtype of a checkpoint whose format records none: its tensor ``name``'s
    (the others must then agree with it, as with any config)."""
    dtype = art._TORCH_DTYPE_NAMES.get(str(t.dtype))
    if dtype is None:
        raise ArtifactFormatError(f"tensor {name!r} has unsupported dtype {t.dtype}", where=where)
    return dtype


def _make(cfg: SAEConfig, tensors: dict[str, Any], where: str, source: str) -> SAE:
    from saekit.kernels import SAE, Transcoder

    prov = cfg.provenance.model_copy(update={"source": source})
    cfg = cfg.model_copy(update={"provenance": prov})
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    art.check_tensors(tensors, cfg, where=where)
    return (Transcoder if cfg.is_transcoder else SAE)(cfg, tensors)


# --- readers ---------------------------------------------------------------------------


def read_saelens(src: Path, **context: Any) -> SAE:
    """A folder written by SAELens' ``SAE.save_model``; a folder of such folders (one
    transcoder per layer) is a transcoder set."""
    src = Path(src)
    if src.is_dir() and not safeio.exists(src, art.CFG):
        return tf.read_layer_folders(src, read_saelens, "saelens", **context)
    cfg = art.read_cfg(src / art.CFG)
    update = {k: v for k, v in context.items() if v is not None and getattr(cfg, k) is None}
    cfg = cfg.model_copy(update=update)
    tensors = art.read_safetensors(src / art.WEIGHTS)
    return _make(cfg, tensors, str(src / art.WEIGHTS), f"saelens:{src.name}")


def read_sparsify(src: Path, **context: Any) -> SAE:
    """A folder written by sparsify's ``SparseCoder.save_to_disk`` (an SAE, or a TopK
    transcoder with ``transcode``); a folder of hookpoint folders (``SparseCoder.load_many``)
    is a transcoder set."""
    from pydantic import ValidationError

    src = Path(src)
    if src.is_dir() and not safeio.exists(src, "cfg.json"):
        return tf.read_layer_folders(src, read_sparsify, "sparsify", **context)
    raw = _read_json(src / "cfg.json")
    if "d_in" not in raw:
        raise ArtifactFormatError("missing key 'd_in' (written by SparseCoder.save_to_disk)",
                                  where=str(src / "cfg.json"))
    path = src / "sae.safetensors"
    st = art.read_safetensors(path)
    names = ("encoder.weight", "encoder.bias", "W_dec", "b_dec") + (("W_skip",) if raw.get("skip_connection") else ())
    missing = [k for k in names if k not in st]
    if missing:
        raise ArtifactFormatError(f"missing tensor {missing[0]!r}", where=str(path))
    extra = sorted(set(st) - set(names))
    if extra:
        raise ArtifactFormatError(f"tensor {extra[0]!r} is not a tensor of a sparsify SAE", where=str(path))
    context = {**{k: v for k, v in context.items() if v is not None},
               "dtype": _dtype_of(st["encoder.weight"], "encoder.weight", str(path))}
    try:
        cfg = SAEConfig.from_sparsify_dict(raw, **context)
    except ValidationError as err:
        raise ArtifactFormatError(_first_error(err), where=str(src / "cfg.json")) from None
    except (ValueError, KeyError) as err:
        raise ArtifactFormatError(str(err).splitlines()[0], where=str(src / "cfg.json")) from None
    cfg = cfg.model_copy(update={"provenance": cfg.provenance.model_copy(update={"library": "sparsify"})})
    if st["encoder.weight"].shape != (cfg.d_sae, cfg.d_in):
        raise ArtifactFormatError(
            f"tensor 'encoder.weight' has shape {tuple(st['encoder.weight'].shape)}, expected {(cfg.d_sae, cfg.d_in)}",
            where=str(path),
        )
    tensors = {"W_enc": st["encoder.weight"].T, "b_enc": st["encoder.bias"], "W_dec": st["W_dec"], "b_dec": st["b_dec"]}
    if "W_skip" in st:
        tensors["W_skip"] = st["W_skip"]
    return _make(cfg, tensors, str(path), f"sparsify:{src.name}")


GEMMASCOPE_ARRAYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def read_gemmascope_transcoder(src: Path, **context: Any) -> SAE:
    """A Gemma Scope transcoder ``params.npz`` (google/gemma-scope-2b-pt-transcoders: the
    same arrays as its SAEs, W_dec [d_sae, d_out]); sae-lens reads it as a
    jumprelu_transcoder (pretrained_sae_loaders.py gemma_2_transcoder_huggingface_loader)."""
    return read_gemmascope(src, transcoder=True, **context)


def read_gemmascope(src: Path, *, transcoder: bool = False, **context: Any) -> SAE:
    """A Gemma Scope ``params.npz`` (or the folder holding it)."""
    import numpy as np
    import torch

    src = Path(src)
    path = src / "params.npz" if src.is_dir() else src
    where = str(path)
    with safeio.open_regular(path.parent, path.name) as f:  # opened once; read only from f
        arrays = _read_npz(f, GEMMASCOPE_ARRAYS, where)
    if arrays["W_enc"].ndim != 2:
        raise ArtifactFormatError(f"array 'W_enc' has shape {arrays['W_enc'].shape}, expected [d_in, d_sae]",
                                  where=where)
    d_in, d_sae = arrays["W_enc"].shape
    tensors = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in arrays.items()}
    shape = {"architecture": "jumprelu"}
    if transcoder:
        if arrays["W_dec"].ndim != 2:
            raise ArtifactFormatError(f"array 'W_dec' has shape {arrays['W_dec'].shape}, expected [d_sae, d_out]",
                                      where=where)
        shape = {"architecture": "jumprelu_transcoder", "d_out": int(arrays["W_dec"].shape[1]),
                 "hook_name_out": context.get("hook_name_out")}
    fields = _context({**shape, "d_in": int(d_in), "d_sae": int(d_sae),
                       "dtype": _dtype_of(tensors["W_enc"], "W_enc", where),
                       "apply_b_dec_to_input": False, "provenance": {"library": "gemma_scope"}}, **_ctx(context))
    cfg = _config(fields, where)
    return _make(cfg, tensors, where, f"gemmascope:{path.name}")


# A zip member is read up to its declared size (zipfile stops there and checks the CRC), so
# the declared sizes bound memory; weights barely compress, a bomb compresses ~1000:1.
ZIP_MAX_BYTES = 64 << 30
ZIP_MAX_RATIO = 100


def _check_zip_sizes(infos: list[zipfile.ZipInfo], where: str) -> None:
    if sum(i.file_size for i in infos) > ZIP_MAX_BYTES:
        raise ArtifactFormatError(f"expands to more than {ZIP_MAX_BYTES} bytes", where=where)
    for i in infos:
        if i.file_size > (64 << 20) and i.file_size > ZIP_MAX_RATIO * max(i.compress_size, 1):
            raise ArtifactFormatError(f"member {i.filename!r} expands {i.file_size // max(i.compress_size, 1)}:1 "
                                      f"(a zip bomb; weights do not compress like that)", where=where)


def _read_npz(f: Any, names: tuple[str, ...], where: str) -> dict[str, Any]:
    """Exactly the arrays ``names`` of an .npz read from the open file ``f``: each member's
    .npy header (format: numpy.lib.format) is checked against the bytes the member holds
    before numpy allocates the array; a member outside ``names`` is refused."""
    from numpy.lib import format as npy

    headers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    out = {}
    try:
        with zipfile.ZipFile(f) as z:
            infos = z.infolist()
            _check_zip_sizes(infos, where)
            members = {i.filename.removesuffix(".npy"): i for i in infos}
            for name in members:
                if name not in names:
                    raise ArtifactFormatError(f"array {name!r} is not one of {', '.join(names)}", where=where)
            for name in names:
                if name not in members:
                    raise ArtifactFormatError(f"missing array {name!r}", where=where)
                info = members[name]
                with z.open(info) as m:
                    version = npy.read_magic(m)
                    if version not in headers:
                        raise ArtifactFormatError(f"array {name!r}: .npy version {version} is not supported",
                                                  where=where)
                    shape, _, dtype = headers[version](m)
                    if dtype.hasobject:
                        raise ArtifactFormatError(f"array {name!r} holds Python objects; refusing to unpickle",
                                                  where=where)
                    need = art.check_shape(name, shape, dtype.itemsize, where)
                    have = info.file_size - m.tell()
                if need != have:
                    raise ArtifactFormatError(f"array {name!r}: shape {list(shape)} of {dtype} needs {need} bytes, "
                                              f"the member holds {have}", where=where)
                with z.open(info) as m:
                    out[name] = npy.read_array(m, allow_pickle=False)
    except ArtifactFormatError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        msg = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise ArtifactFormatError(f"not a readable .npz ({msg})", where=where) from None
    return out


def read_openai(src: Path, **context: Any) -> SAE:
    """An openai/sparse_autoencoder state dict saved with ``torch.save``."""
    import pickle

    import torch

    src = Path(src)
    try:
        with safeio.open_regular(src.parent, src.name) as f:  # opened once; read only from f
            if zipfile.is_zipfile(f):  # torch.save's format: a bomb is refused before torch reads it
                with zipfile.ZipFile(f) as z:
                    _check_zip_sizes(z.infolist(), str(src))
            f.seek(0)
            sd = torch.load(f, map_location="cpu", weights_only=True)
    except SaekitError:
        raise
    except pickle.UnpicklingError as err:
        raise ArtifactFormatError(
            f"refused: holds objects other than tensors and plain values ({str(err).splitlines()[0][:120]})",
            where=str(src),
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as err:
        msg = str(err).splitlines()[0][:120] if str(err) else err.__class__.__name__
        raise ArtifactFormatError(f"not a torch state dict ({msg})", where=str(src)) from None
    if not isinstance(sd, dict):
        raise ArtifactFormatError("not a state dict", where=str(src))
    for key, value in sd.items():
        if isinstance(value, torch.Tensor):
            _check_storage(str(key), value, str(src))
    missing = [k for k in ("encoder.weight", "decoder.weight", "pre_bias", "latent_bias") if k not in sd]
    if missing:
        raise ArtifactFormatError(f"missing tensor {missing[0]!r}", where=str(src))
    enc = sd["encoder.weight"]
    if not isinstance(enc, torch.Tensor) or enc.ndim != 2:
        raise ArtifactFormatError("'encoder.weight' is not a 2-d tensor [n_latents, n_inputs]", where=str(src))
    d_sae, d_in = enc.shape
    activation = sd.get("activation", "ReLU")
    if activation == "TopK":
        k = (sd.get("activation_state_dict") or {}).get("k")
        if k is None:
            raise ArtifactFormatError("TopK checkpoint without activation_state_dict.k", where=str(src))
        arch = {"architecture": "topk", "k": k, "normalize_activations": "layer_norm"}  # SAEConfig checks k
    elif activation == "ReLU":
        arch = {"architecture": "relu"}
    else:
        raise ArtifactFormatError(f"activation {activation!r} is not supported (ReLU, TopK)", where=str(src))
    fields = _context({**arch, "d_in": int(d_in), "d_sae": int(d_sae), "apply_b_dec_to_input": True,
                       "dtype": _dtype_of(enc, "encoder.weight", str(src)),
                       "provenance": {"library": "openai_sparse_autoencoder"}}, **_ctx(context))
    cfg = _config(fields, str(src))
    b_enc = sd["latent_bias"]
    if "encoder.bias" in sd:  # nn.Linear bias, if a checkpoint has one: adds to latent_bias
        b_enc = b_enc + sd["encoder.bias"]
    dec = sd["decoder.weight"]
    if not isinstance(dec, torch.Tensor) or tuple(dec.shape) != (d_in, d_sae):
        raise ArtifactFormatError(
            f"tensor 'decoder.weight' has shape {tuple(getattr(dec, 'shape', ()))}, expected {(d_in, d_sae)}",
            where=str(src),
        )
    tensors = {"W_enc": enc.T, "b_enc": b_enc, "W_dec": dec.T, "b_dec": sd["pre_bias"]}
    return _make(cfg, tensors, str(src), f"openai:{src.name}")


def _check_storage(name: str, t: Any, where: str) -> None:
    """Refuse a tensor whose elements exceed its storage, before anything copies it: a zero
    or overlapping stride lets a few stored bytes pose as many (2 KB posing as 512 MiB)."""
    art.check_shape(name, list(t.shape), t.element_size(), where)
    need, have = t.numel() * t.element_size(), t.untyped_storage().nbytes()
    # Sorted by stride, each dimension must step past everything the smaller ones span, so
    # no two indices share an element (dimensions of size 1 never step: skipped).
    span = 0
    overlap = False
    for size, stride in sorted(((s, st) for s, st in zip(t.shape, t.stride()) if s > 1), key=lambda p: p[1]):
        overlap = overlap or stride <= span
        span += (size - 1) * stride
    if need > have or overlap:
        raise ArtifactFormatError(f"tensor {name!r}: shape {list(t.shape)} with strides {list(t.stride())} needs "
                                  f"{need} bytes of distinct elements, its storage holds {have} "
                                  "(zero or overlapping strides)", where=where)


def _ctx(context: dict[str, Any]) -> dict[str, Any]:
    return {k: context.get(k) for k in ("model_name", "hook_name", "model_revision")}


def _read_saekit(src: Path, **_: Any) -> SAE | TranscoderSet:
    src = Path(src)
    return tset.load_set(src) if tset.is_set(src) else art.load_artifact(src)


_READERS = {
    "saekit": _read_saekit,
    "saelens": read_saelens,
    "sparsify": read_sparsify,
    "gemmascope": read_gemmascope,
    "gemmascope-transcoder": read_gemmascope_transcoder,
    "openai": read_openai,
    "circuit-tracer": tf.read_circuit_tracer,
}


def _with_hook_out(obj: Any, hook_name_out: str | None) -> Any:
    """Set the output hook of transcoders that lack one (``--hook-out``)."""
    from saekit.kernels import Transcoder
    from saekit.kernels.transcoder import TranscoderSet

    if hook_name_out is None:
        return obj
    if isinstance(obj, TranscoderSet):
        raise InputError("--hook-out names one transcoder's output; a set's hooks come from its files",
                         where="hook_name_out")
    if not isinstance(obj, Transcoder):
        raise InputError(f"--hook-out is for transcoders, not a {obj.cfg.architecture} SAE", where="hook_name_out")
    if obj.cfg.hook_name_out is None:
        obj = Transcoder(obj.cfg.model_copy(update={"hook_name_out": hook_name_out}), obj.tensors, ref=obj.ref)
    return obj


def read_checkpoint(fmt: str, src: Path, **context: Any) -> SAE | TranscoderSet:
    """An in-memory SAE, Transcoder or TranscoderSet from a checkpoint of format ``fmt``
    (see IMPORT_FORMATS); ``hook_name_out`` sets a transcoder's output hook where the
    checkpoint has none."""
    reader = _READERS.get(fmt)
    if reader is None:
        raise InputError(f"unknown format; expected one of {', '.join(IMPORT_FORMATS)}", where=repr(fmt))
    src = safeio.named_path(src)  # a link the user named is followed here, once
    safeio.check_tree(src)  # regular files only, no links anywhere inside (one rule, schemas.safeio)
    hook_out = context.pop("hook_name_out", None)
    if fmt == "gemmascope-transcoder":
        context["hook_name_out"] = hook_out
        return reader(src, **context)
    return _with_hook_out(reader(src, **context), hook_out)


def import_checkpoint(
    fmt: str,
    src: Path,
    dest: Path,
    *,
    model_name: str | None = None,
    hook_name: str | None = None,
    model_revision: str | None = None,
    hook_name_out: str | None = None,
) -> str:
    """Convert a checkpoint into a canonical artifact folder at ``dest`` (a transcoder set
    folder for a set); returns its sha256."""
    from saekit.kernels.transcoder import TranscoderSet

    sae = read_checkpoint(fmt, src, model_name=model_name, hook_name=hook_name, model_revision=model_revision,
                          hook_name_out=hook_name_out)
    if isinstance(sae, TranscoderSet):
        return tset.save_set(sae, Path(dest))
    sha = art.save_artifact(sae, Path(dest))
    if fmt == "saelens" and safeio.exists(src, "sparsity.safetensors"):
        data = safeio.read_bytes(src, "sparsity.safetensors")
        art.check_safetensors_header(data, str(Path(src) / "sparsity.safetensors"))
        safeio.write_bytes(Path(dest) / "sparsity.safetensors", data)
    return sha


# --- exporters -------------------------------------------------------------------------


def export(sae: SAE | TranscoderSet, fmt: str, dest: Path) -> list[Path]:
    """Write ``sae`` (an SAE, Transcoder or TranscoderSet) in another library's layout;
    returns the files written (each with safeio.write_bytes: a link at ``dest`` or at a file
    in it is refused before any is written)."""
    from safetensors.torch import save

    from saekit.kernels.transcoder import TranscoderSet

    dest = Path(dest)
    if isinstance(sae, TranscoderSet):
        if fmt == "saelens":
            files = tf.saelens_set_files(sae)
        elif fmt == "circuit-tracer":
            files = tf.circuit_tracer_files(sae)
        else:
            raise InputError(f"a transcoder set exports to saelens or circuit-tracer, not {fmt!r}", where=repr(sae))
        safeio.check_new_or_same({dest / name: art.sha256_bytes(data) for name, data in files.items()})
        for name in files:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
        return [safeio.write_bytes(dest / name, data) for name, data in files.items()]
    t = {k: v.detach().cpu().contiguous() for k, v in sae.tensors.items()}
    if fmt == "circuit-tracer":
        raise InputError("circuit-tracer reads whole transcoder sets (export the set)", where=repr(fmt))
    if fmt == "saelens":
        from saekit.kernels import architectures as archs

        if archs.architecture(sae.cfg).saelens_name is None:
            raise InputError(f"sae-lens has no {sae.cfg.architecture} class", where=f"{sae.cfg.architecture}")
        cfg = sae.cfg.to_saelens_dict()
        cfg.pop("saekit", None)
        files = {art.CFG: json.dumps(cfg, indent=2).encode(), art.WEIGHTS: save(t)}
    elif fmt == "sparsify":
        c = sae.cfg
        transcoder = c.architecture in ("topk_transcoder", "topk_skip_transcoder") and c.d_out == c.d_in
        if not transcoder and (c.architecture != "topk" or not c.apply_b_dec_to_input
                               or c.normalize_activations != "none"):
            raise InputError(
                "sparsify holds plain TopK SAEs that subtract b_dec and do not normalise inputs, and TopK "
                "transcoders with d_out = d_in",
                where=f"{c.architecture} SAE",
            )
        tensors = {"encoder.weight": t["W_enc"].T.contiguous(), "encoder.bias": t["b_enc"],
                   "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
        if "W_skip" in t:
            tensors["W_skip"] = t["W_skip"]
        files = {"cfg.json": json.dumps(c.to_sparsify_dict()).encode(), "sae.safetensors": save(tensors)}
    else:
        raise InputError(f"unknown export format; expected one of {', '.join(EXPORT_FORMATS)}", where=repr(fmt))
    safeio.check_new_or_same({dest / name: art.sha256_bytes(data) for name, data in files.items()})
    return [safeio.write_bytes(dest / name, data) for name, data in files.items()]
