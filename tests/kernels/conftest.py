"""Kernel tests: the Triton kernels against the torch reference.

Without CUDA the kernels run in Triton's interpreter on CPU. triton 3.9 reads
TRITON_INTERPRET when a ``@triton.jit`` function is defined, i.e. when
saekit.kernels.triton_kernels is first imported, so this conftest imports that module with
the variable set, then restores the environment (other folders' tests, e.g. ones that use
sparsify's Triton kernels, see the process as it was). With CUDA the same tests run the
compiled kernels on the GPU.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA and importlib.util.find_spec("triton") is not None:
    _saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import saekit.kernels.triton_kernels  # noqa: F401  (defines the kernels interpreted)
    finally:
        if _saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _saved


@pytest.fixture
def device() -> str:
    """Where the Triton-path tests run: the GPU when there is one, else the interpreter."""
    return "cuda" if CUDA else "cpu"


@pytest.fixture
def triton_path(monkeypatch: pytest.MonkeyPatch):
    """Force the Triton path and poison every buffer the kernels allocate, so an element a
    kernel forgot to write shows up as NaN (floats) or a huge/garbage value (integers)."""
    pytest.importorskip("triton")
    from saekit.kernels import triton_kernels as tk

    if not CUDA:
        assert tk._interpreting(), "triton_kernels was imported before TRITON_INTERPRET=1 was set"
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter checks it while running too
    monkeypatch.setenv("SAEKIT_KERNELS", "triton")

    def poisoned(*shape, dtype, device):
        t = torch.empty(*shape, dtype=dtype, device=device)
        if dtype.is_floating_point:
            return t.fill_(float("nan"))
        # for int64 keys: above every real key (would decode as a huge NaN-like value)
        return t.fill_(torch.iinfo(dtype).max // 3)

    monkeypatch.setattr(tk, "_empty", poisoned)
    monkeypatch.setattr(tk, "CONFIG_OVERRIDE", {})
    return tk


@pytest.fixture
def seed() -> int:
    """Fresh random inputs every run; the seed is in every failure message."""
    return int.from_bytes(os.urandom(4), "little")
