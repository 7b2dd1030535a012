"""The canonical SAE artifact on disk: write it, hash it, read it back verified.

A canonical artifact is a folder SAELens loads as it is (``SAE.load_from_disk``):

    cfg.json                  SAELens v6 keys + a "saekit" block (SAEConfig.to_saelens_dict)
    sae_weights.safetensors   the architecture's tensors (saekit.kernels.architectures)

Identity: the sha256 of a SHA256SUMS-style listing of the two files,
``sha256("<sha256(cfg.json)>  cfg.json\\n<sha256(sae_weights.safetensors)>  sae_weights.safetensors\\n")``,
so a mismatch can always be traced to the file that changed.

Nothing here unpickles: weights are safetensors only, and the header is checked by hand
before safetensors sees the bytes (a pickle, a truncated or oversized header is refused
with one line naming the file).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saekit.kernels import architectures as archs
from saekit.schemas import ArtifactFormatError, InputError, IntegrityError, NotFoundError, SAEConfig, safeio

if TYPE_CHECKING:
    import torch

    from saekit.kernels import SAE

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
IDENTITY_FILES = (CFG, WEIGHTS)
# Optional files that travel with an artifact (SAELens convention), outside its identity.
OPTIONAL_FILES = ("sparsity.safetensors",)

# safetensors' own limit for the JSON header (safetensors/src/tensor.rs, MAX_HEADER_SIZE).
MAX_HEADER = 100_000_000
_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}
_TORCH_DTYPE_NAMES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16",
                      "torch.float16": "float16", "torch.float64": "float64"}
# cfg.json dtype -> the safetensors dtype its tensors are stored in
SAFETENSORS_DTYPE = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64"}
# Sane bounds on a declared shape, so no size or stride computed from it overflows int64
# (torch's "Stride calculation overflowed" on a [0, 2^62, 2^62] tensor): far above any SAE
# (a 1M-latent SAE on a 16k model is 2^34 elements), far below 2^63 bytes.
MAX_NDIM = 8
MAX_ELEMENTS = 1 << 48


# --- hashing ---------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


SET_FILE = "set.json"  # a transcoder set's manifest (saekit.registry.transcoder_set)


def identity_names(file_hashes: dict[str, str]) -> list[str]:
    """The files an artifact's identity covers: cfg.json and weights; for a transcoder set,
    set.json and every layer's cfg.json and weights (sorted paths)."""
    if SET_FILE not in file_hashes:
        return list(IDENTITY_FILES)
    return sorted(n for n in file_hashes if n == SET_FILE or n.rsplit("/", 1)[-1] in IDENTITY_FILES)


def combine(file_hashes: dict[str, str]) -> str:
    """Artifact identity from the per-file sha256 of its identity files (a SHA256SUMS listing)."""
    listing = "".join(f"{file_hashes[name]}  {name}\n" for name in identity_names(file_hashes))
    return sha256_bytes(listing.encode())


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of each identity file (and optional file present) of an artifact folder."""
    folder = Path(folder)
    out: dict[str, str] = {}
    for name in IDENTITY_FILES:
        out[name] = safeio.sha256(folder, name)
    for name in OPTIONAL_FILES:
        if safeio.exists(folder, name):
            out[name] = safeio.sha256(folder, name)
    return out


def artifact_sha256(folder: Path) -> str:
    """The artifact's identity: sha256 over its config and weights (see module docstring)."""
    return combine(file_hashes(folder))


def verify_files(folder: Path, expected: dict[str, str], *, where: str | None = None) -> None:
    """Raise IntegrityError naming the first file whose sha256 differs from ``expected``."""
    folder = Path(folder)
    for name, want in expected.items():
        if not safeio.exists(folder, name):
            raise IntegrityError(f"{name}: missing", where=where or str(folder))
        got = safeio.sha256(folder, name)
        if got != want:
            raise IntegrityError(
                f"{name}: sha256 mismatch (expected {want[:12]}, got {got[:12]})", where=where or str(folder)
            )


# --- writing ---------------------------------------------------------------------------


def cfg_bytes(cfg: SAEConfig) -> bytes:
    """cfg.json exactly as saekit writes it (sorted keys, so identical configs hash alike)."""
    return (json.dumps(cfg.to_saelens_dict(), indent=2, sort_keys=True) + "\n").encode()


def save_artifact(sae: SAE, folder: Path) -> str:
    """Write ``sae`` as a canonical artifact folder; returns its sha256.

    The folder is written next to its final place and renamed in, so a reader never sees
    half an artifact.
    """
    from safetensors.torch import save

    folder = Path(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in sae.tensors.items()}
    dtype = _TORCH_DTYPE_NAMES.get(str(tensors["W_enc"].dtype))
    if dtype is None:
        raise InputError(f"unsupported weight dtype {tensors['W_enc'].dtype}", where="sae")
    cfg = sae.cfg if sae.cfg.dtype == dtype else sae.cfg.model_copy(update={"dtype": dtype})
    check_tensors(tensors, cfg, where="sae")
    weights = save(tensors)
    cfg_data = cfg_bytes(cfg)
    folder.parent.mkdir(parents=True, exist_ok=True)
    files = {CFG: cfg_data, WEIGHTS: weights}
    # a planted link is refused, not followed; a user's own cfg.json is never replaced
    safeio.check_new_or_same({folder / name: sha256_bytes(data) for name, data in files.items()})
    if folder.exists() and any(folder.iterdir()):
        for name, data in files.items():
            safeio.write_bytes(folder / name, data)
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        (tmp / CFG).write_bytes(cfg_data)
        (tmp / WEIGHTS).write_bytes(weights)
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    return combine({CFG: sha256_bytes(cfg_data), WEIGHTS: sha256_bytes(weights)})


# --- reading ---------------------------------------------------------------------------


def check_shape(name: str, shape: Any, itemsize: int, where: str) -> int:
    """The bytes a declared tensor shape needs, after sane bounds: at most MAX_NDIM
    non-negative int dimensions whose product, zeros counted as ones, stays within
    MAX_ELEMENTS (a zero dimension must not hide huge others). Every tensor reader calls it
    before it trusts a size, and compares the answer with the bytes present."""
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ArtifactFormatError(f"tensor {name!r}: shape {shape!r} is not up to {MAX_NDIM} "
                                  f"non-negative integers", where=where)
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
        raise ArtifactFormatError(f"tensor {name!r}: shape {list(shape)} is out of bounds "
                                  f"(more than {MAX_ELEMENTS} elements)", where=where)
    return math.prod(shape) * itemsize


def check_safetensors_header(data: bytes, where: str) -> dict[str, Any]:
    """Validate a safetensors file's framing before safetensors parses it; returns the header.

    Format (huggingface/safetensors README, "Format"): 8 bytes little-endian u64 N, N bytes
    of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
    then the byte buffer the offsets index into.
    """
    if data[:1] == b"\x80" or data[:4] == b"PK\x03\x04":
        kind = "a pickle" if data[:1] == b"\x80" else "a zip (torch.save) archive"
        raise ArtifactFormatError(f"is {kind}, not safetensors; refusing to unpickle", where=where)
    if len(data) < 8:
        raise ArtifactFormatError(f"truncated: {len(data)} bytes, no header", where=where)
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER:
        raise ArtifactFormatError(f"header size {n} is oversized (limit {MAX_HEADER})", where=where)
    if 8 + n > len(data):
        raise ArtifactFormatError(f"header truncated: declares {n} bytes, file has {len(data) - 8}", where=where)
    raw_header = bytes(data[8 : 8 + n])
    if safeio.exceeds_depth(raw_header, _HEADER_DEPTH):
        raise ArtifactFormatError(f"header nested deeper than {_HEADER_DEPTH} levels", where=where)
    try:
        header = json.loads(raw_header, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ArtifactFormatError(f"header is not JSON ({err.__class__.__name__})", where=where) from None
    if not isinstance(header, dict):
        raise ArtifactFormatError("header is not a JSON object", where=where)
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ArtifactFormatError("__metadata__ must map strings to strings", where=where)
    buffer = len(data) - 8 - n
    end_max = 0
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        ok = (
            isinstance(info, dict)
            and info.get("dtype") in _DTYPE_BYTES
            and isinstance(info.get("data_offsets"), list)
            and len(info["data_offsets"]) == 2
            and all(isinstance(o, int) for o in info["data_offsets"])
        )
        if not ok:
            raise ArtifactFormatError(f"tensor {name!r}: malformed header entry", where=where)
        begin, end = info["data_offsets"]
        size = check_shape(name, info.get("shape"), _DTYPE_BYTES[info["dtype"]], where)
        if not (0 <= begin <= end <= buffer) or end - begin != size:
            raise ArtifactFormatError(
                f"tensor {name!r}: data offsets {begin}..{end} do not fit shape {info['shape']} in a "
                f"{buffer}-byte buffer (file truncated?)",
                where=where,
            )
        end_max = max(end_max, end)
        spans.append((begin, end, name))
    # Like safetensors' own check (tensor.rs, validate): sorted by offset, the tensors tile
    # the buffer exactly, with no overlap and no gap.
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            what = "overlaps the tensor before it" if begin < pos else f"leaves a {begin - pos}-byte gap before it"
            raise ArtifactFormatError(f"tensor {name!r}: data offsets {begin}..{end} {what}", where=where)
        pos = end
    if end_max != buffer:
        raise ArtifactFormatError(f"{buffer - end_max} trailing bytes after the tensors", where=where)
    return header


# A safetensors header is {name: {dtype, shape: [...], data_offsets: [...]}}: depth 3.
_HEADER_DEPTH = 4


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


def read_safetensors(path: Path, *, data: bytes | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, after checking its header by hand."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if data is None:
        data = safeio.read_bytes(path.parent, path.name)
    check_safetensors_header(data, str(path))
    try:
        return load(data)
    except (SafetensorError, ValueError) as err:  # belt and braces: the header check passed
        raise ArtifactFormatError(f"unreadable safetensors ({err})", where=str(path)) from None


def read_cfg(path: Path, *, data: bytes | None = None) -> SAEConfig:
    """SAEConfig from a SAELens v6 / saekit cfg.json; one-line error naming the file."""
    from pydantic import ValidationError

    path = Path(path)
    if data is None:
        data = safeio.read_bytes(path.parent, path.name)
    try:
        raw = safeio.load_json(data, where=str(path))
    except InputError as err:
        raise ArtifactFormatError(err.message, where=str(path)) from None
    if not isinstance(raw, dict):
        raise ArtifactFormatError("not a JSON object", where=str(path))
    archs.check_raw_cfg(raw, where=str(path))
    try:
        cfg = SAEConfig.from_saelens_dict(raw)
    except KeyError as err:
        raise ArtifactFormatError(f"missing key {err}", where=str(path)) from None
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "cfg"
        raise ArtifactFormatError(f"{loc}: {first['msg']}", where=str(path)) from None
    archs.check_supported(cfg, where=str(path))
    return cfg


def check_names(names: Any, cfg: SAEConfig, where: str) -> None:
    """Exactly the architecture's tensors (kernels.architectures, the one table): a missing
    one cannot load, an extra one is nothing the SAE computes with (and sae-lens' strict
    load_state_dict refuses it), so both are refused."""
    arch = archs.architecture(cfg)
    for name in arch.tensors:
        if name not in names:
            raise ArtifactFormatError(f"missing tensor {name!r}", where=where)
    for name in names:
        if name not in arch.tensors:
            raise ArtifactFormatError(
                f"tensor {name!r} is not a tensor of a {cfg.architecture} SAE ({', '.join(arch.tensors)})", where=where
            )


def check_dtype(name: str, file_dtype: str, cfg: SAEConfig, where: str) -> None:
    """A tensor's stored dtype (safetensors name: F32, F16, ...) must be the config's dtype."""
    if file_dtype != SAFETENSORS_DTYPE[cfg.dtype]:
        raise ArtifactFormatError(f"tensor {name!r} has dtype {file_dtype}, but the config says dtype {cfg.dtype}",
                                  where=where)


def stored_dtype(t: torch.Tensor) -> str:
    """A torch tensor's dtype by its safetensors name (F32, ...), or torch's name if none."""
    name = _TORCH_DTYPE_NAMES.get(str(t.dtype))
    return SAFETENSORS_DTYPE[name] if name else str(t.dtype)


def check_tensors(tensors: dict[str, torch.Tensor], cfg: SAEConfig, *, where: str) -> None:
    """Names, shapes, dtype and finiteness of an SAE's tensors against its config."""
    import torch

    archs.check_supported(cfg, where=where)
    shapes = archs.shapes(cfg)
    check_names(tensors, cfg, where)
    for name, t in tensors.items():
        want = shapes[name]
        if tuple(t.shape) != want:
            raise ArtifactFormatError(
                f"tensor {name!r} has shape {tuple(t.shape)}, expected {want} (d_in={cfg.d_in}, d_sae={cfg.d_sae})",
                where=where,
            )
        if not t.is_floating_point():
            raise ArtifactFormatError(f"tensor {name!r} has dtype {t.dtype}, expected floating point", where=where)
        check_dtype(name, stored_dtype(t), cfg, where)
        if not bool(torch.isfinite(t).all()):
            raise ArtifactFormatError(f"tensor {name!r} contains NaN or inf", where=where)


# Bit masks of the exponent field: a float is NaN or inf exactly when all exponent bits are set.
_EXPONENT = {"F64": ("<u8", 0x7FF0000000000000), "F32": ("<u4", 0x7F800000), "F16": ("<u2", 0x7C00),
             "BF16": ("<u2", 0x7F80)}


def validate_artifact(folder: Path) -> tuple[SAEConfig, dict[str, str]]:
    """Check an artifact folder without building tensors (numpy only, no torch import):
    cfg.json, safetensors framing, tensor names, shapes, dtypes and finiteness.
    Returns the config and the per-file sha256."""
    import numpy as np

    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError("no such artifact folder", where=str(folder))
    blobs = {name: safeio.read_bytes(folder, name) for name in IDENTITY_FILES}
    cfg = read_cfg(folder / CFG, data=blobs[CFG])
    where = str(folder / WEIGHTS)
    data = blobs[WEIGHTS]
    header = check_safetensors_header(data, where)
    start = 8 + int.from_bytes(data[:8], "little")
    shapes = archs.shapes(cfg)
    check_names([name for name in header if name != "__metadata__"], cfg, where)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        want = shapes[name]
        if tuple(info["shape"]) != want:
            raise ArtifactFormatError(
                f"tensor {name!r} has shape {tuple(info['shape'])}, expected {want} "
                f"(d_in={cfg.d_in}, d_sae={cfg.d_sae})",
                where=where,
            )
        if info["dtype"] not in _EXPONENT:
            raise ArtifactFormatError(f"tensor {name!r} has dtype {info['dtype']}, expected floating point",
                                      where=where)
        check_dtype(name, info["dtype"], cfg, where)
        kind, mask = _EXPONENT[info["dtype"]]
        begin, end = info["data_offsets"]
        bits = np.frombuffer(data, dtype=kind, count=(end - begin) // np.dtype(kind).itemsize, offset=start + begin)
        if bool(((bits & np.array(mask, dtype=kind)) == np.array(mask, dtype=kind)).any()):
            raise ArtifactFormatError(f"tensor {name!r} contains NaN or inf", where=where)
    hashes = {name: sha256_bytes(b) for name, b in blobs.items()}
    for name in OPTIONAL_FILES:
        if safeio.exists(folder, name):
            data = safeio.read_bytes(folder, name)
            check_safetensors_header(data, str(folder / name))  # loadable as it travels with the SAE
            hashes[name] = sha256_bytes(data)
    return cfg, hashes


def load_artifact(folder: Path, *, expected_sha256: str | None = None) -> SAE:
    """Read and validate a canonical artifact folder; with ``expected_sha256``, verify it.
    A transcoder's artifact gives a ``Transcoder`` (saekit.kernels.transcoder).

    Each file is read once: the same bytes are hashed and parsed.
    """
    from saekit.kernels import SAE, Transcoder

    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError("no such artifact folder", where=str(folder))
    blobs = {name: safeio.read_bytes(folder, name) for name in IDENTITY_FILES}
    if expected_sha256 is not None:
        hashes = {name: sha256_bytes(data) for name, data in blobs.items()}
        if combine(hashes) != expected_sha256:
            raise IntegrityError(
                f"sha256 mismatch (expected {expected_sha256[:12]}, got {combine(hashes)[:12]}; "
                f"cfg.json {hashes[CFG][:12]}, {WEIGHTS} {hashes[WEIGHTS][:12]})",
                where=str(folder),
            )
    cfg = read_cfg(folder / CFG, data=blobs[CFG])
    tensors = read_safetensors(folder / WEIGHTS, data=blobs.pop(WEIGHTS))
    if expected_sha256 is None:
        check_tensors(tensors, cfg, where=str(folder / WEIGHTS))
    # else: verified content is what registration validated (names, shapes, finiteness);
    # SAE() below still checks names and shapes.
    return (Transcoder if cfg.is_transcoder else SAE)(cfg, tensors)
