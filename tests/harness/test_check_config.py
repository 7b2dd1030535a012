"""The check's configuration is one typed object (CheckConfig), which is the record's
check_config: it round-trips, ``from_record`` re-runs it, and a record whose configuration is
not one is refused in one line. Fast: a tiny SAE on stored activation shards, no language model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from saekit.schemas import BenchmarkRecord, CardsConfig, CheckConfig, DownstreamMethod, InputError

D_IN, D_SAE = 16, 64

# what the check on the language model recorded before check_config was typed (a dict)
LM_CONFIG = {
    "sae_ref": "smollm2-test/1", "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "hook_name": "model.layers.6",
    "corpus": "pydoc", "split": "eval", "seed": 3, "context_size": 32, "n_tokens": 512, "prepend_bos": True,
    "batch_size": 2, "exclude_special_tokens": True, "downstream": False, "device": "cpu", "dtype": "float32",
    "kernels": "auto", "torch_threads": 1, "world_size": 1,
    "cards": {"enabled": True, "latents": "10", "downstream_latents": 16, "n_examples": 5, "n_cards": 10,
              "downstream_method": {"all": None, "chosen": "exact-ablation"}},
}


class _Source:
    """Stand-in for LMActivationSource: random activations of a fake token set."""

    hook_name = "model.layers.6"
    fingerprint = "ab" * 32

    def __init__(self, n_rows: int = 6, ctx: int = 8):
        import torch

        g = torch.Generator().manual_seed(0)
        self.tokens = torch.randint(3, 1000, (n_rows, ctx), generator=g)
        self.acts = torch.randn(n_rows, ctx, D_IN, generator=g)

    def describe(self) -> str:
        return "fake"

    def __iter__(self):
        for i in range(0, self.tokens.shape[0], 2):
            yield self.tokens[i : i + 2], self.acts[i : i + 2]


@pytest.fixture
def shards_check(tmp_path: Path):
    """(SAE folder, shards folder, the eval.json of a check on the shards)."""
    from saekit.harness.activations import write_shards
    from saekit.harness.check import check
    from saekit.registry.artifact import save_artifact
    from tests.releases.release_helpers import make_sae

    sae_dir = tmp_path / "sae"
    save_artifact(make_sae(d_in=D_IN, d_sae=D_SAE), sae_dir)
    shards = tmp_path / "shards"
    write_shards(_Source(), shards, rows_per_shard=2, exclude_token_ids=[0, 2])
    res = check(sae_dir, activations=shards, seed=3, threads=1, log=False, out_dir=tmp_path / "first")
    return sae_dir, shards, res.record_path


def _rewrite(path: Path, dest: Path, fn) -> Path:
    data = json.loads(path.read_text())
    fn(data)
    dest.write_text(json.dumps(data))
    return dest


def test_check_config_round_trips_through_the_record(shards_check):
    import jsonschema

    from saekit.schemas import export

    _, shards, record_path = shards_check
    raw = json.loads(record_path.read_text())
    rec = BenchmarkRecord.model_validate_json(record_path.read_text())
    cfg = rec.check_config
    assert isinstance(cfg, CheckConfig) and rec.config() is cfg
    # the keys the shards check recorded as a dict, with the same values
    assert raw["check_config"] == {"sae_ref": str(shards.parent / "sae"), "hook_name": "model.layers.6", "seed": 3,
                                   "downstream": False, "device": "cpu", "dtype": "float32", "torch_threads": 1,
                                   "activations": str(shards), "exclude_token_ids": [0, 2]}
    assert CheckConfig.model_validate_json(json.dumps(raw["check_config"])) == cfg
    assert rec.eval_type_id == "saekit_core_no_downstream" and rec.seeds == {"data": 3, "torch": 3}
    # the language-model check's config: typed, and written back exactly as it was read
    lm = CheckConfig.model_validate(LM_CONFIG)
    assert lm.cards == CardsConfig(latents="10", downstream_latents=16, n_cards=10, downstream_method=DownstreamMethod())
    again = BenchmarkRecord.model_validate({**raw, "check_config": LM_CONFIG})
    assert json.loads(again.to_json())["check_config"] == LM_CONFIG  # "all": null kept
    schema = export.load_committed("benchmark_record")
    jsonschema.validate(json.loads(again.to_json()), schema)
    jsonschema.validate(raw, schema)


def test_from_record_reruns_the_typed_config(shards_check, tmp_path):
    from saekit.harness.check import check

    sae_dir, _, record_path = shards_check
    first = BenchmarkRecord.model_validate_json(record_path.read_text())
    res = check(from_record=record_path, log=False, out_dir=tmp_path / "again")
    again = BenchmarkRecord.model_validate_json(res.record_path.read_text())
    assert again.check_config == first.check_config and again.eval_result_metrics == first.eval_result_metrics
    assert again.data == first.data and again.sae == first.sae
    # ref overrides the record's; the options given here do not override a record's config
    res = check(sae_dir, from_record=record_path, seed=9, log=False, out_dir=tmp_path / "ref")
    assert res.config.sae_ref == str(sae_dir)
    assert res.config.seed == 3 and res.record.eval_result_metrics == first.eval_result_metrics
    # an older record: saekit's config in eval_config
    legacy = _rewrite(record_path, tmp_path / "legacy.json",
                      lambda d: d.update(eval_config=d.pop("check_config")))
    res = check(from_record=legacy, log=False, out_dir=tmp_path / "legacy")
    assert res.record.check_config == first.check_config
    assert res.record.eval_result_metrics == first.eval_result_metrics


def test_from_record_takes_the_records_config_and_the_call_overrides(shards_check, tmp_path, monkeypatch):
    """An LM record: tokens, seed, batches, hook, model, threads from the record; ref, device,
    threads and cards options from the call (what ``--from-record ... --no-cards`` relies on)."""
    from saekit.harness import check as check_mod

    _, _, record_path = shards_check
    lm = _rewrite(record_path, tmp_path / "lm.json", lambda d: d.update(check_config=LM_CONFIG))
    seen = {}

    def fake_run(config, **kw):
        seen.update(config=config, **kw)

    monkeypatch.setattr(check_mod, "run_check", fake_run)
    check_mod.check(from_record=lm, device="cuda", cards=False, n_tokens=99, seed=7, out_dir=tmp_path / "x")
    cfg = seen["config"]
    assert isinstance(cfg, CheckConfig) and seen["expect_sha"] == BenchmarkRecord.model_validate(
        json.loads(lm.read_text())).sae.sha256
    assert (cfg.sae_ref, cfg.n_tokens, cfg.seed, cfg.batch_size, cfg.context_size) == ("smollm2-test/1", 512, 3, 2, 32)
    assert (cfg.device, cfg.cards.enabled, cfg.torch_threads, cfg.downstream) == ("cuda", False, 1, False)
    check_mod.check("other/2", from_record=lm, threads=3, out_dir=tmp_path / "x")
    assert (seen["config"].sae_ref, seen["config"].torch_threads) == ("other/2", 3)
    # without a record: the config is built from the keyword arguments
    check_mod.check(Path("sae"), n_tokens=256, context_size=64, cards_latents="10", downstream=False)
    cfg = seen["config"]
    assert (cfg.sae_ref, cfg.n_tokens, cfg.context_size, cfg.downstream, cfg.cards.latents) == (
        "./sae", 256, 64, False, "10")
    assert cfg.hook_name is None and cfg.dtype is None  # resolved by the run
    with pytest.raises(InputError, match="cards_latents: expected a number or 'all'"):
        check_mod.check("sae", cards_latents="most")
    with pytest.raises(InputError, match="check configuration: split"):
        check_mod.check("sae", split="test")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["check_config"].update(n_tokenz=5), "not a BenchmarkRecord: check_config.n_tokenz: Extra inputs"),
    (lambda d: d["check_config"].update(seed="3"), "not a BenchmarkRecord: check_config.seed: Input should be"),
    (lambda d: d.update(eval_config={**d.pop("check_config"), "gpu": True}),
     "unreadable check configuration in eval_config: gpu: Extra inputs"),
    (lambda d: d.update(eval_config={"model_name": "gpt2"}, check_config=None),
     "the record holds no saekit check configuration"),
])
def test_a_record_whose_config_is_not_a_check_config_is_refused(shards_check, tmp_path, edit, message):
    from saekit.harness.check import check

    bad = _rewrite(shards_check[2], tmp_path / "bad.json", edit)
    with pytest.raises(InputError, match=message) as err:
        check(from_record=bad, log=False)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)


def test_the_cli_refuses_an_unreadable_config_in_one_line(shards_check, tmp_path):
    bad = _rewrite(shards_check[2], tmp_path / "bad.json", lambda d: d["check_config"].update(n_tokens=[1]))
    r = subprocess.run([sys.executable, "-m", "saekit", "check", "--from-record", str(bad)],
                       capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("error: ") and "check_config.n_tokens" in lines[0]


def test_exact_ablations_not_given_are_bounded_by_the_token_set():
    """16 latents, but at most half the windows (each is a window forward from the hook), and
    at least 2 so the agreement with attribution has a rank correlation."""
    from saekit.schemas.benchmark import DEFAULT_DOWNSTREAM, CardsConfig, default_downstream

    assert [default_downstream(n) for n in (1, 4, 16, 31, 32, 64, 10_000)] == [2, 2, 8, 15, 16, 16, 16]
    assert DEFAULT_DOWNSTREAM == 16 and CardsConfig().downstream_latents is None
