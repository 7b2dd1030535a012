"""Fast harness tests: gate, policy files, text token sets, progress, annotations parsing."""

from __future__ import annotations

import json

import pytest

from saekit.harness.gate import apply, describe, failing_text, load_policy
from saekit.schemas import BenchmarkRecord, GatePolicy, InputError, NotFoundError, SAERef


def _record(**metrics: float) -> BenchmarkRecord:
    return BenchmarkRecord(
        eval_type_id="core", eval_config={}, eval_id="x", datetime_epoch_millis=0,
        eval_result_metrics={"reconstruction_quality": metrics}, sae=SAERef(name="s"),
    )


def test_gate_lists_every_rule_with_its_measured_value():
    policy = GatePolicy.model_validate({"rules": ["explained_variance >= 0.7", "mse <= 10", "l0 < 50"]})
    v = apply(policy, _record(explained_variance=0.65, mse=3.0))
    assert not v.passed
    assert [r.passed for r in v.results] == [False, True, False]
    assert [r.measured for r in v.results] == [0.65, 3.0, None]  # l0 not measured: fails
    lines = describe(v)
    assert lines[0] == "FAIL explained_variance >= 0.7 (measured 0.65)" and "not measured" in lines[2]
    assert failing_text(v) == "explained_variance >= 0.7 (measured 0.65); l0 < 50 (measured none)"
    assert apply(GatePolicy.model_validate({"rules": ["mse <= 10"]}), _record(mse=3.0)).passed


def test_policy_files(tmp_path):
    (tmp_path / "p.yaml").write_text("rules:\n  - explained_variance >= 0.7\n  - {metric: l0, op: '<=', value: 40}\n")
    (tmp_path / "p.json").write_text(json.dumps(["kl_div_score > 0.9"]))
    (tmp_path / "m.yaml").write_text("release_id: r\ngate:\n  rules: ['ce_loss_score >= 0.8']\n")
    assert [str(r) for r in load_policy(tmp_path / "p.yaml").rules] == ["explained_variance >= 0.7", "l0 <= 40"]
    assert str(load_policy(tmp_path / "p.json").rules[0]) == "kl_div_score > 0.9"
    assert str(load_policy(tmp_path / "m.yaml").rules[0]) == "ce_loss_score >= 0.8"
    (tmp_path / "bad.yaml").write_text("rules: ['explained variance is good']\n")
    with pytest.raises(InputError, match="bad.yaml"):
        load_policy(tmp_path / "bad.yaml")
    with pytest.raises(NotFoundError):
        load_policy(tmp_path / "missing.yaml")


def test_progress_is_silenced_by_saekit_quiet(monkeypatch, capsys):
    from saekit.schemas.console import Progress

    monkeypatch.setenv("SAEKIT_QUIET", "1")
    with Progress("x", total=2) as bar:
        bar.update(2)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("SAEKIT_QUIET", "0")
    with Progress("work", total=2) as bar:
        bar.update(2)
    assert "work 2" in capsys.readouterr().err


def test_annotation_file_forms(tmp_path):
    from saekit.harness.annotations import read_annotations

    p = tmp_path / "a.jsonl"
    p.write_text('{"index": 3, "label": "commas", "description": "fires on commas"}\n\n{"index": 5, "label": "x"}\n')
    anns = read_annotations(p)
    assert anns[3][0].label == "commas" and anns[3][0].source == "human" and anns[5][0].label == "x"
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"label": "no index"}\n')
    with pytest.raises(InputError, match="b.jsonl:1"):
        read_annotations(bad)
    listed = tmp_path / "c.json"  # a JSON list, read through the one card-file layer
    listed.write_text('[{"index": 1, "label": "a"}, {"index": 2, "label": "b"}]')
    listed_anns = read_annotations(listed)
    assert [listed_anns[i][0].label for i in (1, 2)] == ["a", "b"]
    broken = tmp_path / "d.jsonl"
    broken.write_text('{"index": 1, "label": "a"}\n{"index": 2,\n')
    with pytest.raises(InputError, match="d.jsonl:2"):
        read_annotations(broken)


def test_threads_leave_out_cpus_other_processes_keep_busy():
    """One process takes the CPUs it may use less those another process keeps busy (a
    descheduled torch thread stalls the others); an explicit count is kept as given."""
    import os
    import subprocess
    import sys
    import time

    import torch

    from saekit.harness.dist import available_cpus, busy_cpus, configure_threads

    before = torch.get_num_threads()
    try:
        cpus = available_cpus()
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
        if cpus < 2 or not os.path.exists("/proc/stat"):  # the rule needs a CPU to leave out
            pytest.skip("needs 2 CPUs and /proc/stat")
        spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.5)
            assert busy_cpus() >= 0.5
            n = configure_threads()
            assert 1 <= n <= cpus - 1 and torch.get_num_threads() == n
        finally:
            spin.kill()
            spin.wait()
        import threading

        # its own busy threads are not counted as others': measured against what the other
        # processes on this machine keep busy anyway (a shared CI machine is rarely idle)
        others = busy_cpus(window=0.5)
        stop = threading.Event()
        own = threading.Thread(target=lambda: [None for _ in iter(stop.is_set, True)])  # this process spins
        own.start()
        try:
            assert busy_cpus(window=0.5) < others + 0.5
        finally:
            stop.set()
            own.join()
    finally:
        torch.set_num_threads(before)


def test_each_torchrun_rank_takes_its_own_gpu(monkeypatch):
    """Under torchrun a bare ``cuda`` is the rank's GPU (LOCAL_RANK), so N ranks on a node
    use N GPUs (NCCL refuses two ranks on one GPU); explicit devices and CPU are kept."""
    from saekit.harness.dist import local_rank, rank_device

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert local_rank() == 0 and rank_device("cuda") == "cuda" and rank_device("cpu") == "cpu"
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert local_rank() == 3
    assert rank_device("cuda") == "cuda:3"
    assert rank_device("cuda:1") == "cuda:1" and rank_device("cpu") == "cpu"
