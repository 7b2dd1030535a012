"""A check that reaches the Hub for its model or its dataset is bounded in time, and a missing
Hub dataset fails before the language model loads (issue 20, hidden cases): the real CLI in
a child process.

- A Hub that accepts connections and never answers: ``saekit check`` of an SAE naming a Hub
  model, and of one reading a Hub dataset, ends in one line naming the (masked) endpoint
  within the settings' 2 s timeouts.
- A Hub dataset that does not exist: one line, before the language model loads.
- A check of a tiny model from the loopback Hub with ``--batch-size 3`` over 8 windows (3, 3
  and a partial 2) gives the metrics of one batch of 8; in bfloat16 the same within
  bfloat16's rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sec_helpers import log_measure, saekit
from test_hub_and_network import _silent_url, silent_port  # noqa: F401 - the fixture
from test_hub_models import MODEL_REPO, _sae_folder, _tiny_pythia

_FAST = {"SAEKIT_CONNECT_TIMEOUT": "2", "SAEKIT_READ_TIMEOUT": "2"}
_BOUND_S = 40


def _check(tmp_path: Path, sae: Path, *args: str, **env: str):
    return saekit("check", str(sae), *args, "--tokens", "64", "--context", "16", "--no-cards", "--no-log",
                  "--out", str(tmp_path / "out"), home=tmp_path / "home", cwd=tmp_path, timeout=150, **env)


def test_check_of_a_hub_model_on_a_silent_hub_times_out(tmp_path, silent_port):  # noqa: F811
    url, shown = _silent_url(silent_port)
    sae = _sae_folder(tmp_path / "sae", model_name="org/model", hook_name="blocks.0.hook_resid_pre", d_in=8)
    r = _check(tmp_path, sae, "--dataset", "pydoc", HF_ENDPOINT=url, **_FAST)
    log_measure("check of a Hub model on a silent Hub", r)
    line = r.one_line_error(2)
    assert f"cannot reach the Hub at {shown}" in line and "within 2 s" in line, line
    assert r.seconds < _BOUND_S and not (tmp_path / "out").exists()


def test_check_of_a_hub_dataset_on_a_silent_hub_times_out(tmp_path, silent_port):  # noqa: F811
    from saekit.harness.model import DEFAULT_MODEL_ID

    url, shown = _silent_url(silent_port)
    sae = _sae_folder(tmp_path / "sae", model_name=DEFAULT_MODEL_ID, hook_name="model.layers.3", d_in=576)
    r = _check(tmp_path, sae, "--dataset", "hf://datasets/org/ds", HF_ENDPOINT=url, **_FAST)
    log_measure("check of a Hub dataset on a silent Hub", r)
    line = r.one_line_error(2)
    assert f"cannot reach the Hub at {shown}" in line and "within 2 s" in line, line
    assert r.seconds < _BOUND_S and not (tmp_path / "out").exists()


def test_a_missing_hub_dataset_fails_before_the_model_loads(tmp_path):
    from saekit.harness.model import DEFAULT_MODEL_ID
    from saekit.testing.loopback_hub import serve

    server = serve(tmp_path / "hubroot")
    try:
        sae = _sae_folder(tmp_path / "sae", model_name=DEFAULT_MODEL_ID, hook_name="model.layers.3", d_in=576)
        # not quiet: the progress lines show what ran before the error
        r = _check(tmp_path, sae, "--dataset", "hf://datasets/org/missing", HF_ENDPOINT=server.url, SAEKIT_QUIET="0")
    finally:
        server.stop()
    log_measure("check of a missing Hub dataset", r)
    assert r.rc == 2 and "Traceback" not in r.err, r.err[-2000:]
    line = r.err.strip().splitlines()[-1]
    assert line.startswith("error: hf://datasets/org/missing") and "no repo" in line, line
    assert "loading the language model" not in r.err, r.err[-2000:]
    assert not (tmp_path / "out").exists()


def test_check_in_partial_batches_and_bf16_on_a_hub_model(tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    from saekit.testing.loopback_hub import serve

    hub = serve(tmp_path / "hubroot")
    try:
        HfApi(endpoint=hub.url, token="hf_test").create_repo(MODEL_REPO)
        HfApi(endpoint=hub.url, token="hf_test").upload_folder(
            folder_path=str(_tiny_pythia(tmp_path / "m", seed=1)), repo_id=MODEL_REPO)
        sae = _sae_folder(tmp_path / "sae", model_name="pythia-70m-deduped", hook_name="blocks.1.hook_mlp_out",
                          d_in=32)

        def metrics(name: str, *args: str) -> dict:
            r = saekit("check", str(sae), "--tokens", "128", "--context", "16", "--no-cards", "--no-log",
                       "--out", str(tmp_path / name), *args, home=tmp_path / "home", cwd=tmp_path, timeout=240,
                       HF_ENDPOINT=hub.url)
            assert r.rc == 0, r.err[-3000:]
            return json.loads((tmp_path / name / "eval.json").read_text())["eval_result_metrics"]

        one = metrics("one", "--batch-size", "8")
        parts = metrics("parts", "--batch-size", "3")  # 8 windows: 3, 3 and a partial 2
        bf16 = metrics("bf16", "--batch-size", "3", "--dtype", "bfloat16")
    finally:
        hub.stop()
    # SAEBench's batch-weighted metrics depend on the batching by definition (harness/metrics.py
    # DEFINITIONS: one number per batch); every token-weighted one must not
    batch_weighted = {"mse", "explained_variance", "explained_variance_legacy", "relative_reconstruction_bias",
                      "total_tokens_eval_reconstruction", "total_tokens_eval_sparsity_variance"}
    compared = 0
    for group, values in one.items():
        for key, value in values.items():
            if key in batch_weighted or not isinstance(value, float):
                continue
            assert parts[group][key] == pytest.approx(value, rel=1e-4, abs=1e-7), (group, key)
            assert bf16[group][key] == pytest.approx(value, rel=0.05, abs=0.05), (group, key)
            compared += 1
    assert compared >= 20
    # SAELens / SAEBench count the partial last batch as full: 3 batches of 3 windows of 16
    assert parts["token_stats"]["total_tokens_eval_reconstruction"] == 3 * 3 * 16
    assert parts["token_stats"]["total_tokens_evaluated"] == one["token_stats"]["total_tokens_evaluated"]
