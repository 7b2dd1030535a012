"""saekit: register, check, document and release sparse autoencoders.

    sae = saekit.load("smollm2-res-l6@production")

Stays light to import: mlflow, transformers and triton load only when used.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from saekit.schemas.version import __version__

if TYPE_CHECKING:
    from saekit.harness.verify import VerifyReport
    from saekit.harness.check import CheckResult
    from saekit.harness.transcoder_check import SetCheckResult
    from saekit.kernels import SAE
    from saekit.schemas import FeatureCard


def load(ref: str | os.PathLike, *, device: str | None = None) -> SAE:
    """Load an SAE by reference (see saekit.registry.refs), verified against its sha256."""
    from saekit.registry.refs import parse_ref

    parsed = parse_ref(ref)  # a Path is a local folder; a string names one only as ./x or /abs
    if parsed.kind == "hf":
        from saekit.releases.download import load_hf

        sae = load_hf(parsed)
    elif parsed.kind == "saelens":
        from saekit.registry.hub_source import load as load_hub

        sae = load_hub(parsed)
    else:
        from saekit.registry.store import load_ref

        sae = load_ref(parsed)
    return sae.to(device) if device else sae


def register(name: str, artifact: Any, **kwargs: Any):
    """Register an artifact folder or in-memory SAE as a new version of ``name``.

    ``artifact`` may also be ``hf://ORG/REPO[@REV]/PATH`` or ``saelens:RELEASE/SAE_ID``: the
    checkpoint is fetched, converted and registered with its source pinned (a glob in PATH
    returns the list of versions, one per match).
    """
    if isinstance(artifact, str) and artifact.startswith(("hf://", "saelens:")):
        from saekit.registry import hub_source

        infos = hub_source.register(artifact, name, **kwargs)
        return infos if hub_source.is_glob(artifact) else infos[0]
    from saekit.registry.store import register as _register

    return _register(name, artifact, **kwargs)


def check(ref: str | os.PathLike, **kwargs: Any) -> CheckResult | SetCheckResult:
    """Check an SAE against a real model: metrics, cards, benchmark record and gate verdict
    (see saekit.harness.check.check for the options). A transcoder set is checked by
    saekit.harness.transcoder_check.check_set (per layer and whole set)."""
    from saekit.harness.check import check as _check
    from saekit.harness.transcoder_check import check_ref

    return check_ref(ref, load, _check, **kwargs)


def activations(model: Any, hook_name: str, tokens: Any) -> Any:
    """Activations [batch, pos, d] of a language model at ``hook_name`` for token ids
    ``tokens`` ([batch, pos] or [pos]): what TransformerLens' ``run_with_cache(tokens)[hook_name]``
    holds (``attn.hook_z`` flattened to [.., n_heads*d_head], as SAELens reads it), computed on
    the Hugging Face model. ``model``: a transformers causal LM, or ``ID[@REV]`` / a folder to
    load (saekit.harness.model.load_lm). Hook names: TL's ``blocks.N.hook_resid_pre`` ...
    (saekit.harness.hooks) or a module path of the HF model."""
    import torch

    from saekit.harness.activations import run_to_hook
    from saekit.harness.model import load_lm

    if isinstance(model, (str, os.PathLike)):
        model, _ = load_lm(os.fspath(model))
    ids = torch.as_tensor(tokens, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    return run_to_hook(model, ids.to(next(model.parameters()).device), hook_name)


def read_cards(paths: str | os.PathLike | list[str | os.PathLike]) -> list[FeatureCard]:
    """Feature cards of a .jsonl / .jsonl.gz / .json file, a folder of shards, or a list of
    them (saekit.schemas.card_files.read_cards)."""
    from saekit.schemas.card_files import read_cards as _read

    return _read(paths)


def write_cards(cards: list[FeatureCard], path: str | os.PathLike) -> os.PathLike:
    """Write cards in index order to a .jsonl, .jsonl.gz or .json file (saekit.schemas.card_files)."""
    from saekit.schemas.card_files import write_cards as _write

    return _write(cards, path)


def verify_cards(cards: Any, sae: Any, **kwargs: Any) -> VerifyReport:
    """Re-check what ``cards`` (a cards file, folder, paths, or FeatureCards) state against
    ``sae`` (an SAE, or a reference loaded with :func:`load`); see
    saekit.harness.card_ops.verify_file for the options."""
    from saekit.harness.card_ops import cards_of, verify_file

    cards = cards_of(cards)  # a bad cards file is reported before any SAE or model loads
    if isinstance(sae, (str, os.PathLike)):
        sae = load(sae)
    return verify_file(cards, sae, **kwargs)


def graph(prompt: str, transcoders: Any, **kwargs: Any):
    """Attribution graph of ``prompt`` over a transcoder set (a reference or a TranscoderSet) on
    its model: direct effects between features, errors, tokens and the top logits, pruned and
    scored; written to ``out=FOLDER`` when given (see saekit.circuits.build.graph)."""
    from saekit.circuits.build import graph as _graph

    return _graph(prompt, transcoders, **kwargs)


__all__ = ["load", "graph", "register", "check", "activations", "read_cards", "write_cards", "verify_cards", "__version__"]
