"""Harness fixtures: one real check of the small test SAE, shared by the tests that read it.

The check runs once per session through the CLI (registry reference, failing policy), on
512 tokens so the whole harness part stays within its few-minute budget on 2 cores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

N_TOKENS = 512
CONTEXT = 32
POLICY = ["explained_variance >= 0.5", "l0 <= 16", "ce_loss_score >= 0.999"]


def cli(*args: str) -> Any:
    """Run the saekit CLI in-process (the model stays loaded); returns typer's Result."""
    import importlib

    from typer.testing import CliRunner

    from saekit.cli import _MODULES
    from saekit.cli.app import app

    for mod in _MODULES:
        importlib.import_module(f"saekit.cli.{mod}")
    return CliRunner().invoke(app, list(args))


@dataclass
class Checked:
    home: Path
    out: Path
    ref: str
    result: Any  # typer Result of `saekit check`
    data: dict  # its --json output

    @property
    def record_path(self) -> Path:
        return self.out / "eval.json"

    @property
    def cards_path(self) -> Path:
        return self.out / "feature_cards.jsonl"


@pytest.fixture(scope="session")
def lm():
    from saekit.harness.model import load_lm

    return load_lm()


@pytest.fixture(scope="session")
def checked(real_sae_dir: Path, lm, tmp_path_factory: pytest.TempPathFactory) -> Checked:
    root = tmp_path_factory.mktemp("harness")
    home = root / "home"
    policy = root / "policy.yaml"
    policy.write_text("rules:\n" + "".join(f"  - \"{r}\"\n" for r in POLICY))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAEKIT_HOME", str(home))
        mp.setenv("SAEKIT_QUIET", "1")
        mp.delenv("SAEKIT_REGISTRY_URI", raising=False)
        from saekit.registry import store

        info = store.register("smollm2-test", real_sae_dir)
        ref = f"{info.name}/{info.version}"
        out = root / "check"
        res = cli(
            "check", ref, "--policy", str(policy), "--tokens", str(N_TOKENS), "--context", str(CONTEXT),
            "--cards-latents", "10", "--downstream-latents", "2", "--ablation-windows", "3", "--out", str(out), "--json",
        )
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return Checked(home=home, out=out, ref=ref, result=res, data=json.loads(res.stdout))
