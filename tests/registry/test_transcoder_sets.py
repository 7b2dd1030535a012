"""Transcoder sets as one registry version, and transcoders in other libraries' layouts.

Oracles: sae-lens' own classes (its four transcoder architectures, loading saekit's export
and saved by sae-lens itself), sparsify's SparseCoder(transcode=True) with and without a
skip connection, Gemma Scope's documented formula, and circuit-tracer 0.5.0 in its own venv
(scripts/peer_venv.sh; its pins clash with saekit's) reading a set saekit exported.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from transcoder_helpers import SAELENS_TRANSCODERS, by_hand, make_transcoder

import saekit
from saekit.cli import main
from saekit.kernels.transcoder import Transcoder, TranscoderSet
from saekit.registry import formats, store
from saekit.registry import transcoder_set as tset
from saekit.schemas import ArtifactFormatError, InputError, IntegrityError, UnsupportedSAEError

ROOT = Path(__file__).resolve().parents[2]


def make_set(archs=("transcoder", "jumprelu_skip_transcoder", "topk_skip_transcoder", "skip_transcoder"),
             layers=None, d=11, d_sae=23, hook=lambda i: f"model.layers.{i}.mlp", **kw) -> TranscoderSet:
    layers = layers or list(range(len(archs)))
    return TranscoderSet({i: make_transcoder(a, seed=i, d_in=d, d_sae=d_sae, d_out=d, hook=hook(i), **kw)
                          for i, a in zip(layers, archs)}, model_revision="rev1")


def assert_same(a, b, x):
    assert a.layers == b.layers
    for i in a.layers:
        assert a[i].architecture == b[i].architecture and (a[i].hook_in, a[i].hook_out) == (b[i].hook_in, b[i].hook_out)
        torch.testing.assert_close(a[i](x), b[i](x), rtol=1e-6, atol=1e-6)


def test_set_is_one_version_loaded_by_alias(tmp_path):
    s = make_set(layers=[0, 2, 5, 29])  # gaps: a partial set
    info = saekit.register("smollm2-tc", s, alias="production")
    assert info.tags["saekit.kind"] == "transcoder_set" and info.tags["saekit.layers"] == "0,2,5,29"
    assert set(info.files) == {"set.json"} | {f"layer_{i}/{n}" for i in s.layers
                                              for n in ("cfg.json", "sae_weights.safetensors")}
    got = saekit.load("smollm2-tc@production")
    assert isinstance(got, TranscoderSet) and got.model_revision == "rev1" and got.ref.sha256 == info.sha256
    assert isinstance(got[29], Transcoder) and got[29].ref.name == "smollm2-tc/layer_29"
    assert_same(s, got, torch.randn(7, 11))
    assert saekit.register("smollm2-tc", s).version == info.version  # identical content: same version
    # each layer records its own sha256 in set.json, and the layer folder loads alone
    folder = store.fetch("smollm2-tc/1")
    meta = tset.read_info(folder)
    assert [e.sha256 for e in meta.layers] == [got[i].ref.sha256 for i in got.layers]
    assert isinstance(saekit.load(folder / "layer_5"), Transcoder)
    # saekit pull copies the whole set, which loads as the same set
    from saekit.registry.folders import pull

    sha, names = pull("smollm2-tc@production", tmp_path / "pulled")
    assert sha == info.sha256 and "layer_29/cfg.json" in names
    assert_same(s, saekit.load(tmp_path / "pulled"), torch.randn(2, 11))
    # from a cold cache the files come from the registry store, each verified
    store.cache.evict(info.sha256)
    assert_same(s, saekit.load("smollm2-tc/1"), torch.randn(3, 11))


def test_set_folder_registers_via_cli_and_a_tampered_layer_is_refused(tmp_path, capsys):
    s = make_set()
    tset.save_set(s, tmp_path / "set")
    code = main_code(["register", str(tmp_path / "set"), "--name", "tcs", "--json"], capsys)
    assert code == 0
    layer = tmp_path / "set" / "layer_1" / "sae_weights.safetensors"
    data = bytearray(layer.read_bytes())
    data[-1] ^= 1
    layer.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="layer_1"):
        tset.validate_set(tmp_path / "set")
    assert main_code(["register", str(tmp_path / "set"), "--name", "tcs"], capsys) == 1


def main_code(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    capsys.readouterr()
    return exc.value.code


@pytest.mark.parametrize("arch", SAELENS_TRANSCODERS)
def test_saelens_loads_the_export_and_saekit_loads_saelens_saves(arch, tmp_path):
    from sae_lens import SAE as LensSAE

    s = TranscoderSet({3: make_transcoder(arch, d_in=9, d_sae=31, d_out=17, seed=4, hook="blocks.3.ln2.hook_normalized",
                                          hook_out="blocks.3.hook_mlp_out")})
    formats.export(s, "saelens", tmp_path / "sl")
    lens = LensSAE.load_from_disk(str(tmp_path / "sl" / "layer_3"))
    x = torch.randn(13, 9)
    with torch.no_grad():
        torch.testing.assert_close(lens(x), s[3](x), rtol=1e-5, atol=1e-5)
    assert lens.cfg.metadata.hook_name_out == "blocks.3.hook_mlp_out"
    # a folder sae-lens saved itself, loaded by saekit (single transcoder and as a set)
    lens.save_model(str(tmp_path / "own" / "layer_3"))
    one = formats.read_checkpoint("saelens", tmp_path / "own" / "layer_3")
    both = formats.read_checkpoint("saelens", tmp_path / "own")
    with torch.no_grad():
        torch.testing.assert_close(one(x), lens(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(both[3](x), lens(x), rtol=1e-5, atol=1e-5)
    assert (one.hook_in, one.hook_out, one.d_out) == ("blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out", 17)


def test_saelens_export_refuses_topk(tmp_path):
    with pytest.raises(InputError, match="sae-lens has no topk_transcoder"):
        formats.export(make_set(("topk_transcoder",)), "saelens", tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("skip", [False, True])
def test_sparsify_transcoders_import_and_export(skip, tmp_path, monkeypatch):
    import sparsify.sparse_coder
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.utils import eager_decode

    if not torch.cuda.is_available():
        monkeypatch.setattr(sparsify.sparse_coder, "decoder_impl", eager_decode)
    coders = {}
    for i in (0, 7):  # a sparsify run over two hookpoints: one folder each (SparseCoder.load_many)
        c = SparseCoder(21, SparseCoderConfig(num_latents=45, k=6, transcode=True, skip_connection=skip))
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in c.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        c.save_to_disk(tmp_path / "run" / f"layers.{i}.mlp")
        coders[i] = c
    code = main_code(["register", str(tmp_path / "run"), "--from", "sparsify", "--name", "sp-tc",
                      "--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--alias", "candidate"], capsys=_Null())
    assert code == 0
    s = saekit.load("sp-tc@candidate")
    assert s.layers == [0, 7] and s[7].hook_in == s[7].hook_out == "model.layers.7.mlp"
    x, y = torch.randn(19, 21), torch.randn(19, 21)
    for i, c in coders.items():
        with torch.no_grad():
            torch.testing.assert_close(s[i](x), c(x, y).sae_out, rtol=1e-5, atol=1e-5)
    formats.export(s[7], "sparsify", tmp_path / "back")
    again = SparseCoder.load_from_disk(tmp_path / "back")
    assert again.cfg.transcode and again.cfg.skip_connection == skip
    with torch.no_grad():
        torch.testing.assert_close(again(x, y).sae_out, s[7](x), rtol=1e-5, atol=1e-5)


class _Null:
    def readouterr(self):
        return None


def test_single_transcoder_with_hook_in_and_out_via_cli(tmp_path, capsys):
    from sparsify import SparseCoder, SparseCoderConfig

    SparseCoder(8, SparseCoderConfig(num_latents=16, k=2, transcode=True)).save_to_disk(tmp_path / "sp")
    assert main_code(["register", str(tmp_path / "sp"), "--from", "sparsify", "--name", "one",
                      "--hook-in", "model.layers.2.post_attention_layernorm", "--hook-out", "model.layers.2.mlp"],
                     capsys) == 0
    tc = saekit.load("one/1")
    assert (tc.hook_in, tc.hook_out) == ("model.layers.2.post_attention_layernorm", "model.layers.2.mlp")
    assert store.resolve("one/1").tags["saekit.hook_out"] == "model.layers.2.mlp"
    assert main_code(["register", str(tmp_path / "sp"), "--from", "sparsify", "--name", "one", "--hook", "a",
                      "--hook-in", "b"], capsys) == 2


def test_gemmascope_transcoder_npz(tmp_path):
    rng = np.random.default_rng(0)
    d_in, d_sae = 12, 40
    p = {"W_enc": rng.standard_normal((d_in, d_sae)).astype(np.float32) * 0.3,
         "W_dec": rng.standard_normal((d_sae, d_in)).astype(np.float32),
         "b_enc": rng.standard_normal(d_sae).astype(np.float32) * 0.1,
         "b_dec": rng.standard_normal(d_in).astype(np.float32),
         "threshold": np.abs(rng.standard_normal(d_sae)).astype(np.float32) * 0.2}
    np.savez(tmp_path / "params.npz", **p)
    tc = formats.read_checkpoint("gemmascope-transcoder", tmp_path / "params.npz", hook_name="blocks.4.ln2.hook_normalized",
                                 hook_name_out="blocks.4.hook_mlp_out")
    assert tc.architecture == "jumprelu_transcoder" and tc.hook_out == "blocks.4.hook_mlp_out"
    x = rng.standard_normal((9, d_in)).astype(np.float32)
    pre = x @ p["W_enc"] + p["b_enc"]
    want = (pre * (pre > p["threshold"])) @ p["W_dec"] + p["b_dec"]  # the Gemma Scope tutorial's JumpReLU
    np.testing.assert_allclose(tc(torch.from_numpy(x)).numpy(), want, rtol=1e-5, atol=1e-5)


def test_circuit_tracer_layout_roundtrip_and_refusals(tmp_path):
    s = make_set()
    formats.export(s, "circuit-tracer", tmp_path / "ct")
    back = formats.read_checkpoint("circuit-tracer", tmp_path / "ct", model_name="org/model", model_revision="rev1")
    assert_same(s, back, torch.randn(5, 11))
    with pytest.raises(InputError, match="every layer from 0"):
        formats.export(make_set(("transcoder",), layers=[1]), "circuit-tracer", tmp_path / "no")
    with pytest.raises(InputError, match="one width"):
        formats.export(TranscoderSet({i: make_transcoder("transcoder", d_in=11, d_out=11, d_sae=8 + i,
                                                         hook=f"model.layers.{i}.mlp") for i in (0, 1)}),
                       "circuit-tracer", tmp_path / "no")
    with pytest.raises(InputError, match="one pair of hooks"):
        mixed = make_set(("transcoder", "transcoder"), hook=lambda i: "model.layers.0.mlp" if i == 0 else "blocks.1.hook_mlp_out")
        formats.export(mixed, "circuit-tracer", tmp_path / "no")
    cfg = tmp_path / "ct" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("transcoder_set", "cross_layer_transcoder"))
    with pytest.raises(UnsupportedSAEError, match="cross_layer_transcoder"):
        formats.read_checkpoint("circuit-tracer", tmp_path / "ct")
    from safetensors.torch import save_file

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\n"
                                                 "feature_output_hook: mlp.hook_out\n")
    save_file({"W_enc": torch.zeros(4, 3), "W_dec": torch.zeros(4, 3), "b_enc": torch.zeros(4), "b_dec": torch.zeros(3),
               "log_thresholds": torch.zeros(4)}, tmp_path / "bad" / "layer_0.safetensors")
    with pytest.raises(UnsupportedSAEError, match="log_thresholds"):
        formats.read_checkpoint("circuit-tracer", tmp_path / "bad")


def _peer_python(peer: str) -> str:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "peer_venv.sh"), peer], capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("archs", [("transcoder", "jumprelu_skip_transcoder", "skip_transcoder"),
                                   ("topk_skip_transcoder", "jumprelu_transcoder")])
def test_circuit_tracer_reads_the_export(archs, tmp_path):
    """circuit-tracer 0.5.0, in its own venv, loads the set saekit exported (from the registry)
    and its transcoder outputs equal saekit's within 1e-5."""
    from safetensors.torch import load_file, save_file

    python = _peer_python("circuit-tracer")
    saekit.register("ct-set", make_set(archs, d=19, d_sae=57), alias="production")
    s = saekit.load("ct-set@production")
    assert main_code(["export", "circuit-tracer", "ct-set@production", str(tmp_path / "ct")], _Null()) == 0
    xs = {f"x_{i}": torch.randn(33, 19) * 2 for i in s.layers}
    save_file(xs, tmp_path / "x.safetensors")
    run = subprocess.run([python, str(ROOT / "tests" / "peers" / "circuit_tracer_oracle.py"), str(tmp_path / "ct"),
                          str(tmp_path / "x.safetensors"), str(tmp_path / "y.safetensors")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ys = load_file(tmp_path / "y.safetensors")
    for i in s.layers:
        x = xs[f"x_{i}"]
        torch.testing.assert_close(ys[f"y_{i}"], s[i](x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ys[f"acts_{i}"], s[i].encode_dense(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s[i](x).double(), by_hand(s[i], x), rtol=1e-5, atol=1e-5)


def test_bf16_set_and_bad_set_json(tmp_path):
    s = make_set(("jumprelu_skip_transcoder", "topk_transcoder"), layers=[3, 8], dtype=torch.bfloat16)
    info = saekit.register("bf", s)
    got = saekit.load(f"bf@sha256:{info.sha256[:16]}")
    assert got[8].dtype == torch.bfloat16 and got[8].cfg.dtype == "bfloat16"
    x = torch.randn(4, 11)
    torch.testing.assert_close(got[3](x), s[3](x))
    torch.testing.assert_close(got[3](x).double(), by_hand(got[3], x.bfloat16()), rtol=3e-2, atol=3e-2)
    folder = tmp_path / "set"
    tset.save_set(s, folder)
    meta = json.loads((folder / "set.json").read_text())
    meta["saekit"]["layers"][0]["path"] = "../layer_3"
    (folder / "set.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactFormatError, match="path"):
        saekit.load(folder)
    with pytest.raises(InputError, match="not an empty folder"):
        tset.save_set(s, folder)
