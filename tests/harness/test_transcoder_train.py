"""``saekit train transcoders`` and ``saekit check`` of a set: trained on real SmolLM2-135M
MLP activations (tiny: 2 layers, width 40, a few steps), cached, registered, loaded by name,
checked through the CLI; the activations streamed block by block equal plain hooks'."""

from __future__ import annotations

import json

import pytest
import torch

from tests.harness.conftest import cli


def _main(*args: str, capsys) -> tuple[int, str, str]:
    """The real entry point (saekit.cli.main): exit code, stdout, stderr."""
    from saekit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_stream_equals_plain_hooks():
    """Each MLP's input and output from the block-by-block stream equal what forward hooks
    read in one ordinary forward pass (BOS left out), over batches with a partial last one."""
    from saekit.harness.model import load_lm
    from saekit.harness.text import token_set
    from saekit.harness.transcoder_train import stream_mlp_io

    model, tok = load_lm()
    ts = token_set(tok, n_tokens=5 * 16, context_size=16, split="train")
    keep = ts.tokens != tok.bos_token_id
    got = {layer: (x, y) for layer, x, y in stream_mlp_io(model, ts.tokens, [0, 4], batch_size=2, keep=keep)}
    assert sorted(got) == [0, 4]
    for layer in (0, 4):
        box = {}
        h = model.model.layers[layer].mlp.register_forward_hook(lambda m, a, o: box.update(x=a[0], y=o) and None)
        with torch.no_grad():
            model(ts.tokens)
        h.remove()
        x, y = got[layer]
        assert x.shape == (int(keep.sum()), 576)
        torch.testing.assert_close(x, box["x"][keep], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(y, box["y"][keep], rtol=1e-5, atol=1e-5)


def test_fit_lowers_fvu_and_matches_transcoder_class():
    """Training moves FVU well below 1 on a learnable map, and the saved tensors compute, in
    saekit's Transcoder class, the FVU the trainer reports."""
    from saekit.harness.transcoder_train import fit_transcoder
    from saekit.kernels.transcoder import Transcoder
    from saekit.schemas import SAEConfig

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 24, generator=g)
    W = torch.randn(24, 17, generator=g)
    y = torch.relu(x @ W) @ torch.randn(17, 20, generator=g) + 1.0
    tensors, fvu = fit_transcoder(x, y, width=64, k=6, steps=300, batch_size=256, lr=1e-2)
    assert fvu < 0.5
    tc = Transcoder(SAEConfig(architecture="topk_transcoder", d_in=24, d_sae=64, d_out=20, k=6), tensors)
    y_hat = tc(x).double()
    assert fvu == pytest.approx(float((y - y_hat).pow(2).sum() / (y.double() - y.double().mean(0)).pow(2).sum()),
                                rel=1e-5)


def test_auxk_revives_dead_latents():
    """On real SmolLM2 MLP activations (layer 3, pydoc), a TopK transcoder trained with the
    AuxK loss leaves fewer latents dead (never among any token's top k) than without it, and
    fits no worse."""
    from saekit.harness.model import load_lm
    from saekit.harness.text import token_set
    from saekit.harness.transcoder_train import fit_transcoder, stream_mlp_io

    model, tok = load_lm()
    ts = token_set(tok, n_tokens=2048, context_size=64, split="train")
    (_, x, y), = stream_mlp_io(model, ts.tokens, [3], keep=ts.tokens != tok.bos_token_id)

    def dead_and_fvu(alpha: float) -> tuple[int, float]:
        t, fvu = fit_transcoder(x, y, width=512, k=8, steps=300, batch_size=256, lr=2e-3, auxk_alpha=alpha)
        idx = torch.topk(torch.relu(x @ t["W_enc"] + t["b_enc"]), 8, dim=1).indices
        return 512 - len(idx.unique()), fvu

    dead0, fvu0 = dead_and_fvu(0.0)
    dead1, fvu1 = dead_and_fvu(1 / 32)
    print(f"dead latents: {dead0} without AuxK (FVU {fvu0:.3f}), {dead1} with (FVU {fvu1:.3f})")
    assert dead0 > 50 and dead1 < dead0 / 2
    assert fvu1 < fvu0 + 0.02


def test_relu_fit_is_sparse_and_matches_transcoder_class():
    """The ReLU variant lowers FVU well below 1 with a sparse code, and its tensors compute,
    as saekit's plain (ReLU) Transcoder, the FVU the trainer reports."""
    from saekit.harness.transcoder_train import fit_relu_transcoder
    from saekit.kernels.transcoder import Transcoder
    from saekit.schemas import SAEConfig

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 24, generator=g)
    y = torch.relu(x @ torch.randn(24, 17, generator=g)) @ torch.randn(17, 20, generator=g) + 1.0
    tensors, fvu = fit_relu_transcoder(x, y, width=64, steps=400, batch_size=256, lr=1e-2, l1_coeff=0.05)
    tc = Transcoder(SAEConfig(architecture="transcoder", d_in=24, d_sae=64, d_out=20), tensors)
    l0 = float((tc.encode_dense(x) > 0).sum(1).float().mean())
    print(f"ReLU fit: FVU {fvu:.3f}, L0 {l0:.1f} of 64")
    assert fvu < 0.5 and l0 < 32
    y_hat = tc(x).double()
    assert fvu == pytest.approx(float((y - y_hat).pow(2).sum() / (y.double() - y.double().mean(0)).pow(2).sum()),
                                rel=1e-5)


def test_train_register_load_and_check(tmp_path, capsys):
    import saekit
    from saekit.kernels.transcoder import TranscoderSet

    args = ("train", "transcoders", "--name", "tiny-tc", "--layers", "1,4", "--width", "64", "--k", "8",
            "--tokens", "2048", "--steps", "150", "--batch-size", "128", "--alias", "candidate", "--json")
    code, out, err = _main(*args, capsys=capsys)
    assert code == 0, err
    first = json.loads(out)
    assert first["layers"] == [1, 4] and first["version"] == 1
    # a second run reads the cache and returns the registered version
    code, out, _ = _main(*args, capsys=capsys)
    again = json.loads(out)
    assert code == 0 and again["cached"] and again["version"] == 1 and again["sha256"] == first["sha256"]

    tset = saekit.load("tiny-tc@candidate")
    assert isinstance(tset, TranscoderSet) and tset.layers == [1, 4]
    tc = tset[4]
    assert (tc.architecture, tc.d_in, tc.d_sae, tc.d_out, tc.cfg.k) == ("topk_transcoder", 576, 64, 576, 8)
    assert tc.hook_in == tc.hook_out == "model.layers.4.mlp"

    res = cli("check", "tiny-tc@candidate", "--tokens", "120", "--context", "20", "--batch-size", "2",
              "--out", str(tmp_path / "chk"), "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data["layers"]) == {"1", "4"} and data["logged"]
    # trained transcoders predict their MLP better than the mean does
    assert all(0 < m["fvu"] < 1 for m in data["layers"].values())
    assert (tmp_path / "chk" / "layer_4" / "feature_cards.jsonl").is_file()
    from saekit.registry import store

    assert store.resolve("tiny-tc/1").tags["metric.fvu"] == f"{data['metrics']['fvu']:.6g}"
    # what the set check does not have is refused with one line (exit 2), before any pass
    for extra in (["--policy", str(tmp_path / "p.yaml")], ["--from-record", str(tmp_path / "chk" / "eval.json")]):
        code, _, err = _main("check", "tiny-tc@candidate", *extra, capsys=capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err


def test_bad_input_is_one_line(capsys):
    code, _, err = _main("train", "transcoders", "--name", "x", "--layers", "3,30", capsys=capsys)
    assert code == 2 and "layer 30 is out of range" in err and len(err.strip().splitlines()) == 1
    code, _, err = _main("train", "transcoders", "--name", "x", "--layers", "a", capsys=capsys)
    assert code == 2 and "--layers" in err
    code, _, err = _main("train", "transcoders", "--name", "x", "--width", "8", "--k", "9", "--layers", "0",
                         capsys=capsys)
    assert code == 2 and "k 9 > width 8" in err
