"""Settings: one reader of the environment, one meaning for booleans, CLI options on top."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from saekit.schemas import InputError
from saekit.schemas.settings import Settings, current, parse_bool, use_settings


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "on", " On "])
def test_true_values(text):
    assert parse_bool("SAEKIT_QUIET", text) is True


@pytest.mark.parametrize("text", [None, "", "0", "false", "False", "no", "off"])
def test_false_values(text):
    assert parse_bool("SAEKIT_QUIET", text) is False


def test_other_values_are_refused_naming_the_variable():
    with pytest.raises(InputError, match="SAEKIT_DEBUG"):
        Settings.from_env({"SAEKIT_DEBUG": "maybe"})


def test_from_env_then_overrides(tmp_path):
    env = {"SAEKIT_HOME": str(tmp_path / "a"), "SAEKIT_QUIET": "1", "SAEKIT_REGISTRY_URI": "http://x:5000"}
    s = Settings.from_env(env)
    assert (s.home, s.quiet, s.registry_uri, s.kernels) == (tmp_path / "a", True, "http://x:5000", "auto")
    s = Settings.from_env(env, home=tmp_path / "b", registry_uri=None)
    assert s.home == tmp_path / "b" and s.registry_uri == "http://x:5000"  # None: not given
    with pytest.raises(InputError, match="SAEKIT_KERNELS"):
        Settings.from_env({"SAEKIT_KERNELS": "cuda"})


def test_use_settings_wins_over_the_environment(tmp_path, monkeypatch):
    from saekit.registry import store

    monkeypatch.setenv("SAEKIT_HOME", str(tmp_path / "env"))
    assert store.home() == tmp_path / "env"
    with use_settings(Settings.from_env(home=tmp_path / "given")):
        assert current().home == tmp_path / "given" and store.home() == tmp_path / "given"
    assert store.home() == tmp_path / "env"


def test_cli_options_reach_the_library_without_touching_the_environment(tmp_path):
    # `saekit --home DIR --registry-uri URI` runs the command under those settings;
    # no SAEKIT_* variable is written (checked in-process, after the command ran).
    code = (
        "import os, sys, saekit.cli as c\n"
        "saekit_vars = lambda: {k: v for k, v in os.environ.items() if k.startswith('SAEKIT_')}\n"
        "before = saekit_vars()\n"
        "try:\n"
        "    c.main(['--home', sys.argv[1], '--quiet', 'ls', '--json'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "assert saekit_vars() == before == {}, saekit_vars()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAEKIT_")}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "home")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "home" / "registry" / "mlflow.db").is_file()
    assert r.stdout.strip().startswith("[")


def test_no_module_but_settings_reads_saekit_variables():
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for folder in ("saekit", "schemas", "kernels", "registry", "harness", "matching", "releases"):
        for path in (root / folder).rglob("*.py"):
            if path.name == "settings.py" and path.parent.name == "schemas":
                continue
            text = path.read_text()
            for needle in ('environ.get("SAEKIT', "environ['SAEKIT", 'environ["SAEKIT', 'getenv("SAEKIT', 'envvar="SAEKIT'):
                if needle in text:
                    offenders.append(f"{path.relative_to(root)}: {needle}")
    assert not offenders, offenders


def test_network_timeouts_default_and_from_the_environment():
    assert (Settings.from_env({}).connect_timeout, Settings.from_env({}).read_timeout) == (10.0, 60.0)
    s = Settings.from_env({"SAEKIT_CONNECT_TIMEOUT": "2.5", "SAEKIT_READ_TIMEOUT": " 7 "})
    assert (s.connect_timeout, s.read_timeout) == (2.5, 7.0)


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf", "1e6", "ten"])
def test_bad_network_timeouts_are_refused_naming_the_variable(value):
    with pytest.raises(InputError, match="SAEKIT_CONNECT_TIMEOUT must be a number of seconds"):
        Settings.from_env({"SAEKIT_CONNECT_TIMEOUT": value})
