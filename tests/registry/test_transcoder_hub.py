"""Transcoder sets and Gemma Scope transcoders registered from the (loopback) Hub, pinned:
hf:// of a circuit-tracer set, saelens:RELEASE/* of a SAELens release stored that way
(mwhanna_transcoder), and a Gemma Scope transcoder params.npz (gemma_2_transcoder)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transcoder_helpers import make_transcoder

import saekit
from saekit.kernels.transcoder import Transcoder, TranscoderSet
from saekit.registry import formats, store
from saekit.schemas import InputError


@pytest.fixture
def hub(tmp_path, monkeypatch):
    from saekit.testing.loopback_hub import serve

    server = serve(tmp_path / "hub")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield server
    server.stop()


def _push(hub, repo, folder, message="seed"):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token="hf_test")
    api.create_repo(repo, exist_ok=True)
    return api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message=message).oid


def _ct_repo(tmp_path, hub, seed):
    s = TranscoderSet({i: make_transcoder(a, seed=seed + i, d_in=10, d_sae=26, d_out=10, hook=f"model.layers.{i}.mlp",
                                          model="org/tiny-lm")
                       for i, a in enumerate(("skip_transcoder", "jumprelu_transcoder", "transcoder"))})
    formats.export(s, "circuit-tracer", tmp_path / f"ct{seed}")
    return s, _push(hub, "org/tiny-transcoders", tmp_path / f"ct{seed}", f"seed {seed}")


def test_circuit_tracer_set_by_hf_uri_and_saelens_release(tmp_path, hub):
    s, commit = _ct_repo(tmp_path, hub, seed=1)
    info = saekit.register("tiny-tc", "hf://org/tiny-transcoders", alias="production")
    assert info.tags["saekit.kind"] == "transcoder_set" and info.tags["saekit.source.commit"] == commit
    assert info.tags["saekit.source.layout"] == "circuit-tracer"
    files = json.loads(info.tags["saekit.source.files"])
    assert sorted(files) == ["config.yaml", "layer_0.safetensors", "layer_1.safetensors", "layer_2.safetensors"]
    got = saekit.load("tiny-tc@production")
    assert isinstance(got, TranscoderSet) and got.model_name == "org/tiny-lm"
    x = torch.randn(8, 10)
    for i in s.layers:
        torch.testing.assert_close(got[i](x), s[i](x))
        assert got[i].cfg.provenance.source == info.tags["saekit.source"] == f"hf://org/tiny-transcoders@{commit}"
    # a later push does not change the pinned version; the SAELens catalogue names the same set
    _ct_repo(tmp_path, hub, seed=7)
    torch.testing.assert_close(saekit.load("tiny-tc/1")[0](x), s[0](x))
    catalogue = tmp_path / "pretrained_saes.yaml"
    catalogue.write_text("tiny-transcoders:\n  model: org/tiny-lm\n  repo_id: org/tiny-transcoders\n"
                         "  conversion_func: mwhanna_transcoder\n  saes:\n  - id: layer_0\n    path: layer_0.safetensors\n")
    v2 = saekit.register("tiny-tc", "saelens:tiny-transcoders/*", catalogue=catalogue)
    assert v2.version == 2 and v2.tags["saekit.source.saelens"] == "tiny-transcoders/*"
    assert saekit.load("tiny-tc/2").layers == [0, 1, 2]
    with pytest.raises(InputError, match="saelens:tiny-transcoders/\\*"):
        saekit.register("tiny-tc", "saelens:tiny-transcoders/layer_0", catalogue=catalogue)


def test_gemmascope_transcoder_from_the_hub(tmp_path, hub):
    rng = np.random.default_rng(3)
    d_in, d_sae = 6, 1024  # the folder says width_1k
    p = {"W_enc": rng.standard_normal((d_in, d_sae)).astype(np.float32),
         "W_dec": rng.standard_normal((d_sae, d_in)).astype(np.float32),
         "b_enc": rng.standard_normal(d_sae).astype(np.float32), "b_dec": rng.standard_normal(d_in).astype(np.float32),
         "threshold": np.abs(rng.standard_normal(d_sae)).astype(np.float32)}
    folder = tmp_path / "gs" / "layer_5" / "width_1k" / "average_l0_33"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **p)
    _push(hub, "google/gemma-scope-2b-pt-transcoders", tmp_path / "gs")
    info = saekit.register("gs-tc", "hf://google/gemma-scope-2b-pt-transcoders/layer_5/width_1k/average_l0_33")
    tc = saekit.load("gs-tc/1")
    assert isinstance(tc, Transcoder) and tc.architecture == "jumprelu_transcoder"
    assert (tc.hook_in, tc.hook_out) == ("blocks.5.ln2.hook_normalized", "blocks.5.hook_mlp_out")
    assert info.tags["saekit.hook_out"] == "blocks.5.hook_mlp_out" and tc.cfg.model_name == "google/gemma-2-2b"
    x = rng.standard_normal((4, d_in)).astype(np.float32)
    pre = x @ p["W_enc"] + p["b_enc"]
    want = (pre * (pre > p["threshold"])) @ p["W_dec"] + p["b_dec"]
    np.testing.assert_allclose(tc(torch.from_numpy(x)).numpy(), want, rtol=1e-4, atol=1e-4)
    assert store.resolve("gs-tc/1").tags["saekit.source.layout"] == "gemmascope"


def test_a_glob_of_per_layer_transcoders_is_one_set(tmp_path, hub):
    """SAELens-layout transcoder folders, one per layer (odd layers, different widths), named by
    a glob: one set version, its layers from the folder names; re-running returns it."""
    from sae_lens import SAE as LensSAE

    made = {}
    for layer, arch, d_sae in ((1, "skip_transcoder", 24), (4, "jumprelu_transcoder", 40), (11, "transcoder", 33)):
        tc = make_transcoder(arch, d_in=7, d_sae=d_sae, d_out=9, seed=layer, hook=f"blocks.{layer}.ln2.hook_normalized",
                             hook_out=f"blocks.{layer}.hook_mlp_out", model="org/tiny-lm")
        formats.export(tc, "saelens", tmp_path / "tcs" / f"layer_{layer}")
        made[layer] = LensSAE.load_from_disk(str(tmp_path / "tcs" / f"layer_{layer}"))
    commit = _push(hub, "org/lens-transcoders", tmp_path / "tcs")
    [info] = saekit.register("lens-tc", "hf://org/lens-transcoders/layer_*", alias="candidate")  # a glob: a list
    assert info.tags["saekit.layers"] == "1,4,11" and info.tags["saekit.source"] == f"hf://org/lens-transcoders@{commit}/layer_*"
    got = saekit.load("lens-tc@candidate")
    x = torch.randn(6, 7)
    with torch.no_grad():
        for layer, lens in made.items():
            torch.testing.assert_close(got[layer](x), lens(x), rtol=1e-5, atol=1e-5)
    assert got.model_name == "org/tiny-lm" and got[4].hook_out == "blocks.4.hook_mlp_out"
    [again] = saekit.register("lens-tc", "hf://org/lens-transcoders/layer_*")
    assert again.version == info.version and "candidate" in info.aliases
