"""Transcoder maths (saekit.kernels.transcoder) against the definitions and the peers'
own classes: sae-lens' four transcoder classes and sparsify's SparseCoder(transcode=True)."""

from __future__ import annotations

import pytest
import torch
from transcoder_helpers import SAELENS_TRANSCODERS, TRANSCODER_ARCHS, by_hand, make_transcoder

from saekit.kernels.transcoder import Transcoder, TranscoderSet
from saekit.schemas import InputError, SAEConfig


@pytest.mark.parametrize("arch", TRANSCODER_ARCHS)
@pytest.mark.parametrize("shape", [(7,), (2, 5), (1,)])
def test_forward_is_the_definition_and_sparse_code_agrees(arch, shape):
    tc = make_transcoder(arch, d_in=13, d_sae=37, d_out=11, seed=len(shape))
    x = torch.randn(*shape, 13) * 2
    y = tc(x)
    assert y.shape == (*shape, 11) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), by_hand(tc, x), rtol=1e-5, atol=1e-5)
    dense = tc.encode_dense(x)
    assert 0 < int((dense > 0).sum()) < dense.numel()  # the example exercises the activation
    code = tc.encode(x)
    via_code = tc.decode(code).reshape(y.shape) + tc.skip(x)
    torch.testing.assert_close(via_code, y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tc.decode_dense(dense) + tc.skip(x), y)
    if tc.cfg.k is not None:
        assert code.values.shape[1] == tc.cfg.k


@pytest.mark.parametrize("arch", SAELENS_TRANSCODERS)
def test_saelens_classes_agree(arch):
    from sae_lens.saes.sae import SAE as SLSAE

    tc = make_transcoder(arch, d_in=19, d_sae=53, d_out=23, seed=3)
    sl = SLSAE.from_dict({**tc.cfg.to_saelens_dict(), "device": "cpu"})
    assert type(sl).__name__.lower() == arch.replace("_", "")
    sl.load_state_dict({n: v.clone() for n, v in tc.tensors.items()})
    x = torch.randn(31, 19)
    with torch.no_grad():
        torch.testing.assert_close(tc(x), sl(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tc.encode_dense(x), sl.encode(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("skip", [False, True])
def test_sparsify_transcode_agrees(skip, monkeypatch):
    import sparsify.sparse_coder
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.utils import eager_decode

    if not torch.cuda.is_available():  # sparsify's Triton decoder needs a GPU; its own fallback
        monkeypatch.setattr(sparsify.sparse_coder, "decoder_impl", eager_decode)

    d, n_lat, k = 17, 41, 6
    sc = SparseCoder(d, SparseCoderConfig(num_latents=n_lat, k=k, transcode=True, skip_connection=skip))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in sc.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    arch = "topk_skip_transcoder" if skip else "topk_transcoder"
    t = {"W_enc": sc.encoder.weight.detach().T.contiguous(), "b_enc": sc.encoder.bias.detach(),
         "W_dec": sc.W_dec.detach(), "b_dec": sc.b_dec.detach()}
    if skip:
        t["W_skip"] = sc.W_skip.detach()
    tc = Transcoder(SAEConfig(architecture=arch, d_in=d, d_sae=n_lat, d_out=d, k=k), t)
    x, y = torch.randn(29, d), torch.randn(29, d)
    with torch.no_grad():
        out = sc(x, y)
        enc = sc.encode(x)
    torch.testing.assert_close(tc(x), out.sae_out, rtol=1e-5, atol=1e-5)
    code = tc.encode(x)
    torch.testing.assert_close(code.indices.sort(1).values, enc.top_indices.sort(1).values)


def test_bf16_and_autograd():
    tc = make_transcoder("jumprelu_skip_transcoder", dtype=torch.bfloat16)
    x = torch.randn(4, 13)
    y = tc(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), by_hand(tc, x.bfloat16()), rtol=3e-2, atol=3e-2)
    x32 = make_transcoder("skip_transcoder")
    xg = torch.randn(3, 13, requires_grad=True)
    x32(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_refusals():
    with pytest.raises(InputError, match="transcoder"):
        from saekit.kernels import SAE
        SAE(make_transcoder("transcoder").cfg, make_transcoder("transcoder").tensors)
    with pytest.raises(ValueError, match="d_out"):
        SAEConfig(architecture="transcoder", d_in=4, d_sae=8)
    with pytest.raises(ValueError, match="only for transcoders"):
        SAEConfig(architecture="relu", d_in=4, d_sae=8, d_out=4)
    tc = make_transcoder("transcoder")
    with pytest.raises(InputError, match="W_dec"):
        Transcoder(tc.cfg, {**tc.tensors, "W_dec": torch.zeros(37, 13)})
    with pytest.raises(InputError, match="d_in=13"):
        tc(torch.zeros(2, 12))


def test_set_is_an_ordered_mapping():
    layers = {5: make_transcoder("transcoder", seed=5), 0: make_transcoder("transcoder", seed=0),
              2: make_transcoder("transcoder", seed=2)}
    s = TranscoderSet(layers, model_revision="abc")
    assert s.layers == [0, 2, 5] and list(s) == [0, 2, 5] and len(s) == 3
    assert s[2] is layers[2] and s.model_name == "org/model" and s.model_revision == "abc"
    with pytest.raises(KeyError, match="layer 1"):
        s[1]
    moved = s.to(dtype=torch.float64)
    assert moved[5].dtype == torch.float64 and moved.layers == s.layers
    assert s[0].hook_in == s[0].hook_out == "model.layers.3.mlp"
