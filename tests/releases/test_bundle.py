"""Release bundles: layout, model card, hashes, gate, byte-identical rebuilds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from release_helpers import register_checked, write_manifest


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_bundle_layout_card_and_byte_identical_rebuild(two_sae_manifest: Path, tmp_path: Path):
    from huggingface_hub import ModelCard

    from saekit.registry import store
    from saekit.registry.artifact import artifact_sha256, load_artifact
    from saekit.releases.bundle import build, verify

    a = build(two_sae_manifest, tmp_path / "a")
    b = build(two_sae_manifest, tmp_path / "b")
    ta, tb = _tree(a), _tree(b)
    assert ta == tb, [p for p in ta if ta[p] != tb.get(p)]
    # Rebuilding in place replaces the bundle with the same bytes.
    assert _tree(build(two_sae_manifest, a, force=True)) == ta

    for sid, ref in (("layer6/a", "res-l6-a/1"), ("layer6-b", "res-l6-b/1")):
        for f in ("cfg.json", "sae_weights.safetensors", "eval.json", "feature_cards.jsonl"):
            assert f"{sid}/{f}" in ta
        info = store.resolve(ref)
        assert artifact_sha256(a / sid) == info.sha256
        load_artifact(a / sid, expected_sha256=info.sha256)
    for f in ("README.md", "release.json", "SHA256SUMS", "browser/index.html",
              "plots/feature_density.png", "plots/l0_vs_explained_variance.png"):
        assert f in ta

    release = verify(a)  # the typed release.json (ReleaseBundle)
    assert [(s.sae_id, s.registry.model_dump(), s.gate) for s in release.saes] == [
        ("layer6/a", {"name": "res-l6-a", "version": 1}, "pass"),
        ("layer6-b", {"name": "res-l6-b", "version": 1}, "pass"),
    ]
    assert release.records["layer6/a"]["eval_id"].startswith("core-")
    assert release.built_from_epoch_millis == 1_763_000_000_000
    assert (a / "release.json").read_text() == json.dumps(release.model_dump(mode="json"), indent=2,
                                                          sort_keys=True, ensure_ascii=False) + "\n"
    sums = (a / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == len(ta) - 1 and all(len(line.split("  ")[0]) == 64 for line in sums)

    card = ModelCard.load(a / "README.md")
    assert card.data.library_name == "saelens"  # the Hub's registered library: its loading snippet
    assert {"saekit", "saelens", "smollm2"} <= set(card.data.tags)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.license == "apache-2.0"
    evs = {(r.metric_name, r.metric_value) for r in card.data.eval_results}
    assert ("explained_variance (layer6/a)", 0.9) in evs and ("l0 (layer6-b)", 5.0) in evs
    text = card.text
    assert 'saekit.load("hf://saekit-test/smollm2-saes@v1.0.0/layer6/a")' in text
    assert 'SAE.from_pretrained(release="saekit-test/smollm2-saes", sae_id="layer6/a")' in text
    assert "(plots/feature_density.png)" in text and "(plots/l0_vs_explained_variance.png)" in text
    assert ta["plots/feature_density.png"].startswith(b"\x89PNG")
    assert b"Software" not in ta["plots/feature_density.png"]


def test_large_card_sets_are_sharded(two_sae_manifest: Path, tmp_path: Path):
    from saekit.releases.bundle import build, verify

    out = build(two_sae_manifest, tmp_path / "bundle", cards_per_shard=20)
    import gzip

    shards = sorted((out / "layer6/a/feature_cards").glob("*.jsonl.gz"))
    assert [p.name for p in shards] == [f"part-{i:05d}-of-00004.jsonl.gz" for i in range(4)]
    lines = [json.loads(line) for p in shards for line in gzip.decompress(p.read_bytes()).decode().splitlines()]
    assert [c["index"] for c in lines] == list(range(64))
    assert not (out / "layer6/a/feature_cards.jsonl").exists()
    release = verify(out)
    assert release.saes[0].card_files == [f"layer6/a/feature_cards/{p.name}" for p in shards]


def test_gate_is_required(tmp_path: Path):
    from saekit.registry import store
    from saekit.releases.bundle import build
    from saekit.schemas import GateFailedError

    register_checked("good", 0, tmp_path)
    register_checked("bad", 1, tmp_path, gate="fail", ev=0.3)
    store.register("unchecked", __import__("release_helpers").make_sae(seed=2))

    m = write_manifest(tmp_path / "bad.yaml", [("good@production", "good"), ("bad@production", "bad")])
    with pytest.raises(GateFailedError, match=r"gate failed for 'bad@production' \(bad/1\): explained_variance 0.3 < 0.7"):
        build(m, tmp_path / "out")
    m = write_manifest(tmp_path / "unchecked.yaml", [("unchecked", "u")])
    with pytest.raises(GateFailedError, match="no check recorded"):
        build(m, tmp_path / "out", run_checks=False)
    # The manifest's own gate applies to the recorded benchmark record too.
    m = write_manifest(tmp_path / "strict.yaml", [("good@production", "good")], rules=["explained_variance >= 0.95"])
    with pytest.raises(GateFailedError, match=r"explained_variance >= 0.95 \(measured 0.9\)"):
        build(m, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_manifests_are_input_errors(tmp_path: Path):
    from saekit.releases.bundle import build
    from saekit.schemas import InputError, NotFoundError

    with pytest.raises(NotFoundError):
        build(tmp_path / "missing.yaml", tmp_path / "out")
    bad = tmp_path / "bad.yaml"
    bad.write_text("release_id: x\nversion: 1.0\n")
    with pytest.raises(InputError, match=r"bad.yaml: version: Input should be a valid string"):
        build(bad, tmp_path / "out")
    (tmp_path / "notabundle").mkdir()
    (tmp_path / "notabundle" / "precious.txt").write_text("keep me")
    m = write_manifest(tmp_path / "m.yaml", [("x@production", "x")])
    with pytest.raises(InputError, match="not a saekit bundle"):
        build(m, tmp_path / "notabundle")
    assert (tmp_path / "notabundle" / "precious.txt").read_text() == "keep me"


def test_verify_catches_tampering(two_sae_manifest: Path, tmp_path: Path):
    from saekit.releases.bundle import build, verify
    from saekit.releases.publish import publish
    from saekit.schemas import IntegrityError

    out = build(two_sae_manifest, tmp_path / "bundle")
    weights = out / "layer6/a/sae_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="layer6/a/sae_weights.safetensors: sha256 mismatch"):
        verify(out)
    with pytest.raises(IntegrityError):
        publish(out, "org/x", dry_run=True)
    out = build(two_sae_manifest, tmp_path / "bundle2")
    (out / "extra.txt").write_text("sneaked in")
    with pytest.raises(IntegrityError, match="extra.txt: not listed in SHA256SUMS"):
        verify(out)
