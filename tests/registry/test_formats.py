"""Importers (SAELens, sparsify, Gemma Scope, OpenAI) and exporters (SAELens, sparsify).

Each import becomes a canonical artifact, is registered, loaded back by name, and its
encode (through saekit's dispatch) must equal the source library's encode (sae-lens and
sparsify, the real packages) or the documented formula (Gemma Scope, OpenAI).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import saekit
from saekit.registry.formats import export, import_checkpoint
from saekit.schemas import ArtifactFormatError
from tests.registry.conftest import make_sae

D_IN, D_SAE, K = 16, 64, 6


def dense(sae, x: torch.Tensor) -> torch.Tensor:
    """saekit's encode (dispatch) scattered back to [n, d_sae]."""
    code = sae.encode(x)
    return torch.zeros(x.shape[0], sae.cfg.d_sae).scatter_(1, code.indices, code.values)


def _randomize(module, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("arch", ["topk", "standard", "jumprelu"])
def test_saelens(tmp_path, arch):
    import sae_lens

    cls, cfg_cls, extra = {
        "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig, {"k": K}),
        "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig, {}),
        "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig, {}),
    }[arch]
    lens = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, dtype="float32", device="cpu", **extra))
    _randomize(lens, 1)
    if arch == "jumprelu":
        with torch.no_grad():
            lens.threshold.copy_(torch.rand(D_SAE) * 0.3)
    lens.save_model(tmp_path / "lens")
    import_checkpoint("saelens", tmp_path / "lens", tmp_path / "art", model_name="gpt2",
                      hook_name="blocks.0.hook_resid_pre")
    v = saekit.register(f"lens-{arch}", tmp_path / "art")
    sae = saekit.load(f"lens-{arch}")
    assert sae.ref.sha256 == v.sha256 and sae.cfg.hook_name == "blocks.0.hook_resid_pre"
    x = torch.randn(32, D_IN)
    with torch.no_grad():
        want = lens.encode(x)
    assert torch.allclose(dense(sae, x), want, atol=1e-5)


def test_sparsify_import_and_export(tmp_path):
    from sparsify import SparseCoder, SparseCoderConfig

    coder = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=K), device="cpu")
    _randomize(coder, 2)
    coder.save_to_disk(tmp_path / "sp")
    import_checkpoint("sparsify", tmp_path / "sp", tmp_path / "art", model_name="gpt2", hook_name="h.0")
    saekit.register("sp", tmp_path / "art", alias="candidate")
    sae = saekit.load("sp@candidate")
    x = torch.randn(32, D_IN)
    with torch.no_grad():
        out = coder.encode(x)
    want = torch.zeros(32, D_SAE).scatter_(1, out.top_indices, out.top_acts)
    assert torch.allclose(dense(sae, x), want, atol=1e-5)

    # back out to sparsify's layout, loaded by sparsify itself
    export(sae, "sparsify", tmp_path / "back")
    again = SparseCoder.load_from_disk(tmp_path / "back")
    with torch.no_grad():
        out2 = again.encode(x)
    assert torch.equal(out2.top_indices, out.top_indices) and torch.allclose(out2.top_acts, out.top_acts, atol=1e-6)


def test_saelens_export(tmp_path):
    from sae_lens import SAE as LensSAE

    sae = make_sae(3, d_in=D_IN, d_sae=D_SAE, k=K)
    export(sae, "saelens", tmp_path / "lens")
    lens = LensSAE.load_from_disk(str(tmp_path / "lens"))
    x = torch.randn(16, D_IN)
    with torch.no_grad():
        assert torch.allclose(lens.encode(x), dense(sae, x), atol=1e-5)


def test_gemmascope(tmp_path):
    rng = np.random.default_rng(0)
    p = {
        "W_enc": rng.standard_normal((D_IN, D_SAE)).astype(np.float32),
        "W_dec": rng.standard_normal((D_SAE, D_IN)).astype(np.float32),
        "b_enc": (rng.standard_normal(D_SAE) * 0.1).astype(np.float32),
        "b_dec": (rng.standard_normal(D_IN) * 0.1).astype(np.float32),
        "threshold": (rng.random(D_SAE) * 0.5).astype(np.float32),
    }
    np.savez(tmp_path / "params.npz", **p)
    import_checkpoint("gemmascope", tmp_path / "params.npz", tmp_path / "art",
                      model_name="google/gemma-2-2b", hook_name="blocks.12.hook_resid_post")
    saekit.register("gs", tmp_path / "art")
    sae = saekit.load("gs/1")
    assert sae.cfg.architecture == "jumprelu" and not sae.cfg.apply_b_dec_to_input
    x = torch.randn(32, D_IN)
    # Gemma Scope tutorial: pre = x @ W_enc + b_enc; acts = (pre > threshold) * relu(pre)
    pre = x @ torch.from_numpy(p["W_enc"]) + torch.from_numpy(p["b_enc"])
    want = (pre > torch.from_numpy(p["threshold"])) * torch.relu(pre)
    assert torch.allclose(dense(sae, x), want, atol=1e-5)

    # a pickled object array is refused, never unpickled
    np.savez(tmp_path / "evil.npz", W_enc=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ArtifactFormatError, match="evil.npz"):
        import_checkpoint("gemmascope", tmp_path / "evil.npz", tmp_path / "x")


def _layer_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    # openai/sparse_autoencoder model.py LN
    x = x - x.mean(-1, keepdim=True)
    return x / (x.std(-1, keepdim=True) + eps)


@pytest.mark.parametrize("activation", ["TopK", "ReLU"])
def test_openai(tmp_path, activation):
    g = torch.Generator().manual_seed(4)
    sd = {
        "pre_bias": torch.randn(D_IN, generator=g) * 0.1,
        "latent_bias": torch.randn(D_SAE, generator=g) * 0.1,
        "encoder.weight": torch.randn(D_SAE, D_IN, generator=g),
        "decoder.weight": torch.randn(D_IN, D_SAE, generator=g),
        "stats_last_nonzero": torch.zeros(D_SAE, dtype=torch.long),
        "activation": activation,
    }
    if activation == "TopK":
        sd["activation_state_dict"] = {"k": K, "postact_fn": "ReLU"}
    torch.save(sd, tmp_path / "ae.pt")
    import_checkpoint("openai", tmp_path / "ae.pt", tmp_path / "art", model_name="gpt2", hook_name="h.8")
    saekit.register("oa", tmp_path / "art")
    sae = saekit.load("oa")
    x = torch.randn(32, D_IN)
    # latents = activation(encoder(LN(x) - pre_bias) + latent_bias); LN only for TopK checkpoints
    xin = _layer_norm(x) if activation == "TopK" else x
    pre = (xin - sd["pre_bias"]) @ sd["encoder.weight"].T + sd["latent_bias"]
    if activation == "TopK":
        top = pre.topk(K, dim=-1)
        want = torch.zeros_like(pre).scatter_(1, top.indices, torch.relu(top.values))
        assert sae.cfg.normalize_activations == "layer_norm"
    else:
        want = torch.relu(pre)
    # saekit's kernels apply cfg.normalize_activations themselves (sae-lens' layer_norm = OpenAI's LN)
    assert torch.allclose(dense(sae, x), want, atol=1e-5)


def test_openai_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"encoder.weight": Evil()}))
    with pytest.raises(ArtifactFormatError, match="evil.pt"):
        import_checkpoint("openai", tmp_path / "evil.pt", tmp_path / "x")


def test_cli_import(tmp_path, capsys):
    from tests.registry.test_cli import run

    np.savez(tmp_path / "params.npz", W_enc=np.ones((4, 8), np.float32), W_dec=np.ones((8, 4), np.float32),
             b_enc=np.zeros(8, np.float32), b_dec=np.zeros(4, np.float32), threshold=np.ones(8, np.float32))
    code, out, err = run(capsys, "import", "gemmascope", str(tmp_path / "params.npz"), str(tmp_path / "art"), "--json")
    assert code == 0, err
    code, out, err = run(capsys, "register", str(tmp_path / "params.npz"), "--from", "gemmascope", "--name", "gs")
    assert code == 0 and "gs/1" in out, err
    code, out, err = run(capsys, "import", "nope", str(tmp_path / "params.npz"), str(tmp_path / "x"))
    assert code == 2 and "unknown format" in err
