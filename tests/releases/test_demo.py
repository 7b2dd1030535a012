"""The main job, reduced: `saekit demo --size test --tokens 2048`, run twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_end_to_end_and_rerun(tmp_path: Path, real_sae_dir: Path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    for var in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "saekit", "demo", "--size", "test", "--tokens", "2048", "--json"]

    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    a = json.loads(first.stdout)
    assert a["ok"] and a["check"]["gate"] == "pass" and a["check"]["ran"]
    assert "production" in a["sae"]["aliases"]
    assert a["publish"]["changed"] and a["publish"]["tag"] == "v0.1.0"
    assert a["load"]["identical"] and a["load"]["sha256"] == a["sae"]["sha256"]
    assert a["load"]["ref"] == f"hf://saekit-demo/smollm2-135m-res-l6-test@v0.1.0/{a['release']['sae_id']}"
    bundle = Path(a["release"]["bundle"])
    assert (bundle / "browser" / "index.html").is_file() and (bundle / "SHA256SUMS").is_file()
    # A few latents explained and scored with the local model; the release carries them.
    ann = a["annotate"]
    print(f"demo annotate step: {a['timings_s']['annotate']} s, {ann['requests_sent']} requests sent, "
          f"{ann['requests_cached']} cached; means {ann['means']}, controls {ann['control_means']}")
    assert ann["latents"] == 2 and ann["explained"] + ann["failed"] == 2 and ann["explained"] >= 1
    # each window a forced choice read from the answer token's probabilities: scores, not failures
    assert ann["scored"] >= 1 and ann["means"]["detection auc"] is not None
    from saekit.releases.bundle import release_cards

    explained = [c for _, _, cards in release_cards(bundle) for c in cards
                 if any(x.description and x.provenance for x in c.annotations)]
    assert len(explained) == ann["explained"]
    assert "## Explanations" in (bundle / "README.md").read_text()
    page = (bundle / "browser" / "index.html").read_text()
    assert json.dumps(explained[0].annotations[-1].description, ensure_ascii=False)[1:-1] in page  # inlined JSON
    scored = [r for c in explained for r in c.annotations[-1].score_records if r.value is not None and not r.control]
    assert scored and '"sc":[["detection",' in page  # the latent's detail in the browser lists its scores
    before = {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()}

    # Second run: everything is reused; the rebuilt bundle is byte-identical, publishing is a no-op.
    second = subprocess.run(cmd[:-1], capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "(unchanged)" in second.stdout and "identical to the registry copy" in second.stdout
    assert "demo ok" in second.stdout
    assert "; 0 requests, " in second.stdout  # the local model's answers came from the request cache
    after = {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    assert after == before

    from saekit.registry import store

    info = store.resolve(f"{a['sae']['name']}@production")
    assert info.version == a["sae"]["version"]
    assert info.tags["saekit.hub_commit"] == a["publish"]["commit"]
    assert info.tags["saekit.hub_tag"] == "v0.1.0"
