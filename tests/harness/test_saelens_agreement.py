"""saekit's check agrees with the real sae-lens and SAEBench on every architecture saekit loads.

For each architecture, an SAE is written by sae-lens' own classes (``save_model``, or
``save_inference_model`` for BatchTopK / Matryoshka, which sae-lens saves as JumpReLU), at
hooks other than layer 6. saekit checks it (Python ``check`` or the ``saekit check`` CLI) on
a few batches with a partial last one; on the very same token batches:

- sae-lens' own ``run_evals`` (sae_lens.evals, through its ``HookedProxyLM`` wrapper of the
  same Hugging Face model) is the oracle of every metric both compute, per-latent feature
  density and the token counts, at rel 1e-4 in fp32;
- SAEBench's own core functions (sae_bench.evals.core.main: get_sparsity_and_variance_metrics,
  calculate_misc_metrics, get_featurewise_weight_based_metrics) are the oracle of the
  metrics saekit records under SAEBench's names, and the record validates as SAEBench's
  ``CoreEvalOutput``.

sae-bench is installed without its dependencies (``pip install --no-deps sae-bench``: its
pins, numpy<2 and torchvision, cannot sit beside saekit's torch); its core module imports
``tabulate`` only to print tables, so a stand-in is put in its place when it is missing.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import json
import math
import sys
import types
import zlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SAE_LENS_VERSION = "6.54.12"  # pinned in pyproject.toml's peers extra
REL = 1e-4
D_SAE = 128
N_TOKENS, CONTEXT, BATCH = 80, 16, 2  # 5 rows: batches of 2, 2 and a partial 1


def test_sae_lens_is_the_pinned_version():
    assert importlib.metadata.version("sae-lens") == SAE_LENS_VERSION
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert f'"sae-lens=={SAE_LENS_VERSION}"' in pyproject


class _Batches:
    """What run_evals needs of sae-lens' ActivationsStore: the same token batches, in order."""

    def __init__(self, tokens, batch_size):
        self.tokens, self.store_batch_size_prompts, self.context_size = tokens, batch_size, tokens.shape[1]
        self.i = 0

    def get_batch_tokens(self, n):
        out = self.tokens[self.i : self.i + n]
        self.i += n
        return out

    def reset_input_dataset(self):
        self.i = 0


def _fill(sae, seed: int) -> None:
    """Deterministic weights of moderate scale (so codes are neither empty nor dense)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    d_in = sae.cfg.d_in
    scale = {"W_enc": d_in**-0.5, "W_dec": d_in**-0.5, "b_enc": 0.5, "b_dec": 0.1, "b_gate": 0.5,
             "b_mag": 0.5, "r_mag": 0.1}
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) * 2 + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * scale.get(name, 0.1))


def _write(kind: str, hook: str, folder: Path, *, dtype: str = "float32") -> dict:
    """An SAE of ``kind`` written by sae-lens' own classes; returns what the oracle needs."""
    import sae_lens as sl
    import torch
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(hook_name=hook, model_name="HuggingFaceTB/SmolLM2-135M-Instruct")
    common = {"d_in": 576, "d_sae": D_SAE, "dtype": dtype, "metadata": meta}
    extra: dict = {}
    seed = zlib.crc32(kind.encode()) % 1000
    if kind == "standard":
        sae = sl.StandardSAE(sl.StandardSAEConfig(**common))
    elif kind == "standard_constant_norm_rescale":
        sae = sl.StandardSAE(sl.StandardSAEConfig(**common, normalize_activations="constant_norm_rescale"))
    elif kind == "topk_layer_norm_rescale":
        sae = sl.TopKSAE(sl.TopKSAEConfig(**common, k=8, normalize_activations="layer_norm",
                                          rescale_acts_by_decoder_norm=True))
    elif kind == "topk":
        sae = sl.TopKSAE(sl.TopKSAEConfig(**common, k=8))
    elif kind == "jumprelu":
        sae = sl.JumpReLUSAE(sl.JumpReLUSAEConfig(**common))
    elif kind == "gated":
        sae = sl.GatedSAE(sl.GatedSAEConfig(**common))
    elif kind in ("batchtopk", "matryoshka"):
        if kind == "batchtopk":
            cfg = sl.BatchTopKTrainingSAEConfig(**common, k=8)
            sae = sl.BatchTopKTrainingSAE(cfg)
        else:
            cfg = sl.MatryoshkaBatchTopKTrainingSAEConfig(**common, k=8, matryoshka_widths=[32, D_SAE])
            sae = sl.MatryoshkaBatchTopKTrainingSAE(cfg)
        _fill(sae, seed)
        sae.topk_threshold = torch.tensor(1.0, dtype=torch.double)
        sae.save_inference_model(folder)  # sae-lens saves these as JumpReLU SAEs
        assert json.loads((folder / "cfg.json").read_text())["architecture"] == "jumprelu"
        return extra
    elif kind == "expected_average":
        sae = sl.StandardSAE(sl.StandardSAEConfig(**common, normalize_activations="expected_average_only_in"))
        extra["norm_scaling_factor"] = 0.37
    else:
        raise AssertionError(kind)
    _fill(sae, seed)
    sae.save_model(folder)
    if "norm_scaling_factor" in extra:  # what sae-lens' pretrained_saes.yaml carries for such SAEs
        cfg = json.loads((folder / "cfg.json").read_text())
        cfg["norm_scaling_factor"] = extra["norm_scaling_factor"]
        (folder / "cfg.json").write_text(json.dumps(cfg))
    return extra


def _sae_bench_core():
    if "tabulate" not in sys.modules:
        try:
            import tabulate  # noqa: F401
        except ImportError:  # imported by sae_bench for printing only
            stub = types.ModuleType("tabulate")
            stub.tabulate = lambda *a, **k: ""
            stub.__spec__ = importlib.machinery.ModuleSpec("tabulate", None)
            sys.modules["tabulate"] = stub
    import sae_bench.evals.core.main as core

    return core


def _oracles(folder: Path, extra: dict, tokens, hook: str, lm, ignore: list[int]):
    """(sae-lens run_evals metrics, sae-lens feature metrics, SAEBench metrics, SAEBench feature
    metrics) on the same token batches."""
    import torch
    from sae_lens import SAE as SaeLensSAE
    from sae_lens.evals import get_eval_everything_config, run_evals
    from sae_lens.load_model import HookedProxyLM
    from sae_lens.training.activation_scaler import ActivationScaler

    model, tok = lm
    sl_sae = SaeLensSAE.load_from_disk(str(folder), device="cpu")
    if "norm_scaling_factor" in extra:  # what SAE.from_pretrained does for these SAEs
        sl_sae.fold_activation_norm_scaling_factor(extra["norm_scaling_factor"])
    n_batches = math.ceil(tokens.shape[0] / BATCH)
    module = model.get_submodule(hook)
    hooks_before = dict(module._forward_hooks)
    try:
        proxy = HookedProxyLM(model, tok, hook_names=[hook])
        with torch.no_grad():
            sl, sl_features = run_evals(
                sl_sae, _Batches(tokens, BATCH), proxy, ActivationScaler(),
                get_eval_everything_config(batch_size_prompts=BATCH, n_eval_reconstruction_batches=n_batches,
                                           n_eval_sparsity_variance_batches=n_batches),
                exclude_special_tokens=True,
            )
            core = _sae_bench_core()
            # SAEBench's core was written against sae-lens 5's flat cfg (hook_name, hook_layer)
            sl_sae.cfg.hook_name, sl_sae.cfg.hook_head_index = hook, None
            sl_sae.cfg.hook_layer = int(hook.split(".")[2])
            sb, sb_features = core.get_sparsity_and_variance_metrics(
                sl_sae, proxy, _Batches(tokens, BATCH), n_batches, compute_l2_norms=True,
                compute_sparsity_metrics=True, compute_variance_metrics=True,
                compute_featurewise_density_statistics=True, eval_batch_size_prompts=BATCH, model_kwargs={},
                ignore_tokens=set(ignore),
            )
            sl_sae.cfg.architecture_str = sl_sae.cfg.architecture()
            sb_features |= core.get_featurewise_weight_based_metrics(sl_sae)
            sb_misc = core.calculate_misc_metrics(sb_features)
    finally:
        module._forward_hooks.clear()
        module._forward_hooks.update(hooks_before)
    return sl, sl_features, {**sb, **sb_misc}, sb_features


# SAELens name -> the name saekit records it under (SAEBench owns the plain name where they differ)
SAELENS_AS = {"explained_variance": "explained_variance_saelens", "mse": "mse_saelens", "l1": "l1_saelens"}


def _compare(rec, sl, sl_features, sb, sb_features, rel: float, *, weight_abs: float = 1e-7) -> dict:
    """Assert agreement; returns the largest relative difference per metric (for the report)."""
    got = {k: v for cat in rec["eval_result_metrics"].values() for k, v in cat.items()}
    diffs: dict[str, float] = {}

    def close(name, mine, theirs, tol, abs_tol=1e-7):
        d = abs(mine - theirs) / max(abs(theirs), 1e-12)
        diffs[name] = max(diffs.get(name, 0.0), d)
        assert mine == pytest.approx(theirs, rel=tol, abs=abs_tol), (name, mine, theirs)

    compared = 0
    for cat, values in sl.items():
        for name, theirs in values.items():
            close(f"saelens.{name}", got[SAELENS_AS.get(name, name)], theirs, rel)
            compared += 1
    assert compared == 19  # every metric of every category run_evals fills, token counts included
    # weight-based metrics: sae-lens and SAEBench compute them in the SAE's dtype, saekit in
    # fp32 from the same weights (bf16: values of order 1 agree within one bf16 step, weight_abs)
    details = rec["eval_result_details"]
    assert [d["index"] for d in details] == list(range(D_SAE))  # every latent
    for key in ("feature_density", "consistent_activation_heuristic"):
        for i, theirs in enumerate(sl_features[key]):
            mine = details[i][key]
            if math.isnan(theirs):  # a latent that never fired: 0/0, written -1 as SAEBench does
                assert mine == -1.0 and details[i]["feature_density"] == 0.0
            else:
                close(f"saelens.{key}", mine, theirs, rel)
    for key in ("encoder_norm", "encoder_decoder_cosine_sim"):
        for i, theirs in enumerate(sl_features[key]):
            close(f"saelens.{key}", details[i][key], theirs, rel, weight_abs)
    # SAEBench's own definitions, under SAEBench's names
    for name in ("mse", "explained_variance", "explained_variance_legacy", "cossim", "l0", "l1", "l2_norm_in",
                 "l2_norm_out", "l2_ratio", "relative_reconstruction_bias", "frac_alive", "freq_over_1_percent",
                 "freq_over_10_percent", "normalized_freq_over_1_percent", "normalized_freq_over_10_percent"):
        close(f"saebench.{name}", got[name], sb[name], rel)
    for name in ("average_max_encoder_cosine_sim", "average_max_decoder_cosine_sim"):
        if name in sb:
            close(f"saebench.{name}", got[name], sb[name], rel, weight_abs)
    for key in ("feature_density", "encoder_bias", "max_encoder_cosine_sim", "max_decoder_cosine_sim"):
        for i, theirs in enumerate(sb_features.get(key, [])):
            close(f"saebench.{key}", details[i][key], theirs, rel, 1e-7 if key == "feature_density" else weight_abs)
    return diffs


def _validate_saebench(path: Path) -> None:
    from pydantic import TypeAdapter
    from sae_bench.evals.core.eval_output import CoreEvalOutput

    data = json.loads(path.read_text())
    out = TypeAdapter(CoreEvalOutput).validate_python(data)
    assert len(out.eval_result_details) == D_SAE
    cfg_keys = set(type(out.eval_config).__dataclass_fields__)
    assert set(data["eval_config"]) == cfg_keys  # SAEBench's config keys, no others


# kind, hook, entry point
CASES = [
    ("standard", "model.layers.2", "python"),
    ("standard_constant_norm_rescale", "model.layers.4", "python"),
    ("topk", "model.layers.3", "python"),
    ("topk_layer_norm_rescale", "model.layers.5", "python"),
    ("jumprelu", "model.layers.3", "cli"),
    ("batchtopk", "model.layers.1", "python"),
    ("matryoshka", "model.layers.8", "python"),
    ("gated", "model.layers.7", "cli"),
    ("expected_average", "model.layers.2", "python"),
]
MEASURED: dict[str, dict[str, float]] = {}


def _report(kind: str) -> None:
    """With SAEKIT_AGREEMENT_OUT=<folder>, write the largest relative difference per metric."""
    import os

    folder = os.environ.get("SAEKIT_AGREEMENT_OUT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{kind}.json").write_text(json.dumps(MEASURED[kind], indent=1, sort_keys=True))


def _check(folder: Path, out: Path, entry: str, monkeypatch) -> dict:
    monkeypatch.setenv("SAEKIT_QUIET", "1")
    if entry == "cli":
        from tests.harness.conftest import cli

        res = cli("check", str(folder), "--tokens", str(N_TOKENS), "--context", str(CONTEXT), "--batch-size",
                  str(BATCH), "--no-cards", "--no-log", "--out", str(out), "--json")
        assert res.exit_code == 0, res.output
    else:
        from saekit.harness.check import check

        check(str(folder), n_tokens=N_TOKENS, context_size=CONTEXT, batch_size=BATCH, cards=False, log=False,
              out_dir=out)
    return json.loads((out / "eval.json").read_text())


@pytest.mark.parametrize(("kind", "hook", "entry"), CASES, ids=[c[0] for c in CASES])
def test_check_agrees_with_sae_lens_and_saebench(kind, hook, entry, lm, tmp_path, monkeypatch):
    from saekit.harness.text import special_token_ids, token_set

    folder = tmp_path / kind
    extra = _write(kind, hook, folder)
    rec = _check(folder, tmp_path / "out", entry, monkeypatch)
    cfg = rec["check_config"]
    assert cfg["hook_name"] == hook and cfg["dtype"] == "float32" and rec["eval_type_id"] == "core"
    model, tok = lm
    ts = token_set(tok, n_tokens=cfg["n_tokens"], context_size=cfg["context_size"], corpus=cfg["corpus"],
                   split=cfg["split"], seed=cfg["seed"], prepend_bos=cfg["prepend_bos"])
    assert ts.fingerprint == rec["data"]["fingerprint"]  # the very tokens saekit evaluated
    assert ts.tokens.shape[0] % BATCH != 0  # a partial last batch
    sl, sl_features, sb, sb_features = _oracles(folder, extra, ts.tokens, hook, lm, special_token_ids(tok))
    MEASURED[kind] = _compare(rec, sl, sl_features, sb, sb_features, REL)
    # the record SAEBench's tools read, under the file name its graphing utilities look for
    files = list((tmp_path / "out").glob("*_eval_results.json"))
    assert len(files) == 1
    _validate_saebench(files[0])
    import torch

    n_special = int(torch.isin(ts.tokens, torch.tensor(special_token_ids(tok))).sum())
    assert rec["eval_result_metrics"]["token_stats"]["total_tokens_evaluated"] == ts.tokens.numel() - n_special
    _report(kind)


def test_bf16_sae_follows_sae_lens(lm, tmp_path, monkeypatch):
    """bf16 SAEs: saekit's code is sae-lens' (the same SAE-dtype maths on CPU), and the check's
    metrics agree with sae-lens' run_evals on the same batches. The run_evals comparison uses a
    JumpReLU SAE: a bf16 TopK SAE's k-th value is often tied with a latent left out, where
    torch.topk's choice is unspecified (saekit takes the lower index), so whole latents may
    differ. sae-lens reduces bf16 activations in bf16 for l1 and cossim: rel 1e-2."""
    import torch
    from sae_lens import SAE as SaeLensSAE

    from saekit.harness.activations import run_to_hook
    from saekit.harness.text import special_token_ids, token_set
    from saekit.registry.artifact import load_artifact

    model, tok = lm
    ts = token_set(tok, n_tokens=N_TOKENS, context_size=CONTEXT, seed=0)
    for kind, hook in (("topk", "model.layers.4"), ("jumprelu", "model.layers.5")):
        folder = tmp_path / f"{kind}-bf16"
        _write(kind, hook, folder, dtype="bfloat16")
        sae = load_artifact(folder)
        assert sae.dtype == torch.bfloat16
        sl_sae = SaeLensSAE.load_from_disk(str(folder), device="cpu")
        x = run_to_hook(model, ts.tokens[:2], hook).reshape(-1, 576)
        with torch.no_grad():
            want = sl_sae.encode(x).float()
            want_hat = sl_sae.decode(sl_sae.encode(x)).float()
        got = sae.encode_dense(x)
        same = (got == want).all(1)
        assert int((~same).sum()) <= 2, kind  # TopK: only rows with a tie at the k-th value
        assert torch.equal(sae(x)[same], want_hat[same]), kind  # bit-identical reconstruction
    rec = _check(folder, tmp_path / "out", "python", monkeypatch)
    assert rec["check_config"]["dtype"] == "bfloat16" and rec["sae_cfg_dict"]["dtype"] == "bfloat16"
    # the check runs the model in the SAE's dtype: the oracles get the same bf16 model
    from saekit.harness.model import load_lm

    lm_bf16 = load_lm(dtype="bfloat16")
    assert rec["eval_config"]["llm_dtype"] == "bfloat16" == str(lm_bf16[0].dtype).removeprefix("torch.")
    sl, sl_features, sb, sb_features = _oracles(folder, {}, ts.tokens, hook, lm_bf16, special_token_ids(tok))
    MEASURED["jumprelu_bf16"] = _compare(rec, sl, sl_features, sb, sb_features, 1e-2, weight_abs=2**-7)
    _report("jumprelu_bf16")
