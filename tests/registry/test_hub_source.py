"""Registering published checkpoints straight from the Hub (hf:// and saelens:).

The loopback Hub is seeded through the real huggingface_hub client with repos in each
source layout, written by the real libraries where they exist (sae-lens ``save_model``,
sparsify ``SparseCoder.save_to_disk``) and by the documented layout otherwise (Gemma Scope
params.npz, an OpenAI state dict as .pt and .safetensors). Every registered SAE is loaded
back by name and its encode compared with the source library or the documented formula.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import saekit
from saekit.registry import hub_source, store
from saekit.registry.artifact import sha256_file
from saekit.schemas import HubError

D_IN, D_SAE, K = 8, 32, 4
GS_WIDTH = 1024  # Gemma Scope folder "width_1k"


def dense(sae, x):
    return sae.encode_dense(x)


def _randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


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


def _push(hub, repo: str, folder: Path, message: str = "seed") -> str:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token="hf_test")
    api.create_repo(repo, exist_ok=True)
    return api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message=message).oid


def _saelens_repo(tmp_path, hub, seed=1):
    import sae_lens

    lens = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, dtype="float32", device="cpu"))
    _randomize(lens, seed)
    root = tmp_path / f"lens-src-{seed}"
    lens.save_model(root / "blocks.0.hook_resid_pre")
    cfg = json.loads((root / "blocks.0.hook_resid_pre" / "cfg.json").read_text())
    cfg["metadata"].update(model_name="gpt2", hook_name="blocks.0.hook_resid_pre")
    (root / "blocks.0.hook_resid_pre" / "cfg.json").write_text(json.dumps(cfg))
    commit = _push(hub, "lens/saes", root, f"seed {seed}")
    return lens, root, commit


def test_saelens_folder_by_hf_uri_pinned_and_revisions(tmp_path, hub):
    lens, root, commit = _saelens_repo(tmp_path, hub, seed=1)
    v1 = saekit.register("lens0", "hf://lens/saes/blocks.0.hook_resid_pre")
    sae = saekit.load("lens0")
    x = torch.randn(64, D_IN)
    with torch.no_grad():
        want = lens.encode(x)
    assert (dense(sae, x) - want).abs().max().item() < 1e-5
    assert sae.cfg.hook_name == "blocks.0.hook_resid_pre" and sae.cfg.model_name == "gpt2"
    # provenance: repo, the resolved commit, path, and the sha256 of every source file
    t = v1.tags
    assert t["saekit.source.commit"] == commit and t["saekit.source.repo"] == "lens/saes"
    assert t["saekit.source"] == f"hf://lens/saes@{commit}/blocks.0.hook_resid_pre"
    files = json.loads(t["saekit.source.files"])
    assert files == {f"blocks.0.hook_resid_pre/{n}": sha256_file(root / "blocks.0.hook_resid_pre" / n)
                     for n in ("cfg.json", "sae_weights.safetensors")}
    assert store.resolve("lens0/1").tags["saekit.source.commit"] == commit
    assert sae.cfg.provenance.source == t["saekit.source"]

    # a later commit to the source repo does not change the registered version ...
    lens2, _, commit2 = _saelens_repo(tmp_path, hub, seed=2)
    assert commit2 != commit
    again = saekit.load("lens0/1")
    assert again.ref.sha256 == v1.sha256
    assert torch.equal(dense(again, x), dense(sae, x))
    # ... registering the same path at the new revision makes a new version
    v2 = saekit.register("lens0", "hf://lens/saes@main/blocks.0.hook_resid_pre")
    assert v2.version == 2 and v2.tags["saekit.source.commit"] == commit2
    with torch.no_grad():
        assert (dense(saekit.load("lens0/2"), x) - lens2.encode(x)).abs().max().item() < 1e-5
    # and the old commit, named explicitly, is the existing version 1
    assert saekit.register("lens0", f"hf://lens/saes@{commit}/blocks.0.hook_resid_pre").version == 1
    assert [i.version for i in store.list_versions("lens0")] == [1, 2]


def test_saelens_catalogue_and_pre6_cfg(tmp_path, hub):
    lens, root, commit = _saelens_repo(tmp_path, hub, seed=3)
    # the older sae-lens cfg.json keys still on the Hub (pre-6.0: hook_point, activation_fn_str)
    g = torch.Generator().manual_seed(4)
    w = {"W_enc": torch.randn(D_IN, D_SAE, generator=g), "b_enc": torch.randn(D_SAE, generator=g) * 0.1,
         "W_dec": torch.randn(D_SAE, D_IN, generator=g), "b_dec": torch.randn(D_IN, generator=g) * 0.1}
    old = tmp_path / "old" / "blocks.3.hook_resid_pre"
    old.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file(w, str(old / "sae_weights.safetensors"))
    (old / "cfg.json").write_text(json.dumps({
        "model_name": "gpt2-small", "hook_point": "blocks.3.hook_resid_pre", "hook_point_layer": 3,
        "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K}, "apply_b_dec_to_input": True, "normalize_activations": False,
        "context_size": 128, "sae_lens_training_version": "3.12.0"}))
    _push(hub, "jb/old-saes", tmp_path / "old")
    catalogue = tmp_path / "pretrained_saes.yaml"
    catalogue.write_text(
        "test-lens:\n  model: gpt2\n  repo_id: lens/saes\n  saes:\n"
        "  - id: blocks.0.hook_resid_pre\n    path: blocks.0.hook_resid_pre\n    l0: 4\n"
        "    neuronpedia: gpt2-small/0-res-test\n"
        "old-lens:\n  model: gpt2\n  repo_id: jb/old-saes\n  config_overrides:\n    dataset_path: apollo/pile\n"
        "  saes:\n"
        "  - id: blocks.3\n    path: blocks.3.hook_resid_pre\n")
    by_hf = saekit.register("cat", "hf://lens/saes/blocks.0.hook_resid_pre")
    by_name = saekit.register("cat", "saelens:test-lens/blocks.0.hook_resid_pre", catalogue=catalogue,
                              tags={"team": "interp"})
    assert by_name.version == by_hf.version and by_name.sha256 == by_hf.sha256  # same commit, same artifact
    assert store.resolve("cat/1").tags["saekit.source.saelens"] == "test-lens/blocks.0.hook_resid_pre"
    assert store.resolve("cat/1").tags["team"] == "interp"

    v = saekit.register("old", "saelens:old-lens/blocks.3", catalogue=catalogue)
    sae = saekit.load("old")
    assert sae.cfg.architecture == "topk" and sae.cfg.k == K and sae.cfg.hook_name == "blocks.3.hook_resid_pre"
    x = torch.randn(64, D_IN)
    pre = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])  # SAELens TopK: topk of relu(pre)
    top = pre.topk(K, dim=-1)
    want = torch.zeros_like(pre).scatter_(-1, top.indices, top.values)
    assert (dense(sae, x) - want).abs().max().item() < 1e-5
    assert v.tags["saekit.source.saelens_cfg"].startswith("pre-6.0")
    assert sae.cfg.metadata["dataset_path"] == "apollo/pile"  # the catalogue's config_overrides, as SAELens applies them

    # the installed sae-lens package's own catalogue, read from disk
    entry = hub_source.lookup_saelens("gemma-scope-2b-pt-res", "layer_0/width_16k/average_l0_105")
    assert entry["repo_id"] == "google/gemma-scope-2b-pt-res"
    assert entry["path"] == "layer_0/width_16k/average_l0_105" and entry["l0"] == 105


def test_sparsify_folders(tmp_path, hub):
    from sparsify import SparseCoder, SparseCoderConfig

    coders = {}
    for layer in (0, 1):
        coder = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=K), device="cpu")
        _randomize(coder, 10 + layer)
        coder.save_to_disk(tmp_path / "sp" / f"layers.{layer}")
        coders[layer] = coder
    _push(hub, "eleuther/sae-tiny", tmp_path / "sp")
    v = saekit.register("sp1", "hf://eleuther/sae-tiny/layers.1", model_name="EleutherAI/pythia-70m")
    sae = saekit.load("sp1")
    assert sae.cfg.hook_name == "blocks.1.hook_resid_post" and sae.cfg.model_name == "EleutherAI/pythia-70m"
    assert v.tags["saekit.source.layout"] == "sparsify"
    x = torch.randn(64, D_IN)
    with torch.no_grad():
        out = coders[1].encode(x)
    want = torch.zeros(64, D_SAE).scatter_(1, out.top_indices, out.top_acts)
    assert (dense(sae, x) - want).abs().max().item() < 1e-5


def _gemmascope_params(seed):
    rng = np.random.default_rng(seed)
    return {"W_enc": rng.standard_normal((D_IN, GS_WIDTH)).astype(np.float32),
            "W_dec": rng.standard_normal((GS_WIDTH, D_IN)).astype(np.float32),
            "b_enc": (rng.standard_normal(GS_WIDTH) * 0.1).astype(np.float32),
            "b_dec": (rng.standard_normal(D_IN) * 0.1).astype(np.float32),
            "threshold": (rng.random(GS_WIDTH) * 0.5).astype(np.float32)}


def test_gemmascope_glob_one_bar_resumable(tmp_path, hub, monkeypatch):
    params = {}
    for layer, l0 in ((0, 12), (1, 30)):
        d = tmp_path / "gs" / f"layer_{layer}" / "width_1k" / f"average_l0_{l0}"
        d.mkdir(parents=True)
        params[layer] = _gemmascope_params(layer)
        np.savez(d / "params.npz", **params[layer])
    (tmp_path / "gs" / "README.md").write_text("Gemma Scope (test double)\n")
    wrong = tmp_path / "gs" / "layer_2" / "width_2k" / "average_l0_5"  # folder and weights disagree
    wrong.mkdir(parents=True)
    np.savez(wrong / "params.npz", **_gemmascope_params(2))
    _push(hub, "google/gemma-scope-2b-pt-res", tmp_path / "gs")
    ref = "hf://google/gemma-scope-2b-pt-res/layer_*/width_1k/*"

    # the second SAE fails once: the first is registered, nothing half-made
    real = hub_source.convert
    calls = {"n": 0}

    def flaky(res, unit, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise HubError("connection reset", where=unit.path)
        return real(res, unit, *a, **kw)

    monkeypatch.setattr(hub_source, "convert", flaky)
    with pytest.raises(HubError):
        saekit.register("gs", ref)
    assert len(store.list_versions("gs")) == 1
    monkeypatch.setattr(hub_source, "convert", real)
    versions = saekit.register("gs", ref)  # resumes: no duplicate of the first
    assert [v.version for v in versions] == [1, 2] and len(store.list_versions("gs")) == 2
    assert [v.tags["saekit.source.path"] for v in versions] == ["layer_0/width_1k/average_l0_12",
                                                                "layer_1/width_1k/average_l0_30"]

    x = torch.randn(64, D_IN)
    for v, layer, l0 in zip(versions, (0, 1), (12, 30)):
        sae = saekit.load(f"gs/{v.version}")
        assert sae.cfg.hook_name == f"blocks.{layer}.hook_resid_post" and sae.cfg.model_name == "google/gemma-2-2b"
        assert sae.cfg.d_sae == GS_WIDTH and v.tags["saekit.source.average_l0"] == str(l0)
        p = {k: torch.from_numpy(a) for k, a in params[layer].items()}
        pre = x @ p["W_enc"] + p["b_enc"]  # Gemma Scope: JumpReLU, no b_dec subtracted
        want = (pre > p["threshold"]) * torch.relu(pre)
        assert (dense(sae, x) - want).abs().max().item() < 1e-5

    from saekit.schemas import ArtifactFormatError

    with pytest.raises(ArtifactFormatError, match="folder says width 2048, params.npz has d_sae 1024"):
        saekit.register("gs", "hf://google/gemma-scope-2b-pt-res/layer_2/width_2k/average_l0_5")
    assert len(store.list_versions("gs")) == 2

    # conversion only: one canonical artifact per match, the same bytes as registered
    done = hub_source.import_to(ref, tmp_path / "imported")
    assert [d["dest"] for d in done] == [str(tmp_path / "imported" / v.tags["saekit.source.path"]) for v in versions]
    assert [d["sha256"] for d in done] == [v.sha256 for v in versions]

    # loading straight from the Hub, no registry
    direct = saekit.load("hf://google/gemma-scope-2b-pt-res/layer_1/width_1k/average_l0_30")
    assert torch.equal(dense(direct, x), dense(saekit.load("gs/2"), x))


def test_openai_state_dicts(tmp_path, hub):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(7)
    sd = {"encoder.weight": torch.randn(D_SAE, D_IN, generator=g), "decoder.weight": torch.randn(D_IN, D_SAE, generator=g),
          "pre_bias": torch.randn(D_IN, generator=g) * 0.1, "latent_bias": torch.randn(D_SAE, generator=g) * 0.1,
          "stats_last_nonzero": torch.zeros(D_SAE, dtype=torch.long)}
    (tmp_path / "oa" / "v5").mkdir(parents=True)
    torch.save({**sd, "activation": "ReLU"}, tmp_path / "oa" / "v5" / "layer_8.pt")
    save_file(sd, str(tmp_path / "oa" / "v5" / "layer_8_topk.safetensors"), metadata={"activation": "TopK", "k": str(K)})
    _push(hub, "openai/sae-tiny", tmp_path / "oa")

    saekit.register("oa", "hf://openai/sae-tiny/v5/layer_8.pt", hook_name="h.8")
    sae = saekit.load("oa")
    x = torch.randn(64, D_IN)
    want = torch.relu((x - sd["pre_bias"]) @ sd["encoder.weight"].T + sd["latent_bias"])
    assert (dense(sae, x) - want).abs().max().item() < 1e-5

    # TopK in safetensors: the same artifact the local importer makes from the same state dict
    v = saekit.register("oa-topk", "hf://openai/sae-tiny/v5/layer_8_topk.safetensors", hook_name="h.8")
    torch.save({**sd, "activation": "TopK", "activation_state_dict": {"k": K}}, tmp_path / "local.pt")
    from saekit.registry.formats import read_openai

    local = read_openai(tmp_path / "local.pt", hook_name="h.8")
    hubbed = saekit.load("oa-topk")
    assert hubbed.cfg.architecture == "topk" and hubbed.cfg.k == K
    assert torch.equal(dense(hubbed, x), dense(local, x))
    assert v.tags["saekit.source.layout"] == "openai"


def _cli(argv, capsys):
    from saekit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_bad_input_one_line_exit_2_no_version(tmp_path, hub, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("nothing here\n")
    _push(hub, "org/empty", tmp_path / "empty")
    (tmp_path / "weird" / "sae").mkdir(parents=True)
    (tmp_path / "weird" / "sae" / "model.ckpt").write_bytes(b"\x00" * 64)
    (tmp_path / "weird" / "sae" / "config.yaml").write_text("d: 1\n")
    _push(hub, "org/weird", tmp_path / "weird")
    (tmp_path / "broken" / "sae").mkdir(parents=True)
    (tmp_path / "broken" / "sae" / "cfg.json").write_text("{not json")
    (tmp_path / "broken" / "sae" / "sae_weights.safetensors").write_bytes(b"\x80\x04 a pickle, not tensors")
    broken = _push(hub, "org/broken", tmp_path / "broken")
    _saelens_repo(tmp_path, hub, seed=5)
    cases = {
        "hf://org/empty/sae": "no SAE in this repo",
        "hf://org/weird/sae": "unknown layout",
        "hf://org/missing/sae": "no repo",
        "hf://lens/saes@v9/blocks.0.hook_resid_pre": "no revision",
        "hf://lens/saes/layer_*/width_16k/*": "matches no SAE",
        "hf://lens/saes/blocks.0.hook_resid_pre@v1": "hf://lens/saes@v1/blocks.0.hook_resid_pre",
        "saelens:no-such-release/x": "no release",
        "hf://org/broken/sae": f"hf://org/broken@{broken}/sae: cfg.json is not JSON",
    }
    capsys.readouterr()  # the seeding's upload bars
    for ref, says in cases.items():
        code, out, err = _cli(["register", ref, "--name", "bad"], capsys)
        assert code == 2 and says in err and err.count("\n") == 1 and "Traceback" not in err, (ref, err)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    code, out, err = _cli(["register", "hf://lens/saes/blocks.0.hook_resid_pre", "--name", "bad"], capsys)
    assert code == 2 and "cannot reach the Hub at http://127.0.0.1:9" in err and err.count("\n") == 1, err
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    from saekit.schemas import NotFoundError

    with pytest.raises(NotFoundError):
        store.list_versions("bad")

    # and the CLI path that works: register by hf://, import to a folder
    code, out, err = _cli(["register", "hf://lens/saes/blocks.0.hook_resid_pre", "--name", "good", "--json"], capsys)
    assert code == 0 and json.loads(out)["version"] == 1
    code, out, err = _cli(["import", "hf://lens/saes/blocks.0.hook_resid_pre", str(tmp_path / "art"), "--json"], capsys)
    assert code == 0 and json.loads(out)["sha256"] == store.resolve("good/1").sha256


def test_hf_reference_form():
    from saekit.registry.refs import parse_ref
    from saekit.schemas import ReferenceSyntaxError

    r = parse_ref("hf://google/gemma-scope-2b-pt-res@v1/layer_20/width_16k/average_l0_71")
    assert (r.kind, r.hf_repo, r.revision, r.sae_id, r.hf_type) == (
        "hf", "google/gemma-scope-2b-pt-res", "v1", "layer_20/width_16k/average_l0_71", "model")
    r = parse_ref("hf://datasets/org/acts@refs/pr/3/sae")  # huggingface_hub's special refs
    assert (r.hf_type, r.revision, r.sae_id) == ("dataset", "refs/pr/3", "sae")
    assert parse_ref("hf://org/repo/layer_*/width_16k/*").revision == "main"
    r = parse_ref("saelens:gemma-scope-2b-pt-res/layer_0/width_16k/average_l0_105")
    assert (r.kind, r.saelens_release, r.sae_id) == ("saelens", "gemma-scope-2b-pt-res", "layer_0/width_16k/average_l0_105")
    with pytest.raises(ReferenceSyntaxError, match=r"write hf://org/saes@v1.0.0/layer6/a"):
        parse_ref("hf://org/saes/layer6/a@v1.0.0")  # saekit's earlier form
    for bad in ("hf://org", "hf://org/repo@v1/../x", "hf://buckets/org/b/x", "saelens:onlyrelease"):
        with pytest.raises(ReferenceSyntaxError):
            parse_ref(bad)


def test_release_without_sums_is_not_read_as_a_checkpoint(tmp_path, hub):
    from saekit.schemas import IntegrityError

    lens, root, _ = _saelens_repo(tmp_path, hub, seed=6)
    x = torch.randn(8, D_IN)
    with torch.no_grad():  # a plain SAELens repo loads straight from the Hub, converted
        assert (dense(saekit.load("hf://lens/saes/blocks.0.hook_resid_pre"), x) - lens.encode(x)).abs().max() < 1e-5
    (root / "release.json").write_text(json.dumps({"format": "saekit-release/1", "saes": []}))
    _push(hub, "lens/release", root, "looks like a release, lost its SHA256SUMS")
    with pytest.raises(IntegrityError, match="SHA256SUMS missing"):
        saekit.load("hf://lens/release/blocks.0.hook_resid_pre")
