"""The transcoder-set check on SmolLM2-135M: its record's FVU against one computed here from
plain transformers forward hooks, CE/KL with the MLPs replaced, records and cards on disk."""

from __future__ import annotations

import json

import pytest
import torch

from saekit.harness.model import DEFAULT_MODEL_ID
from saekit.kernels.transcoder import TranscoderSet
from tests.transcoder_helpers import make_transcoder

LAYERS = (2, 5)


@pytest.fixture(scope="module")
def tiny_set() -> TranscoderSet:
    """A random set on two layers: TopK (no skip) on one, ReLU with a skip term on the other
    (sizes unlike any default: d_sae 48 and 40, k 7)."""
    return TranscoderSet({
        2: make_transcoder("topk_transcoder", d_in=576, d_sae=48, d_out=576, k=7, seed=1,
                           hook="model.layers.2.mlp", model=DEFAULT_MODEL_ID),
        5: make_transcoder("skip_transcoder", d_in=576, d_sae=40, d_out=576, seed=2,
                           hook="model.layers.5.mlp", model=DEFAULT_MODEL_ID),
    })


@pytest.fixture(scope="module")
def checked(tiny_set, tmp_path_factory):
    from saekit.harness.transcoder_check import check_set

    out = tmp_path_factory.mktemp("tc-check")
    # 3 windows of 24 with batch 2: the last batch is partial
    return check_set(tiny_set, n_tokens=72, context_size=24, batch_size=2, out_dir=out, n_examples=2,
                     n_quantile_examples=2, n_negative_examples=2)


def _by_hand(tc, x):
    """The transcoder written out from its tensors (not through saekit's class)."""
    t = {k: v.double() for k, v in tc.tensors.items()}
    pre = x.double() @ t["W_enc"] + t["b_enc"]
    pre = pre.clamp_min(0) * (pre > t["threshold"]) if "threshold" in t else pre.clamp_min(0)
    if tc.cfg.k is not None:
        pre = pre * (pre >= pre.topk(tc.cfg.k, dim=-1).values[..., -1:])
    y = pre @ t["W_dec"] + t["b_dec"]
    return y + x.double() @ t["W_skip"].T if "W_skip" in t else y


def test_fvu_matches_plain_transformers_hooks(checked, tiny_set):
    """fvu per layer and for the set = Σ‖y−ŷ‖²/Σ‖y−ȳ‖² from forward hooks on the same tokens."""
    from transformers import AutoModelForCausalLM

    from saekit.harness.model import load_lm

    model, tok = load_lm()
    # a fresh transformers model from the same weights folder: no saekit hook code involved
    plain = AutoModelForCausalLM.from_pretrained(model.name_or_path, dtype=torch.float32).eval()
    toks = checked.tokens.tokens
    keep = toks != tok.bos_token_id
    io = {i: {"x": [], "y": []} for i in LAYERS}

    def grab(i):
        def hook(_m, args, out):
            io[i]["x"].append(args[0])
            io[i]["y"].append(out)
        return hook

    hooks = [plain.model.layers[i].mlp.register_forward_hook(grab(i)) for i in LAYERS]
    with torch.no_grad():
        plain(toks)
    for h in hooks:
        h.remove()
    err = var = 0.0
    for i in LAYERS:
        x, y = torch.cat(io[i]["x"])[keep], torch.cat(io[i]["y"])[keep].double()
        e = float((y - _by_hand(tiny_set[i], x)).pow(2).sum())
        v = float((y - y.mean(0)).pow(2).sum())
        assert checked.layer_metrics(i)["fvu"] == pytest.approx(e / v, rel=1e-4)
        err, var = err + e, var + v
    assert checked.metrics["fvu"] == pytest.approx(err / var, rel=1e-4)
    assert checked.metrics["total_tokens_evaluated"] == int(keep.sum()) == 69


def test_ce_kl_and_sparsity(checked, tiny_set):
    m2, m5, s = checked.layer_metrics(2), checked.layer_metrics(5), checked.metrics
    assert m2["l0"] == pytest.approx(7.0)  # TopK: exactly k on every token
    assert 0 < m5["l0"] <= 40
    for m in (m2, m5, s):
        assert m["ce_loss_without_sae"] == s["ce_loss_without_sae"]
        # a random transcoder hurts the model: KL > 0 and the loss moves
        assert m["kl_div_with_sae"] > 0 and m["ce_loss_with_sae"] != m["ce_loss_without_sae"]
        want = (m["ce_loss_with_ablation"] - m["ce_loss_with_sae"]) / (m["ce_loss_with_ablation"] - m["ce_loss_without_sae"])
        assert m["ce_loss_score"] == pytest.approx(want)
    # replacing both MLPs changes the output more than either alone
    assert s["kl_div_with_sae"] > max(m2["kl_div_with_sae"], m5["kl_div_with_sae"])
    assert s["dead_fraction"] == pytest.approx((m2["dead_fraction"] * 48 + m5["dead_fraction"] * 40) / 88)


def test_records_and_cards_on_disk(checked):
    from saekit.schemas.benchmark import read_records
    from saekit.schemas.card_files import read_cards

    rec = read_records(checked.out / "eval.json")[0]
    assert rec.eval_type_id == "saekit_transcoder"
    assert rec.metric("fvu") == checked.metrics["fvu"]
    assert "sparsify" in rec.metric_definitions["fvu"].source
    for i, d_sae in ((2, 48), (5, 40)):
        lrec = read_records(checked.out / f"layer_{i}" / "eval.json")[0]
        assert lrec.check_config.hook_name == f"model.layers.{i}.mlp"
        assert len(lrec.eval_result_details) == d_sae
        cards = read_cards(checked.out / f"layer_{i}" / "feature_cards.jsonl")
        assert [c.index for c in cards] == list(range(d_sae))
        live = [c for c in cards if c.stats.density > 0]
        assert live and all(c.top_examples and c.logit_effects.positive for c in live)
        # densities in the cards and the record agree
        dens = {r["index"]: r["feature_density"] for r in lrec.eval_result_details}
        assert all(abs(c.stats.density - dens[c.index]) < 1e-9 for c in cards)
    assert json.loads((checked.out / "eval.json").read_text())["eval_result_unstructured"]["layers"] == list(LAYERS)


def test_transformerlens_hooks_in_and_out(tmp_path):
    """A transcoder reading TransformerLens' ``blocks.3.ln2.hook_normalized`` (the MLP norm's
    input normalised, before its gain, as SAELens' GPT-2 transcoders do) and predicting
    ``blocks.3.hook_mlp_out``: its FVU against one computed from plain hooks."""
    from transformers import AutoModelForCausalLM

    from saekit.harness.model import load_lm
    from saekit.harness.transcoder_check import check_set

    tc = make_transcoder("jumprelu_transcoder", d_in=576, d_sae=33, d_out=576, seed=4,
                         hook="blocks.3.ln2.hook_normalized", hook_out="blocks.3.hook_mlp_out", model=DEFAULT_MODEL_ID)
    res = check_set(TranscoderSet({3: tc}), n_tokens=40, context_size=20, batch_size=2, out_dir=tmp_path, cards=False)
    model, tok = load_lm()
    plain = AutoModelForCausalLM.from_pretrained(model.name_or_path, dtype=torch.float32).eval()
    box = {}
    norm = plain.model.layers[3].post_attention_layernorm
    h1 = norm.register_forward_hook(lambda m, a, o: box.update(h=a[0]) and None)
    h2 = plain.model.layers[3].mlp.register_forward_hook(lambda m, a, o: box.update(y=o) and None)
    toks = res.tokens.tokens
    with torch.no_grad():
        plain(toks)
    h1.remove()
    h2.remove()
    keep = toks != tok.bos_token_id
    h = box["h"][keep].double()
    x = h / (h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()
    y = box["y"][keep].double()
    want = float((y - _by_hand(tc, x.float())).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert res.layer_metrics(3)["fvu"] == pytest.approx(want, rel=1e-4)
