"""Every SAE sae-lens saves for inference registers and encodes/decodes exactly as sae-lens
does (its own classes write the weights and are the oracle), or is refused at
register / import / check with one line and exit 2. One table (saekit.kernels.architectures)
serves the registry and the kernels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import saekit
from saekit.cli import main
from saekit.kernels import architectures
from saekit.registry import artifact as art
from saekit.schemas import UnsupportedSAEError

D_IN, D_SAE = 24, 64


def _fill(sae, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (D_IN**-0.5 if name.startswith("W") else 0.3))


def write_saelens(kind: str, folder: Path, *, dtype: str = "float32", **cfg) -> Path:
    """An SAE written by sae-lens' own classes (save_model / save_inference_model)."""
    import sae_lens as sl
    import torch

    common = {"d_in": D_IN, "d_sae": D_SAE, "dtype": dtype, **cfg}
    if kind in ("batchtopk", "matryoshka"):
        if kind == "batchtopk":
            sae = sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(**common, k=4))
        else:
            sae = sl.MatryoshkaBatchTopKTrainingSAE(
                sl.MatryoshkaBatchTopKTrainingSAEConfig(**common, k=4, matryoshka_widths=[16, D_SAE]))
        _fill(sae)
        sae.topk_threshold = torch.tensor(0.3, dtype=torch.double)
        sae.save_inference_model(folder)
        return folder
    cls, cfg_cls = {
        "standard": (sl.StandardSAE, sl.StandardSAEConfig),
        "topk": (sl.TopKSAE, sl.TopKSAEConfig),
        "jumprelu": (sl.JumpReLUSAE, sl.JumpReLUSAEConfig),
        "gated": (sl.GatedSAE, sl.GatedSAEConfig),
    }[kind]
    if kind == "topk":
        common.setdefault("k", 4)
    sae = cls(cfg_cls(**common))
    _fill(sae)
    sae.save_model(folder)
    return folder


SUPPORTED = [
    ("standard", {}),
    ("standard", {"normalize_activations": "layer_norm"}),
    ("standard", {"normalize_activations": "constant_norm_rescale"}),
    ("topk", {}),
    ("topk", {"normalize_activations": "layer_norm"}),
    ("topk", {"rescale_acts_by_decoder_norm": True}),
    ("topk", {"normalize_activations": "constant_norm_rescale", "rescale_acts_by_decoder_norm": True}),
    ("jumprelu", {"apply_b_dec_to_input": False}),
    ("jumprelu", {"normalize_activations": "layer_norm"}),
    ("gated", {}),
    ("gated", {"normalize_activations": "constant_norm_rescale"}),
    ("batchtopk", {}),
    ("matryoshka", {}),
]


@pytest.mark.parametrize(("kind", "cfg"), SUPPORTED, ids=[f"{k}-{'-'.join(f'{a}={b}' for a, b in c.items())}" for k, c in SUPPORTED])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_registered_sae_encodes_and_decodes_as_sae_lens(kind, cfg, dtype, tmp_path):
    import torch
    from sae_lens import SAE as SaeLensSAE

    folder = write_saelens(kind, tmp_path / "sl", dtype=dtype, **cfg)
    info = saekit.register("sl", folder)  # a sae-lens folder registers as it is
    sae = saekit.load(f"{info.name}/{info.version}")
    oracle = SaeLensSAE.load_from_disk(str(folder))
    x = torch.randn(37, D_IN, generator=torch.Generator().manual_seed(1)) * 3 + 1
    with torch.no_grad():
        want = oracle.encode(x)
        want_hat = oracle.decode(want)
    got = sae.encode_dense(x)
    got_hat = sae(x)
    if dtype == "float32":
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_hat, want_hat, rtol=1e-5, atol=1e-5)
    else:  # the same SAE-dtype ops: the code is bit-identical; x_hat within one bf16 rounding
        want = want.float()
        diff = (got != want).any(1)
        if diff.any():  # only a TopK choice among latents tied at the k-th value (torch.topk
            # leaves that choice unspecified; saekit takes the lower index)
            assert kind == "topk"
            for r in diff.nonzero().flatten().tolist():
                changed = got[r] != want[r]
                kth = got[r].topk(cfg.get("k", 4)).values[-1]
                assert (got[r][changed] + want[r][changed] == kth).all()
        assert int(diff.sum()) <= 2
        same = ~diff
        torch.testing.assert_close(got_hat[same], want_hat.float()[same], rtol=2**-7,
                                   atol=2**-7 * want_hat.float().abs().max().item())
    assert (got > 0).sum() > 0


def test_expected_average_only_in_with_its_factor_is_what_from_pretrained_folds(tmp_path):
    import torch
    from sae_lens import SAE as SaeLensSAE

    folder = write_saelens("standard", tmp_path / "sl", normalize_activations="expected_average_only_in")
    raw = json.loads((folder / "cfg.json").read_text())
    raw["norm_scaling_factor"] = 0.25
    (folder / "cfg.json").write_text(json.dumps(raw))
    sae = saekit.load(str(folder))
    assert sae.cfg.norm_scaling_factor == 0.25
    oracle = SaeLensSAE.load_from_disk(str(folder))
    oracle.fold_activation_norm_scaling_factor(0.25)  # what SAE.from_pretrained does (sae.py)
    x = torch.randn(16, D_IN, generator=torch.Generator().manual_seed(2)) * 4
    with torch.no_grad():
        torch.testing.assert_close(sae.encode_dense(x), oracle.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae(x), oracle.decode(oracle.encode(x)), rtol=1e-5, atol=1e-5)


def _cli(capsys, *argv):
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def _edit(folder: Path, **changes) -> Path:
    raw = json.loads((folder / "cfg.json").read_text())
    raw.update(changes)
    (folder / "cfg.json").write_text(json.dumps(raw))
    return folder


REFUSED = [
    ({"normalize_activations": "covariance_whitening"}, "covariance_whitening"),
    ({"normalize_activations": "expected_average_only_in"}, "without a scaling factor"),
    ({"normalize_activations": "unit_norm"}, "unit_norm"),
    ({"architecture": "abstopk"}, "abstopk"),
    ({"architecture": "temporal"}, "temporal"),
    ({"reshape_activations": "hook_z"}, "hook_z"),
    ({"dtype": "int8"}, "int8"),
]


@pytest.mark.parametrize(("change", "says"), REFUSED, ids=[s for _, s in REFUSED])
def test_unsupported_settings_are_refused_with_one_line(change, says, tmp_path, capsys):
    folder = _edit(write_saelens("topk", tmp_path / "sl"), **change)
    with pytest.raises(UnsupportedSAEError, match=says):
        art.read_cfg(folder / "cfg.json")
    with pytest.raises(UnsupportedSAEError):
        saekit.load(str(folder))
    for argv in (["register", str(folder), "--name", "x"],
                 ["import", "saelens", str(folder), str(tmp_path / "dest")],
                 ["check", str(folder), "--tokens", "16", "--no-log"]):
        code, out, err = _cli(capsys, *argv)
        assert code == 2, (argv, out, err)
        assert err.count("\n") == 1 and says in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "dest").exists()


def test_registry_and_kernels_share_one_tensor_table(tmp_path):
    """A gated SAE (b_gate, r_mag, b_mag; no b_enc) registers; a missing tensor of its own is refused."""
    folder = write_saelens("gated", tmp_path / "g")
    cfg, _ = art.validate_artifact(folder)
    assert architectures.architecture(cfg).tensors == ("W_enc", "W_dec", "b_dec", "b_gate", "r_mag", "b_mag")
    saekit.register("g", folder)
    from safetensors.torch import load_file, save_file

    t = load_file(str(folder / "sae_weights.safetensors"))
    del t["r_mag"]
    save_file(t, str(folder / "sae_weights.safetensors"))
    with pytest.raises(art.ArtifactFormatError, match="r_mag"):
        art.validate_artifact(folder)


def test_k_belongs_to_the_tables_topk_architectures():
    """SAEConfig (schemas, below kernels) names the architectures that take k; they are the
    table's ``topk`` ones, and every other architecture refuses k."""
    from saekit.schemas import SAEConfig, config

    assert set(config._TOPK) == {a.name for a in architectures.ARCHITECTURES.values() if a.topk}
    assert set(config.TRANSCODERS) == {a.name for a in architectures.ARCHITECTURES.values() if a.transcoder}
    for a in architectures.ARCHITECTURES.values():
        if not a.topk:
            with pytest.raises(ValueError, match="k is only for"):
                SAEConfig(architecture=a.name, d_in=4, d_sae=8, k=2, d_out=6 if a.transcoder else None)
