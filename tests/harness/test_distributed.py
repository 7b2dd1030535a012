"""``torchrun -m saekit check`` on 2 ranks (gloo, CPU) writes what one process writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ARGS = ["--tokens", "128", "--context", "32", "--batch-size", "1", "--cards-latents", "all",
        "--downstream-latents", "2", "--threads", "1", "--no-log", "--json"]


def _run(cmd: list[str], out, env) -> dict:
    r = subprocess.run([*cmd, *ARGS, "--out", str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "eval.json").read_text())


def _same_run(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in ("eval_id", "datetime_epoch_millis", "timings", "hardware")}
    out["check_config"] = {k: v for k, v in record["check_config"].items() if k != "world_size"}
    return out


def test_two_ranks_write_the_same_cards_and_record_as_one(real_sae_dir, tmp_path):
    env = {**os.environ, "SAEKIT_QUIET": "1", "SOURCE_DATE_EPOCH": "1700000000", "OMP_NUM_THREADS": "1",
           "SAEKIT_HOME": str(tmp_path / "home")}
    torchrun = [sys.executable, "-m", "torch.distributed.run"]  # what the torchrun script runs
    one = _run([sys.executable, "-m", "saekit", "check", str(real_sae_dir)], tmp_path / "one", env)
    two = _run([*torchrun, "--standalone", "--nproc-per-node", "2", "-m", "saekit", "check", str(real_sae_dir)],
               tmp_path / "two", env)
    assert (tmp_path / "one" / "feature_cards.jsonl").read_bytes() == (tmp_path / "two" / "feature_cards.jsonl").read_bytes()
    assert one["check_config"]["world_size"] == 1 and two["check_config"]["world_size"] == 2
    # the whole record, bit for bit, but what names the run (id, time, machine, ranks)
    assert _same_run(one) == _same_run(two)
    cards = [json.loads(x) for x in (tmp_path / "one" / "feature_cards.jsonl").read_text().splitlines()]
    assert len(cards) == one["sae_cfg_dict"]["d_sae"]  # every latent
    methods = {d["method"] for c in cards for d in c["downstream"]}
    assert methods == {"attribution", "exact-ablation"}


def test_three_ranks_annotated_top_n_cards_equal_one(real_sae_dir, tmp_path):
    """The N most active latents (not index order, one partial block) with a user's labels
    merged on every rank, over 3 ranks with unequal shares of the 4 batches: rank 0 writes
    them sorted by index, the same bytes as one process."""
    env = {**os.environ, "SAEKIT_QUIET": "1", "SOURCE_DATE_EPOCH": "1700000000", "OMP_NUM_THREADS": "1",
           "SAEKIT_HOME": str(tmp_path / "home")}
    notes = tmp_path / "notes.jsonl"
    notes.write_text("".join(json.dumps({"index": i, "label": f"label {i}"}) + "\n" for i in range(64)))
    extra = ["--cards-latents", "7", "--annotations", str(notes)]
    cmd = ["-m", "saekit", "check", str(real_sae_dir)]
    out = {}
    for n in (1, 3):
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                            *cmd, *ARGS, *extra, "--out", str(tmp_path / f"r{n}")],
                           capture_output=True, text=True, env=env, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        out[n] = (tmp_path / f"r{n}" / "feature_cards.jsonl").read_bytes()
    assert out[1] == out[3]
    cards = [json.loads(x) for x in out[1].decode().splitlines()]
    assert len(cards) == 7 and [c["index"] for c in cards] == sorted(c["index"] for c in cards)
    labelled = [c for c in cards if c["index"] < 64]
    assert all(c["annotations"][0]["label"] == f"label {c['index']}" for c in labelled)
    assert all(not c.get("annotations") for c in cards if c["index"] >= 64)


def test_bad_annotations_fail_before_the_model_loads(real_sae_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"label": "no index"}\n')
    env = {**os.environ, "SAEKIT_QUIET": "1", "SAEKIT_HOME": str(tmp_path / "home")}
    r = subprocess.run([sys.executable, "-m", "saekit", "check", str(real_sae_dir), "--annotations", str(bad),
                        *ARGS, "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2
    assert "bad.jsonl:1" in r.stderr and "index" in r.stderr
    assert "loading the language model" not in r.stderr
    assert not (tmp_path / "out").exists()
