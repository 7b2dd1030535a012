"""Activation sources: a Hugging Face causal LM hooked at a named site, or stored shards.

Hook names are TransformerLens names (``blocks.6.hook_resid_post``, ``blocks.6.attn.hook_z``
...; saekit.harness.hooks maps them onto the HF model, read as TL computes them) or module
paths of the HF model (``model.layers.6``: its output, TL's ``blocks.6.hook_resid_post``).
Every source has a fingerprint: the sha256 of its token ids (see saekit.harness.text.fingerprint).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from saekit.harness.hooks import Site, module, norm_gain, normalized, site
from saekit.harness.text import TokenSet, fingerprint
from saekit.schemas import ArtifactFormatError, InputError, NotFoundError
from saekit.schemas.console import Progress


class _Stop(Exception):
    """Raised inside the hook to skip the layers after it when only activations are needed."""


def _main(output: Any) -> Any:
    return output[0] if isinstance(output, tuple) else output


def _replace(output: Any, new: Any) -> Any:
    return (new, *output[1:]) if isinstance(output, tuple) else new


def _first_input(args: tuple, kwargs: dict) -> Any:
    return args[0] if args else kwargs["hidden_states"]


def _with_first_input(args: tuple, kwargs: dict, new: Any) -> tuple[tuple, dict]:
    return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})


def _on_site(model: Any, where: Site, fn: Callable[[Any], Any | None]) -> Any:
    """Register ``fn(activation)`` at the site; a non-None result replaces the activation
    there. Returns the hook handle."""
    mod = module(model, where.module)
    if where.read == "input":
        def pre(_m: Any, args: tuple, kwargs: dict) -> Any:
            new = fn(_first_input(args, kwargs))
            return None if new is None else _with_first_input(args, kwargs, new)

        return mod.register_forward_pre_hook(pre, with_kwargs=True)
    if where.read == "normalized":
        gain, _, _ = norm_gain(mod)

        def norm_hook(_m: Any, args: tuple, out: Any) -> Any:
            n = normalized(mod, args[0])
            new = fn(n)  # the norm's output is n * gain + bias: move it by the change of n
            return None if new is None else out + ((new.float() - n.float()) * gain).to(out.dtype)

        return mod.register_forward_hook(norm_hook)

    def post(_m: Any, _args: tuple, out: Any) -> Any:
        new = fn(_main(out))
        return None if new is None else _replace(out, new)

    return mod.register_forward_hook(post)


@contextmanager
def spliced(model: Any, hook_name: str, fn: Callable[[Any], Any]) -> Iterator[None]:
    """Within the block, the activation ``a`` [b, ctx, d] at ``hook_name`` is replaced by
    ``fn(a)`` (and the residual stream carries the change where the site is one)."""
    where = site(model, hook_name)
    delta: dict[str, Any] = {}

    def swap(a: Any) -> Any:
        new = fn(a)
        if where.carry is not None:
            delta["d"] = new - a
        return new

    with ExitStack() as stack:
        stack.callback(_on_site(model, where, swap).remove)
        if where.carry is not None:
            carry = Site(where.carry, "output")
            stack.callback(_on_site(model, carry, lambda out: out + delta.pop("d").to(out.dtype)).remove)
        yield


@contextmanager
def captured(model: Any, hook_name: str, *, stop: bool = False) -> Iterator[dict[str, Any]]:
    """Within the block, ``box['acts']`` holds the last activation at ``hook_name``; ``stop``
    ends the forward pass there (the caller catches nothing: use run_to_hook)."""
    box: dict[str, Any] = {}

    def keep(a: Any) -> None:
        box["acts"] = a.detach()
        if stop:
            raise _Stop

    handle = _on_site(model, site(model, hook_name), keep)
    try:
        yield box
    finally:
        handle.remove()


def run_to_hook(model: Any, tokens: Any, hook_name: str) -> Any:
    """Activations [b, ctx, d] at ``hook_name``; the layers after it are not run."""
    import torch

    with torch.inference_mode(), captured(model, hook_name, stop=True) as box:
        try:
            model(tokens)
        except _Stop:
            pass
    if "acts" not in box:
        raise InputError(f"hook {hook_name!r} did not run in the forward pass", where="hook_name")
    return box["acts"]


class LMActivationSource:
    """Activation batches of a hooked LM over a TokenSet: ``for tokens, acts in source``."""

    def __init__(self, model: Any, tokens: TokenSet, hook_name: str, *, batch_size: int = 8):
        self.model, self.token_set, self.hook_name, self.batch_size = model, tokens, hook_name, batch_size

    @property
    def fingerprint(self) -> str:
        return self.token_set.fingerprint

    @property
    def n_tokens(self) -> int:
        return self.token_set.n_tokens

    def describe(self) -> str:
        return self.token_set.source

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        toks = self.token_set.tokens
        with Progress(f"activations at {self.hook_name}", total=toks.shape[0]) as bar:
            for i in range(0, toks.shape[0], self.batch_size):
                batch = toks[i : i + self.batch_size]
                yield batch, run_to_hook(self.model, batch, self.hook_name)
                bar.update(batch.shape[0])


def write_shards(
    source: LMActivationSource, folder: Path, *, rows_per_shard: int = 64, exclude_token_ids: list[int] | None = None
) -> list[Path]:
    """Store a source's activations as safetensors shards (``activations`` [n, ctx, d],
    ``tokens`` [n, ctx]) with the hook, source, fingerprint of the whole token set and the
    token ids metrics leave out (``exclude_token_ids``, e.g. special_token_ids) in each
    header's metadata."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    acts_buf: list[Any] = []
    toks_buf: list[Any] = []

    def flush() -> None:
        if not toks_buf:
            return
        path = folder / f"shard_{len(paths):05d}.safetensors"
        meta = {
            "hook_name": source.hook_name,
            "source": source.describe(),
            "fingerprint": source.fingerprint,
            "exclude_token_ids": json.dumps(sorted(exclude_token_ids or [])),
        }
        save_file(
            {"activations": torch.cat(acts_buf).contiguous(), "tokens": torch.cat(toks_buf).contiguous()},
            str(path),
            metadata=meta,
        )
        paths.append(path)
        acts_buf.clear()
        toks_buf.clear()

    rows = 0
    for toks, acts in source:
        acts_buf.append(acts.float().cpu())
        toks_buf.append(toks.cpu())
        rows += toks.shape[0]
        if rows >= rows_per_shard:
            flush()
            rows = 0
    flush()
    return paths


class ShardActivationSource:
    """Stored activation shards (``*.safetensors`` with ``activations`` and ``tokens``)."""

    def __init__(self, folder: Path, *, batch_size: int = 8):
        from safetensors import safe_open

        self.folder = Path(folder)
        self.batch_size = batch_size
        self.paths = sorted(self.folder.glob("*.safetensors"))
        if not self.paths:
            raise NotFoundError("no *.safetensors activation shards", where=str(self.folder))
        self.hook_name = None
        self.exclude_token_ids: list[int] = []
        for p in self.paths:
            with safe_open(str(p), framework="pt") as f:
                keys = set(f.keys())
                if "activations" not in keys:
                    raise ArtifactFormatError("shard has no 'activations' tensor", where=str(p))
                meta = f.metadata() or {}
                self.hook_name = meta.get("hook_name", self.hook_name)
                try:
                    self.exclude_token_ids = json.loads(meta.get("exclude_token_ids", "[]"))
                except json.JSONDecodeError:
                    raise ArtifactFormatError("bad exclude_token_ids metadata", where=str(p)) from None

    def _load(self, path: Path) -> tuple[Any, Any]:
        from safetensors.torch import load_file

        t = load_file(str(path))
        acts = t["activations"]
        if acts.dim() == 2:
            acts = acts[:, None, :]
        toks = t.get("tokens")
        if toks is not None and toks.dim() == 1:
            toks = toks[:, None]
        return toks, acts

    @property
    def tokens(self) -> Any:
        import torch

        parts = [self._load(p)[0] for p in self.paths]
        return None if any(p is None for p in parts) else torch.cat(parts)

    @property
    def fingerprint(self) -> str:
        """sha256 of the token ids when the shards carry them, else of the activation bytes."""
        toks = self.tokens
        if toks is not None:
            return fingerprint(toks)
        h = hashlib.sha256()
        for p in self.paths:
            h.update(self._load(p)[1].float().numpy().tobytes())
        return h.hexdigest()

    @property
    def n_tokens(self) -> int:
        return sum(int(self._load(p)[1].shape[0] * self._load(p)[1].shape[1]) for p in self.paths)

    def describe(self) -> str:
        return f"shards:{self.folder}"

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for p in self.paths:
            toks, acts = self._load(p)
            for i in range(0, acts.shape[0], self.batch_size):
                yield (None if toks is None else toks[i : i + self.batch_size]), acts[i : i + self.batch_size]
