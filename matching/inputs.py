"""What ``saekit diff`` and ``saekit cards carry`` read besides the SAEs: the shared token
batch of the ``coact`` view, and the feature cards of an SAE named by path or reference; and
:func:`carry_files`, what ``saekit cards carry`` does, files included."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from saekit.matching import latents
from saekit.registry.refs import parse_ref
from saekit.registry.store import check_files, resolve
from saekit.schemas import InputError, NotFoundError, SAERef
from saekit.schemas.card_files import read_cards, write_cards

if TYPE_CHECKING:
    from saekit.kernels import SAE

CARDS_FILE = "feature_cards.jsonl"


def read_activations(path: Path, n_tokens: int, d_in: int) -> torch.Tensor:
    """The shared token batch [n, d_in] from a safetensors file whose ``activations`` tensor is
    [..., d_in] (the harness' activation shards, or any [n, d_in] tensor; a file with one
    tensor works too), first ``n_tokens`` rows, float32."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise InputError("activations file not found", where=str(path))
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"not a safetensors file ({err})", where=str(path)) from None
    if "activations" in tensors:
        acts = tensors["activations"]
    elif len(tensors) == 1:
        acts = next(iter(tensors.values()))
    else:
        raise InputError(f"no 'activations' tensor among {sorted(tensors)}", where=str(path))
    if acts.shape[-1] != d_in:
        raise InputError(f"activations have width {acts.shape[-1]}, the SAEs read {d_in}", where=str(path))
    return acts.reshape(-1, d_in)[:n_tokens].float()


def coact_batch(sae_a: SAE, sae_b: SAE, n_tokens: int, acts: Path | None = None) -> torch.Tensor:
    """The token batch both SAEs are run on for the ``coact`` view: ``acts`` when given, else
    the SAEs' own language model and hook on the harness' held-out text (both must read the
    same model and hook)."""
    if acts is not None:
        return read_activations(acts, n_tokens, sae_a.cfg.d_in)
    hooks = {(s.cfg.model_name, s.cfg.hook_name) for s in (sae_a, sae_b)}
    if len(hooks) > 1:
        raise InputError(f"the SAEs read different models or hooks {sorted(map(str, hooks))}; pass --acts", where="--by coact")
    return latents.lm_activations(sae_a, n_tokens)


def cards_path(text: str, *, missing_ok: bool = False) -> tuple[Path | None, str | None]:
    """A cards file from a path, an artifact folder, or a registry reference (its last check's
    feature_cards.jsonl); the second value is the reference when there is one. With
    ``missing_ok``, an SAE without cards gives (None, reference)."""
    path = Path(text).expanduser()
    if path.is_file():
        return path, None
    if path.is_dir():
        if (path / CARDS_FILE).is_file():
            return path / CARDS_FILE, text
        if missing_ok:
            return None, text
        raise NotFoundError(f"no {CARDS_FILE} in the folder", where=text)
    ref = parse_ref(text)
    if ref.kind == "hf":
        raise InputError("cards of hf:// references: download the release's cards file and pass its path", where=text)
    info = resolve(ref)
    files = check_files(info.name, info.version)
    if CARDS_FILE not in files:
        if missing_ok:
            return None, text
        raise NotFoundError(f"no {CARDS_FILE} logged for {info.name}/{info.version} (run saekit check)", where=text)
    return Path(files[CARDS_FILE]), text


@dataclass
class CarryFilesResult:
    """What :func:`carry_files` wrote: B's cards with A's annotations carried onto them."""

    out: Path
    result: latents.CarryResult


def carry_files(
    from_: str,
    to: str,
    *,
    loader: Callable[[str], SAE],
    mapping: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    relations: Sequence[str] = latents.CARRY_RELATIONS,
    min_similarity: float | None = None,
    create_missing: bool = True,
) -> CarryFilesResult:
    """Carry the annotations of A's cards (``from_``: a cards file, an artifact folder or a
    reference) onto B's matched latents (``to``: the same; B may have no cards yet) and write
    B's cards to ``out`` (default: ``<B cards>.carried.jsonl``, or ``feature_cards.carried.jsonl``).

    The pairs come from ``mapping`` (a ``saekit diff --out`` file, checked against the cards)
    or, without one, from matching the two SAEs now (both must then be references or folders,
    loaded with ``loader``, e.g. ``saekit.load``). A's cards are never overwritten.
    """
    path_a, ref_a = cards_path(from_)
    path_b, ref_b = cards_path(to, missing_ok=True)  # B may have no cards yet
    assert path_a is not None
    cards_a = read_cards(path_a)
    cards_b = read_cards(path_b) if path_b is not None else []
    sae_b_ref = None
    if mapping is not None:
        rows = latents.read_mapping(Path(mapping))
        summary = latents.read_summary(Path(mapping))
        latents.check_mapping_fits(summary, cards_a, cards_b)
        sae_b_ref = summary.sae_b if summary is not None else None
    else:
        if ref_a is None or ref_b is None:
            raise InputError("without --mapping, --from and --to must be SAE references or artifact folders",
                             where="--mapping")
        sae_a, sae_b = loader(ref_a), loader(ref_b)
        sae_b_ref = sae_b.ref or SAERef(name=ref_b, d_sae=sae_b.cfg.d_sae)
        rows = latents.match(sae_a, sae_b).rows
    if cards_b:
        sae_b_ref = cards_b[0].sae
    result = latents.carry(cards_a, cards_b, rows, sae_b=sae_b_ref, relations=relations,
                           min_similarity=min_similarity, create_missing=create_missing)
    if out is None:
        out = path_b.with_suffix(".carried.jsonl") if ref_b is None and path_b else Path("feature_cards.carried.jsonl")
    if os.path.abspath(out) == os.path.abspath(path_a):
        raise InputError("refusing to overwrite A's cards", where="--out")
    return CarryFilesResult(out=write_cards(result.cards, out), result=result)
