"""Backend selection, lazy triton import, SAE object plumbing."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from kernel_helpers import make_sae, make_x

from saekit.kernels import dispatch, reference
from saekit.schemas import InputError


def test_import_does_not_load_triton():
    code = (
        "import sys, saekit, saekit.kernels, saekit.kernels.dispatch, saekit.kernels.reference\n"
        "assert 'triton' not in sys.modules, 'triton imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backend_choice(monkeypatch):
    x = torch.zeros(2, 3)
    monkeypatch.delenv("SAEKIT_KERNELS", raising=False)
    assert dispatch.backend(x) == "torch"  # CPU tensors use the reference by default
    monkeypatch.setenv("SAEKIT_KERNELS", "triton")
    assert dispatch.backend(x) == "triton"
    monkeypatch.setenv("SAEKIT_KERNELS", "torch")
    assert dispatch.backend(x) == "torch"
    monkeypatch.setenv("SAEKIT_KERNELS", "cuda")
    with pytest.raises(InputError, match="SAEKIT_KERNELS"):
        dispatch.backend(x)


def test_sae_methods_go_through_dispatch(monkeypatch, seed):
    monkeypatch.setenv("SAEKIT_KERNELS", "torch")
    sae = make_sae("topk", 6, 20, 3, seed=seed)
    x = make_x(8, 6, seed=seed).reshape(2, 4, 6)
    code = sae.encode(x)
    assert code.values.shape == (8, 3) and code.indices.dtype == torch.int64
    assert sae(x).shape == x.shape
    assert torch.equal(sae.decode(code), reference.decode(code.values, code.indices, sae))
    stats = sae.eval_batch(x)
    assert stats.n_tokens == 8
    assert sae.encode_dense(x).shape == (8, 20)


def test_device_mismatch_is_an_input_error(monkeypatch, triton_path):
    sae = make_sae("topk", 4, 8, 2, seed=0)
    x = torch.zeros(3, 4, device="meta")
    with pytest.raises(InputError, match="SAE weights"):
        dispatch.encode(x, sae)


def test_kernels_compile_for_hopper(tmp_path):
    """The compiled (not interpreted) kernels build for sm_90 with triton's bundled ptxas,
    so a GPU-only compile error or a compile-time blow-up shows without a GPU."""
    pytest.importorskip("triton")
    code = (
        "import os; os.environ.pop('TRITON_INTERPRET', None)\n"
        "from saekit.kernels import triton_kernels as tk\n"
        "ks = tk.aot_compile(90, 'bf16', 64)\n"
        "ptx = ks['encode'].asm['ptx']\n"
        "assert 'wgmma.mma_async' in ptx, 'encode GEMM does not use Hopper wgmma'\n"
        "assert 'cp.async' in ptx, 'encode GEMM loads are not pipelined'\n"
        "print({n: k.metadata.shared for n, k in ks.items()})\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # a cold compile every run
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=600)
