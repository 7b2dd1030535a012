"""Tensor readers (issue 25, items 7, 9, 10, 14, 15): each checkpoint file is opened once
and read from that descriptor; every tensor's declared size is checked against the bytes
present and sane bounds before anything is materialised; dtypes agree with the config; k
is a strict integer, only for topk/batchtopk. Each attack runs on the real CLI in a child
process: exit 2, one line, no traceback, bounded RSS and time, nothing written or registered."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from sec_helpers import log_measure, python, saekit
from tests.registry.conftest import make_artifact

# The CLI with torch imported peaks near 400 MiB here; the zero-stride .pt peaked at 1.9 GiB.
RSS_BOUND_MIB = 700
SECONDS_BOUND = 60


def _gemmascope(folder: Path, fill: float) -> Path:
    folder.mkdir(parents=True)
    d_in, d_sae = 8, 32
    np.savez(folder / "params.npz", W_enc=np.full((d_in, d_sae), fill, np.float32),
             W_dec=np.full((d_sae, d_in), fill, np.float32), b_enc=np.zeros(d_sae, np.float32),
             b_dec=np.zeros(d_in, np.float32), threshold=np.full(d_sae, 0.5, np.float32))
    return folder / "params.npz"


def _w_enc(art: Path) -> float:
    from safetensors.numpy import load_file

    return float(load_file(str(art / "sae_weights.safetensors"))["W_enc"].max())


# A hook between the tree check and the readers: the deterministic form of the race, where
# the audit won 6 of 20 runs by swapping params.npz for a symlink after the check.
_SWAP_AFTER_CHECK = """
import os, sys
from saekit.schemas import safeio
real = safeio.check_tree
def check_then_swap(path):
    real(path)
    os.unlink({victim!r})
    os.symlink({outside!r}, {victim!r})
safeio.check_tree = check_then_swap
from saekit.cli import main
main({argv!r})
"""


@pytest.mark.parametrize("named", ["folder", "file"])
def test_gemmascope_swapped_for_a_symlink_after_the_check(tmp_path, named):
    victim = _gemmascope(tmp_path / "ckpt", fill=1.0)
    outside = _gemmascope(tmp_path / "outside", fill=7.0)
    src = victim.parent if named == "folder" else victim
    out = tmp_path / "out"
    code = _SWAP_AFTER_CHECK.format(victim=str(victim), outside=str(outside),
                                    argv=["import", "gemmascope", str(src), str(out)])
    r = python(code, home=tmp_path / "home")
    log_measure(f"gemmascope params.npz swapped after the check ({named})", r)
    assert "params.npz: is a symlink" in r.one_line_error(2)
    assert not out.exists()


def test_openai_pt_swapped_for_a_symlink_after_the_check(tmp_path):
    import torch

    victim = tmp_path / "ae.pt"
    outside = tmp_path / "outside.pt"
    for path, fill in ((victim, 1.0), (outside, 7.0)):
        torch.save({"encoder.weight": torch.full((32, 8), fill), "decoder.weight": torch.full((8, 32), fill),
                    "pre_bias": torch.zeros(8), "latent_bias": torch.zeros(32), "activation": "ReLU"}, path)
    out = tmp_path / "out"
    code = _SWAP_AFTER_CHECK.format(victim=str(victim), outside=str(outside),
                                    argv=["import", "openai", str(victim), str(out)])
    r = python(code, home=tmp_path / "home")
    assert "ae.pt: is a symlink" in r.one_line_error(2)
    assert not out.exists()


def test_gemmascope_reader_holds_its_descriptor(tmp_path, monkeypatch):
    """Swapped after the open, the bytes imported are still the ones opened (never re-opened by path)."""
    from saekit.registry.formats import import_checkpoint
    from saekit.schemas import safeio

    victim = _gemmascope(tmp_path / "ckpt", fill=1.0)
    outside = _gemmascope(tmp_path / "outside", fill=7.0)
    real = safeio.open_regular

    def open_then_swap(root, rel):
        f = real(root, rel)
        if rel == "params.npz":
            victim.unlink()
            victim.symlink_to(outside)
        return f

    monkeypatch.setattr(safeio, "open_regular", open_then_swap)
    import_checkpoint("gemmascope", victim.parent, tmp_path / "art")
    assert victim.is_symlink()  # the swap happened
    assert _w_enc(tmp_path / "art") == 1.0


def test_pt_with_zero_strides_is_refused_before_it_is_materialised(tmp_path):
    """2 KB of .pt whose tensors declare 512 MiB over a one-element storage (stride 0)."""
    import torch

    d_in, d_sae = 8192, 16384
    one = torch.ones(1)
    sd = {"encoder.weight": one.as_strided((d_sae, d_in), (0, 0)),
          "decoder.weight": one.as_strided((d_in, d_sae), (0, 0)),
          "pre_bias": one.as_strided((d_in,), (0,)), "latent_bias": one.as_strided((d_sae,), (0,)),
          "activation": "ReLU"}
    path = tmp_path / "ae.pt"
    torch.save(sd, path)
    assert path.stat().st_size < 4096
    home = tmp_path / "home"
    r = saekit("register", str(path), "--from", "openai", "--name", "strided", home=home)
    line = r.one_line_error(2)
    log_measure("register --from openai, zero-stride .pt declaring 512 MiB", r)
    assert "encoder.weight" in line and "storage" in line
    assert r.peak_mib < RSS_BOUND_MIB and r.seconds < SECONDS_BOUND
    assert "strided" not in saekit("ls", home=home).out


def test_pt_with_overlapping_strides_is_refused(tmp_path):
    from saekit.registry.formats import import_checkpoint
    from saekit.schemas import ArtifactFormatError
    import torch

    base = torch.randn(32 + 8)
    sd = {"encoder.weight": base.as_strided((32, 8), (1, 1)),  # rows overlap: 256 elements on 40
          "decoder.weight": torch.randn(8, 32), "pre_bias": torch.zeros(8), "latent_bias": torch.zeros(32),
          "activation": "ReLU"}
    torch.save(sd, tmp_path / "ae.pt")
    with pytest.raises(ArtifactFormatError, match="encoder.weight.*overlap"):
        import_checkpoint("openai", tmp_path / "ae.pt", tmp_path / "art")
    assert not (tmp_path / "art").exists()


def _weights(art: Path) -> tuple[dict, bytes]:
    data = (art / "sae_weights.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _set_weights(art: Path, header: dict, buffer: bytes) -> None:
    raw = json.dumps(header).encode()
    (art / "sae_weights.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + buffer)


@pytest.mark.parametrize("name,shape", [("extra", [0, 2**62, 2**62]), ("extra", [2**40, 0, 2**40]),
                                        ("threshold", [32]), ("W_enc2", [1])])
def test_tensor_outside_the_architecture_never_registers(tmp_path, name, shape):
    """An extra tensor (the reported [0, 2^62, 2^62] one registered as ready, then every load
    exited 70): refused at registration, nothing registered."""
    art = make_artifact(tmp_path / "art")  # topk: W_enc, b_enc, W_dec, b_dec
    header, buffer = _weights(art)
    size = 4 * int(np.prod(shape, dtype=object))
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(buffer), len(buffer) + size]}
    _set_weights(art, header, buffer + b"\0" * size)
    home = tmp_path / "home"
    r = saekit("register", str(art), "--name", "extra", home=home)
    line = r.one_line_error(2)
    log_measure(f"register with tensor {name} {shape}", r)
    assert repr(name) in line and "sae_weights.safetensors" in line
    assert "extra" not in saekit("ls", home=home).out


def test_npz_member_declaring_more_than_its_bytes(tmp_path):
    """A params.npz whose W_dec header declares [2^20, 2^20] over a few bytes."""
    import zipfile

    path = _gemmascope(tmp_path / "ckpt", fill=1.0)
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1048576, 1048576), }"
    header = header.ljust(117) + b"\n"
    member = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 64
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("W_dec2.npy", member)
    with zipfile.ZipFile(path) as z:
        keep = {n: z.read(n) for n in z.namelist() if n != "W_dec.npy"}
    with zipfile.ZipFile(path, "w") as z:
        for n, b in keep.items():
            z.writestr("W_dec.npy" if n == "W_dec2.npy" else n, b)
    r = saekit("import", "gemmascope", str(path), str(tmp_path / "out"), home=tmp_path / "home")
    line = r.one_line_error(2)
    log_measure("import gemmascope, W_dec declaring 4 TiB in 64 bytes", r)
    assert "W_dec" in line and r.peak_mib < RSS_BOUND_MIB
    assert not (tmp_path / "out").exists()


def test_dtype_disagreeing_with_the_config_never_registers(tmp_path):
    """cfg.json says float32, the weights are F16: it registered, tagged float32."""
    import torch
    from safetensors.torch import load_file, save_file

    art = make_artifact(tmp_path / "art")
    tensors = load_file(str(art / "sae_weights.safetensors"))
    save_file({k: v.to(torch.float16) for k, v in tensors.items()}, str(art / "sae_weights.safetensors"))
    assert json.loads((art / "cfg.json").read_text())["dtype"] == "float32"
    home = tmp_path / "home"
    r = saekit("register", str(art), "--name", "f16", home=home)
    line = r.one_line_error(2)
    assert "float32" in line and "F16" in line and "sae_weights.safetensors" in line
    assert "f16" not in saekit("ls", home=home).out
    # the same files imported as a SAELens folder: refused as well
    r = saekit("import", "saelens", str(art), str(tmp_path / "out"), home=home)
    assert "float32" in r.one_line_error(2)
    assert not (tmp_path / "out").exists()


def test_mixed_dtypes_in_a_gemmascope_npz_refused(tmp_path):
    path = tmp_path / "params.npz"
    np.savez(path, W_enc=np.ones((8, 32), np.float32), W_dec=np.ones((32, 8), np.float16),
             b_enc=np.zeros(32, np.float32), b_dec=np.zeros(8, np.float32), threshold=np.ones(32, np.float32))
    r = saekit("import", "gemmascope", str(path), str(tmp_path / "out"), home=tmp_path / "home")
    assert "W_dec" in r.one_line_error(2)


@pytest.mark.parametrize("arch,k", [("relu", 1000000), ("topk", True)])
def test_meaningless_or_coerced_k_never_registers(tmp_path, arch, k):
    """A relu SAE registered with k: 1000000, and k: true became 1."""
    art = make_artifact(tmp_path / "art", arch="topk")
    cfg = json.loads((art / "cfg.json").read_text())
    (art / "cfg.json").write_text(json.dumps({**cfg, "architecture": {"relu": "standard"}.get(arch, arch), "k": k}))
    home = tmp_path / "home"
    r = saekit("register", str(art), "--name", "kk", home=home)
    line = r.one_line_error(2)
    log_measure(f"register {arch} with k {k!r}", r)
    assert "cfg.json" in line and "k" in line
    assert "kk" not in saekit("ls", home=home).out


@pytest.mark.parametrize("arch,field,value", [("jumprelu", "k", 4), ("gated", "k", 1), ("standard", "k", False),
                                              ("topk", "k", "4"), ("topk", "k", 4.0), ("topk", "k", 0),
                                              ("topk", "k", 33), ("topk", "d_sae", 32.0), ("topk", "d_in", True)])
def test_config_fields_are_never_coerced(tmp_path, arch, field, value):
    from saekit.registry.artifact import read_cfg
    from saekit.schemas import ArtifactFormatError

    cfg = {"architecture": arch, "d_in": 8, "d_sae": 32, "dtype": "float32", **({"k": 4} if arch == "topk" else {})}
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, field: value}))
    with pytest.raises(ArtifactFormatError, match=f"cfg.json: .*{field}"):
        read_cfg(tmp_path / "cfg.json")


@pytest.mark.parametrize("field,value", [("apply_b_dec_to_input", "yes"), ("rescale_acts_by_decoder_norm", 1),
                                         ("prepend_bos", "false"), ("context_size", "128"),
                                         ("hook_head_index", 1.0)])
def test_switches_and_other_fields_are_never_coerced_either(tmp_path, field, value):
    """Before (redteam): apply_b_dec_to_input "yes" registered as true; the k rule covered
    sizes only."""
    from saekit.registry.artifact import read_cfg
    from saekit.schemas import ArtifactFormatError

    cfg = {"architecture": "topk", "d_in": 8, "d_sae": 32, "k": 4, "dtype": "float32",
           "metadata": {"sae_lens_version": "6.0.0"}}
    if field in ("prepend_bos", "context_size", "hook_head_index"):  # SAELens v6 keeps them in metadata
        cfg["metadata"][field] = value
    else:
        cfg[field] = value
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactFormatError, match=f"cfg.json: {field}: .*must be"):
        read_cfg(tmp_path / "cfg.json")


def test_a_scaling_factor_without_its_normalization_never_registers(tmp_path):
    """Before (redteam): norm_scaling_factor 3.0 beside normalize_activations 'none' registered
    and was kept, unused. Now it is refused, as k is for a relu SAE."""
    art = make_artifact(tmp_path / "art")
    cfg = json.loads((art / "cfg.json").read_text())
    (art / "cfg.json").write_text(json.dumps({**cfg, "norm_scaling_factor": 3.0}))
    home = tmp_path / "home"
    r = saekit("register", str(art), "--name", "nf", home=home)
    assert "norm_scaling_factor is only for normalize_activations" in r.one_line_error(2)
    assert r.peak_mib < RSS_BOUND_MIB and r.seconds < SECONDS_BOUND
    assert "nf" not in saekit("ls", home=home).out


def test_strided_but_honest_pt_tensors_still_import(tmp_path):
    """No false alarm: a transposed tensor and a slice of a larger storage are plain views."""
    import torch

    from saekit.registry.formats import import_checkpoint

    g = torch.Generator().manual_seed(0)
    sd = {"encoder.weight": torch.randn(8, 32, generator=g).T, "decoder.weight": torch.randn(8, 32, generator=g),
          "pre_bias": torch.randn(100, generator=g)[10:18], "latent_bias": torch.zeros(32), "activation": "ReLU"}
    torch.save(sd, tmp_path / "ae.pt")
    import_checkpoint("openai", tmp_path / "ae.pt", tmp_path / "art")
    assert (tmp_path / "art" / "sae_weights.safetensors").is_file()


@pytest.mark.parametrize("fmt", ["sparsify", "openai"])
def test_importers_do_not_coerce_k(tmp_path, fmt):
    import torch
    from safetensors.torch import save_file

    from saekit.registry.formats import import_checkpoint
    from saekit.schemas import ArtifactFormatError

    if fmt == "sparsify":
        src = tmp_path / "sp"
        src.mkdir()
        save_file({"encoder.weight": torch.randn(32, 8), "encoder.bias": torch.zeros(32),
                   "W_dec": torch.randn(32, 8), "b_dec": torch.zeros(8)}, str(src / "sae.safetensors"))
        (src / "cfg.json").write_text(json.dumps({"activation": "topk", "expansion_factor": 4, "num_latents": 32,
                                                  "k": True, "d_in": 8}))
    else:
        src = tmp_path / "ae.pt"
        torch.save({"encoder.weight": torch.randn(32, 8), "decoder.weight": torch.randn(8, 32),
                    "pre_bias": torch.zeros(8), "latent_bias": torch.zeros(32), "activation": "TopK",
                    "activation_state_dict": {"k": True}}, src)
    with pytest.raises(ArtifactFormatError, match="k: .*must be an integer, not True"):
        import_checkpoint(fmt, src, tmp_path / "art")
    assert not (tmp_path / "art").exists()
