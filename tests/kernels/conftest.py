"""Kernel tests: the Triton kernels against the torch reference.

Without CUDA the kernels run in Triton's interpreter on CPU: tests/conftest.py imports them
interpreted before any test module can import triton (see there). With CUDA the same tests
run the compiled kernels on the GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()


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
