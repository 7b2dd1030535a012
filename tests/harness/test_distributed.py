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


def test_two_ranks_write_the_same_cards_and_metrics_as_one(real_sae_dir, tmp_path):
    env = {**os.environ, "SAEKIT_QUIET": "1", "SOURCE_DATE_EPOCH": "1700000000", "OMP_NUM_THREADS": "1",
           "SAEKIT_HOME": str(tmp_path / "home")}
    torchrun = [sys.executable, "-m", "torch.distributed.run"]  # what the torchrun script runs
    one = _run([sys.executable, "-m", "saekit", "check", str(real_sae_dir)], tmp_path / "one", env)
    two = _run([*torchrun, "--standalone", "--nproc-per-node", "2", "-m", "saekit", "check", str(real_sae_dir)],
               tmp_path / "two", env)
    assert (tmp_path / "one" / "feature_cards.jsonl").read_bytes() == (tmp_path / "two" / "feature_cards.jsonl").read_bytes()
    assert one["eval_result_metrics"] == two["eval_result_metrics"]
    assert one["check_config"]["world_size"] == 1 and two["check_config"]["world_size"] == 2
    cards = [json.loads(x) for x in (tmp_path / "one" / "feature_cards.jsonl").read_text().splitlines()]
    assert len(cards) == one["sae_cfg_dict"]["d_sae"]  # every latent
    methods = {d["method"] for c in cards for d in c["downstream"]}
    assert methods == {"attribution", "exact-ablation"}
