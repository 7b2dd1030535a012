"""The release gate cannot be forged through saekit: tags that mean something (saekit.*,
metric.*) are refused from every user entry point (CLI --tag, saekit.register, identical
re-registration, set_tags), and a release needs the check's record for every SAE,
whatever the manifest says and whatever the version's tags say (--no-check included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import saekit
from saekit.schemas import GateFailedError, InputError
from sec_helpers import saekit as run_saekit
from tests.registry.conftest import make_artifact

FORGED = ["saekit.gate", "saekit.ready", "saekit.sha256", "saekit.hub_commit", "metric.explained_variance",
          "SAEKIT.gate", " saekit.gate", "Metric.l0"]


@pytest.mark.parametrize("key", FORGED)
def test_python_register_refuses_reserved_tags(tmp_path, key):
    art = make_artifact(tmp_path / "art")
    with pytest.raises(InputError, match="set by saekit only"):
        saekit.register("base", art, tags={key: "pass"})


def test_identical_reregistration_and_set_tags_refuse_reserved_tags(tmp_path):
    from saekit.registry import store

    art = make_artifact(tmp_path / "art")
    v1 = saekit.register("base", art, tags={"team": "interp"})
    for key in ("saekit.gate", "metric.l0"):
        with pytest.raises(InputError, match="set by saekit only"):
            saekit.register("base", art, tags={key: "pass"})
        with pytest.raises(InputError, match="set by saekit only"):
            store.set_tags("base", v1.version, {key: "pass"})
    info = store.resolve("base/1")
    assert "saekit.gate" not in info.tags and "metric.l0" not in info.tags
    # ordinary tags still work, on the existing version
    assert saekit.register("base", art, tags={"team": "x"}).tags["team"] == "x"


def test_cli_register_refuses_forged_gate(tmp_path):
    art = make_artifact(tmp_path / "art")
    home = tmp_path / "home"
    r = run_saekit("register", str(art), "--name", "base", "--tag", "saekit.gate=pass", home=home)
    assert "'saekit.gate'" in r.one_line_error(2)
    r = run_saekit("register", str(art), "--name", "base", "--tag", "metric.explained_variance=0.99", home=home)
    r.one_line_error(2)


def _manifest(path: Path, ref: str, rules: list[str]) -> Path:
    path.write_text(yaml.safe_dump({
        "release_id": "r", "version": "1.0.0", "license": "apache-2.0",
        "base_model": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "saes": [{"ref": ref, "sae_id": "sae"}], "gate": {"rules": rules}, "hub_repo": "org/r",
    }))
    return path


def test_no_check_cannot_bypass_a_missing_check_record(tmp_path):
    """The reported bypass: a forged gate tag, a manifest without rules, --no-check."""
    from saekit.registry import store
    from saekit.releases.bundle import build

    art = make_artifact(tmp_path / "art")
    info = saekit.register("base", art)
    # What only someone writing to the MLflow server directly could do: the tag alone.
    store.record_tags("base", info.version, {"saekit.gate": "pass"})
    manifest = _manifest(tmp_path / "m.yaml", "base/1", rules=[])
    with pytest.raises(GateFailedError, match="no check record"):
        build(manifest, tmp_path / "bundle", run_checks=False)
    assert not (tmp_path / "bundle").exists()
    r = run_saekit("release", "build", str(manifest), "--out", str(tmp_path / "b2"), "--no-check",
                   home=Path(str(tmp_path / "saekit-home")))
    assert "no check record" in r.one_line_error(1)


def test_a_record_of_other_content_or_without_verdict_does_not_pass(tmp_path):
    from saekit.registry import store
    from saekit.releases.bundle import build
    from tests.releases.release_helpers import make_record

    art = make_artifact(tmp_path / "art")
    info = saekit.register("base", art)
    rec = make_record("base", info.version, "cd" * 32, 32)
    (tmp_path / "eval.json").write_text(json.dumps(rec))
    store.log_check("base", info.version, metrics={}, files=[tmp_path / "eval.json"], tags={"saekit.gate": "pass"})
    with pytest.raises(GateFailedError, match="check record is for sha256"):
        build(_manifest(tmp_path / "m.yaml", "base/1", rules=[]), tmp_path / "bundle", run_checks=False)
    rec = make_record("base", info.version, info.sha256, 32)  # right content, no gate verdict in it
    (tmp_path / "eval.json").write_text(json.dumps(rec))
    store.log_check("base", info.version, metrics={}, files=[tmp_path / "eval.json"], tags={"saekit.gate": "pass"})
    with pytest.raises(GateFailedError, match="no gate verdict"):
        build(_manifest(tmp_path / "m.yaml", "base/1", rules=[]), tmp_path / "bundle", run_checks=False)
    # with rules, the gate is judged on the record's metrics, not on the tag
    with pytest.raises(GateFailedError, match="explained_variance"):
        build(_manifest(tmp_path / "m.yaml", "base/1", rules=["explained_variance >= 0.95"]), tmp_path / "bundle",
              run_checks=False)


def test_a_record_with_coercible_strings_is_refused_not_coerced(tmp_path):
    """The release reads the check record with the one strict reader (check --from-record uses
    it too): a metric written as a string is not turned into a number the gate then judges."""
    from saekit.harness.check import read_record
    from saekit.registry import store
    from saekit.releases.bundle import build
    from tests.releases.release_helpers import make_record

    art = make_artifact(tmp_path / "art")
    info = saekit.register("base", art)
    rec = make_record("base", info.version, info.sha256, 32)
    cat = next(iter(rec["eval_result_metrics"]))
    name = next(iter(rec["eval_result_metrics"][cat]))
    rec["eval_result_metrics"][cat][name] = str(rec["eval_result_metrics"][cat][name])
    (tmp_path / "eval.json").write_text(json.dumps(rec))
    store.log_check("base", info.version, metrics={}, files=[tmp_path / "eval.json"], tags={"saekit.gate": "pass"})
    with pytest.raises(InputError, match=f"not a BenchmarkRecord: eval_result_metrics.{cat}.{name}"):
        build(_manifest(tmp_path / "m.yaml", "base/1", rules=[]), tmp_path / "bundle", run_checks=False)
    with pytest.raises(InputError, match="not a BenchmarkRecord"):
        read_record(tmp_path / "eval.json")
