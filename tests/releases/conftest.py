"""Fixtures of the release tests (helpers in release_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from release_helpers import register_checked, write_manifest


@pytest.fixture(scope="session")
def _shared_registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One registry home with two checked SAEs, made once (registering costs seconds)."""
    root = tmp_path_factory.mktemp("releases-registry")
    mp = pytest.MonkeyPatch()
    mp.setenv("SAEKIT_HOME", str(root / "home"))
    mp.setenv("SAEKIT_QUIET", "1")
    try:
        register_checked("res-l6-a", 0, root)
        register_checked("res-l6-b", 1, root)
    finally:
        mp.undo()
    manifest = write_manifest(root / "release.yaml", [("res-l6-a@production", "layer6/a"), ("res-l6-b@production", "layer6-b")])
    return root / "home", manifest


@pytest.fixture
def two_sae_manifest(_shared_registry: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A manifest of two checked SAEs; SAEKIT_HOME points at the shared registry holding them."""
    home, manifest = _shared_registry
    monkeypatch.setenv("SAEKIT_HOME", str(home))
    return manifest


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A loopback Hub; HF_ENDPOINT points at it and the HF cache lives in tmp_path."""
    from saekit.testing.loopback_hub import serve

    server = serve(tmp_path / "hub")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield server
    server.stop()
