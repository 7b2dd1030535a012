"""Fixtures of the release tests (helpers in release_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from release_helpers import register_checked, write_manifest


@pytest.fixture
def two_sae_manifest(tmp_path: Path) -> Path:
    register_checked("res-l6-a", 0, tmp_path)
    register_checked("res-l6-b", 1, tmp_path)
    return write_manifest(tmp_path / "release.yaml", [("res-l6-a@production", "layer6/a"), ("res-l6-b@production", "layer6-b")])


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A loopback Hub; HF_ENDPOINT points at it and the HF cache lives in tmp_path."""
    from saekit.releases.loopback_hub import serve

    server = serve(tmp_path / "hub")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield server
    server.stop()
