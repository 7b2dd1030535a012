"""saekit.kernels: the SAE in memory and its compute (Triton on CUDA, torch reference elsewhere).

``saekit.kernels.architectures`` (the table of architectures, tensors and normalisations)
imports no torch, so the registry can validate artifacts without it; ``SAE`` and
``SparseCode`` (which need torch) load on first use.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if __name__ == "kernels":
    # Imported as a top-level package because the checkout root is on sys.path (a notebook,
    # `python -m`, `torchrun -m` started there). The name `kernels` belongs to Hugging Face's
    # package, which transformers imports; this folder is only ever `saekit.kernels`. Hand the
    # import over to the `kernels` found on the rest of sys.path, as if this folder were absent.
    import importlib.machinery
    import importlib.util
    import os

    _checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != _checkout]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _rest)
    if _spec is None or _spec.loader is None:
        del sys.modules["kernels"]
        raise ModuleNotFoundError("No module named 'kernels'", name="kernels")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _module  # the import statement returns what sys.modules holds
    _spec.loader.exec_module(_module)

if TYPE_CHECKING:
    from saekit.kernels.sae import SAE, SparseCode
    from saekit.kernels.transcoder import Transcoder, TranscoderSet

__all__ = ["SAE", "SparseCode", "Transcoder", "TranscoderSet"]


def __getattr__(name: str) -> Any:
    if name in ("Transcoder", "TranscoderSet"):
        from saekit.kernels import transcoder

        return getattr(transcoder, name)
    if name in __all__:  # import cost: torch loads only when an SAE is built
        from saekit.kernels import sae

        return getattr(sae, name)
    raise AttributeError(f"module 'saekit.kernels' has no attribute {name!r}")
