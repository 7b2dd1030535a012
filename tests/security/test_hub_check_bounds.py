"""A check that reaches the Hub for its model or its dataset is bounded in time, and a missing
Hub dataset fails before the language model loads (issue 20, hidden cases): the real CLI in
a child process.

- A Hub that accepts connections and never answers: ``saekit check`` of an SAE naming a Hub
  model, and of one reading a Hub dataset, ends in one line naming the (masked) endpoint
  within the settings' 2 s timeouts.
- A Hub dataset that does not exist: one line, before the language model loads.
"""

from __future__ import annotations

from pathlib import Path

from sec_helpers import log_measure, saekit
from test_hub_and_network import _silent_url, silent_port  # noqa: F401 - the fixture
from test_hub_models import _sae_folder

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
    from saekit.releases.loopback_hub import serve

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
