"""The canonical artifact: identity, round trip, and bad input refused with one line naming it."""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys

import pytest
import torch

from saekit.registry import artifact as art
from saekit.registry.refs import check_name, parse_ref
from saekit.schemas import ArtifactFormatError, NotFoundError, ReferenceSyntaxError
from tests.registry.conftest import make_artifact, make_sae


def test_nan_in_bfloat16_is_found_without_torch(tmp_path):
    from safetensors.torch import save_file

    folder = make_artifact(tmp_path / "a")
    t = {k: v.to(torch.bfloat16) for k, v in art.read_safetensors(folder / art.WEIGHTS).items()}
    t["W_enc"][0, 0] = float("inf")
    save_file(t, str(folder / art.WEIGHTS))
    cfg = json.loads((folder / art.CFG).read_text())
    (folder / art.CFG).write_text(json.dumps({**cfg, "dtype": "bfloat16"}))  # weights agree with their config
    _refused(folder, ArtifactFormatError, "'W_enc' contains NaN or inf")


def test_round_trip_and_identity(tmp_path):
    sae = make_sae(1)
    sha = art.save_artifact(sae, tmp_path / "a")
    assert sha == art.artifact_sha256(tmp_path / "a")
    assert art.save_artifact(sae, tmp_path / "b") == sha  # deterministic bytes, same identity
    back = art.load_artifact(tmp_path / "a", expected_sha256=sha)
    assert back.cfg == sae.cfg
    for k, v in sae.tensors.items():
        assert torch.equal(back.tensors[k], v)
    x = torch.randn(5, 8)
    assert torch.equal(back.encode(x).indices, sae.encode(x).indices)
    assert art.save_artifact(make_sae(2), tmp_path / "c") != sha


def test_sha_mismatch_is_integrity_error(artifact):
    from saekit.schemas import IntegrityError

    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        art.load_artifact(artifact, expected_sha256="0" * 64)


def _refused(folder, exc, match):
    """Both readers (load_artifact: torch; validate_artifact: used by register) refuse it."""
    for reader in (art.load_artifact, art.validate_artifact):
        with pytest.raises(exc, match=match) as e:
            reader(folder)
        assert "\n" not in str(e.value)
    return e


def _write_weights(folder, data: bytes):
    (folder / art.WEIGHTS).write_bytes(data)
    return folder / art.WEIGHTS


def test_truncated_header(artifact):
    data = (artifact / art.WEIGHTS).read_bytes()
    path = _write_weights(artifact, data[:20])
    e = _refused(artifact, ArtifactFormatError, "header truncated")
    assert str(path) in str(e.value)


def test_truncated_data(artifact):
    data = (artifact / art.WEIGHTS).read_bytes()
    _write_weights(artifact, data[:-16])
    _refused(artifact, ArtifactFormatError, "do not fit")


def test_oversized_header(artifact):
    _write_weights(artifact, struct.pack("<Q", 1 << 40) + b"{}")
    _refused(artifact, ArtifactFormatError, "oversized")


def test_pickle_instead_of_safetensors(artifact):
    _write_weights(artifact, pickle.dumps({"W_enc": [1.0]}))
    e = _refused(artifact, ArtifactFormatError, "is a pickle, not safetensors")
    assert art.WEIGHTS in str(e.value)


def test_torch_save_instead_of_safetensors(artifact, tmp_path):
    torch.save({"W_enc": torch.zeros(2)}, tmp_path / "x.pt")
    _write_weights(artifact, (tmp_path / "x.pt").read_bytes())
    _refused(artifact, ArtifactFormatError, "zip")


def test_wrong_shape(tmp_path):
    from safetensors.torch import save_file

    folder = make_artifact(tmp_path / "a")
    t = art.read_safetensors(folder / art.WEIGHTS)
    t["W_dec"] = torch.zeros(31, 8)
    save_file(t, str(folder / art.WEIGHTS))
    _refused(folder, ArtifactFormatError, r"'W_dec' has shape \(31, 8\), expected \(32, 8\)")


def test_nan_weights(tmp_path):
    from safetensors.torch import save_file

    folder = make_artifact(tmp_path / "a")
    t = art.read_safetensors(folder / art.WEIGHTS)
    t["b_enc"][3] = float("nan")
    save_file(t, str(folder / art.WEIGHTS))
    _refused(folder, ArtifactFormatError, "'b_enc' contains NaN")


def test_missing_file_and_bad_cfg(tmp_path):
    folder = make_artifact(tmp_path / "a")
    (folder / art.WEIGHTS).unlink()
    _refused(folder, NotFoundError, f"missing {art.WEIGHTS}")
    folder = make_artifact(tmp_path / "b")
    cfg = json.loads((folder / art.CFG).read_text())
    cfg["d_sae"] = -1
    (folder / art.CFG).write_text(json.dumps(cfg))
    _refused(folder, ArtifactFormatError, "d_sae")


def test_saelens_loads_canonical_artifact(artifact):
    from sae_lens import SAE as LensSAE

    lens = LensSAE.load_from_disk(str(artifact))
    ours = art.load_artifact(artifact)
    x = torch.randn(6, 8)
    assert torch.allclose(lens.encode(x), ours.encode_dense(x), atol=1e-5)


@pytest.mark.parametrize("name", ["", "a b", "a/b", "x'y", "name%20", "-lead", "a" * 129, "ü"])
def test_bad_names(name):
    with pytest.raises(ReferenceSyntaxError):
        check_name(name)


@pytest.mark.parametrize("text,kind", [("m", "latest"), ("m@production", "alias"), ("m/3", "version"),
                                       ("m@sha256:deadbeef", "sha256"), ("./x", "path")])
def test_refs(text, kind):
    assert parse_ref(text).kind == kind


@pytest.mark.parametrize("text", ["m@@x", "m/0", "m@sha256:abc", "m/1/2", "a b"])
def test_bad_refs(text):
    with pytest.raises(ReferenceSyntaxError):
        parse_ref(text)


def test_cli_bad_input_one_line(tmp_path):
    folder = make_artifact(tmp_path / "a")
    (folder / art.WEIGHTS).write_bytes(pickle.dumps([1, 2]))
    r = subprocess.run([sys.executable, "-m", "saekit", "register", str(folder), "--name", "x"],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "pickle" in r.stderr and art.WEIGHTS in r.stderr
    r = subprocess.run([sys.executable, "-m", "saekit", "register", str(tmp_path / "a"), "--name", "bad name"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "'bad name'" in r.stderr
