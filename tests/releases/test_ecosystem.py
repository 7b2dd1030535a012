"""Releases in the registries the field uses: the SAELens registry entry a bundle carries
(read by sae-lens' own catalogue reader, loaded by name), the Hub library metadata, and
feature cards in Neuronpedia's upload layout (written, read back, explanations imported)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from release_helpers import run_py  # noqa: F401 - the helpers' module, for its sys.path entry

SHA = "cd" * 32
D_SAE = 64


def _cards(sha: str = SHA, d_sae: int = D_SAE, n: int = 5):
    from saekit.schemas.card import FeatureCard

    out = []
    for i in range(n):
        out.append(FeatureCard.model_validate({
            "sae": {"name": "res-l6", "version": "2", "sha256": sha, "d_sae": d_sae},
            "index": 3 * i,
            "annotations": [{"description": f"feature {i} about dogs", "source": "auto", "explainer_model": "gpt-4o-mini",
                             "type_name": "oai_token-act-pair", "scores": {"scoreV1": 0.25 * i},
                             "created_at": "2026-11-01T12:00:00Z"}],
            "stats": {"density": 0.01 * (i + 1), "max": 2.0 + i,
                      "histogram": {"bin_edges": [0.0, 0.5, 1.0, 1.5], "counts": [3.0, 2.0, float(i)]}},
            "top_examples": [{"tokens": [" the", " dog", " barked"], "values": [0.0, 2.0 + i, 0.5], "max_value": 2.0 + i,
                              "max_position": 1, "bin": "top",
                              "source": {"dataset": "pile", "document": f"doc-{i}"}}],
            "logit_effects": {"positive": [{"token": " woof", "value": 1.5}], "negative": [{"token": " meow", "value": -1.0}],
                              "histogram": {"bin_edges": [-1.0, 0.0, 1.0], "counts": [4.0, 6.0]}},
            "similar": [{"index": 3 * i + 1, "value": 0.5, "kind": "decoder_cosine"}],
        }))
    return out


def _carried(card) -> dict:
    """What Neuronpedia's layout carries of a card (label, mean, n_tokens, token ids, example
    positions, downstream evals and tags have no column there)."""
    d = card.model_dump(mode="json", exclude_none=True)
    for a in d.get("annotations", []):  # one text column: the description, else the label
        label = a.pop("label", None)
        if a.get("description") is None and label is not None:
            a["description"] = label
    for k in ("mean", "n_tokens", "data_fingerprint"):
        d.get("stats", {}).pop(k, None)
    for ex in d.get("top_examples", []):  # what the layout derives when a card leaves it out
        ex.setdefault("max_value", max(ex["values"]))
        ex.setdefault("max_position", ex["values"].index(max(ex["values"])))
        ex.setdefault("bin", "top")  # Neuronpedia: an activation without a quantile bin is a top example
        ex.pop("token_ids", None)
        (ex.get("source") or {}).pop("position", None)
    for le in (d.get("logit_effects") or {}).get("positive", []) + (d.get("logit_effects") or {}).get("negative", []):
        le.pop("token_id", None)
    keep = ("sae", "index", "annotations", "stats", "top_examples", "logit_effects", "similar")
    return {k: d[k] for k in keep if k in d}


def test_neuronpedia_export_reads_back(tmp_path):
    from saekit.releases.ecosystem import export_neuronpedia, read_neuronpedia

    cards = _cards()
    folder = export_neuronpedia(cards, tmp_path / "np", model_id="smollm2-135m", source_id="6-res-test",
                                features_per_batch=2)
    assert folder == tmp_path / "np" / "smollm2-135m" / "6-res-test"
    for name in ("release.jsonl", "model.jsonl", "sourceset.jsonl", "source.jsonl"):
        assert (folder / name).is_file()
    assert sorted(p.name for p in (folder / "features").iterdir()) == [
        "batch-0.jsonl.gz", "batch-1.jsonl.gz", "batch-2.jsonl.gz"]
    rows = [json.loads(line) for line in gzip.decompress((folder / "activations" / "batch-0.jsonl.gz").read_bytes())
            .decode().splitlines()]
    assert rows[0]["modelId"] == "smollm2-135m" and rows[0]["layer"] == "6-res-test" and rows[0]["index"] == "0"
    assert rows[0]["maxValue"] == 2.0 and rows[0]["minValue"] == 0.0 and rows[0]["binMin"] == -1
    feature = json.loads(gzip.decompress((folder / "features" / "batch-1.jsonl.gz").read_bytes()).splitlines()[0])
    assert feature["index"] == "6" and feature["frac_nonzero"] == pytest.approx(0.03) and feature["pos_str"] == [" woof"]

    back = read_neuronpedia(folder)
    assert [c.index for c in back] == [c.index for c in cards]
    for a, b in zip(cards, back):
        assert _carried(b) == _carried(a)


def test_neuronpedia_explanations_become_annotations(tmp_path):
    from saekit.releases.ecosystem import annotate_from_neuronpedia, export_neuronpedia
    from saekit.schemas import InputError

    cards = _cards()
    bare = [c.model_copy(update={"annotations": []}) for c in cards]
    # an export of the same SAE (identity in source.jsonl): found and checked by sha256
    folder = export_neuronpedia(cards, tmp_path / "np", model_id="smollm2-135m", source_id="6-res-test")
    annotated, added = annotate_from_neuronpedia(bare, folder)
    assert added == len(cards)
    assert [c.annotations[0].description for c in annotated] == [c.annotations[0].description for c in cards]
    again, added = annotate_from_neuronpedia(annotated, folder)
    assert added == 0  # idempotent

    rows = tmp_path / "expl.jsonl"

    def write(*items):
        rows.write_text("".join(json.dumps(r) + "\n" for r in items))
        return rows

    ok = {"modelId": "smollm2-135m", "layer": "6-res-test", "index": "7", "description": "barking",
          "typeName": "human", "explanationModelName": None, "authorId": "me"}
    out, added = annotate_from_neuronpedia(bare, write(ok), source="smollm2-135m/6-res-test")
    assert added == 1 and [c.index for c in out if c.annotations] == [7]  # a new card for latent 7
    with pytest.raises(InputError, match="not the cards' SAE"):
        annotate_from_neuronpedia(bare, write({**ok, "layer": "7-res-test"}), source="smollm2-135m/6-res-test")
    with pytest.raises(InputError, match="latent 64 does not exist in a 64-latent SAE"):
        annotate_from_neuronpedia(bare, write({**ok, "index": "64"}), source="smollm2-135m/6-res-test")
    with pytest.raises(InputError, match="pass --source"):
        annotate_from_neuronpedia(bare, write(ok))
    other = export_neuronpedia(_cards(sha="ef" * 32), tmp_path / "np2", model_id="smollm2-135m", source_id="6-res-test")
    with pytest.raises(InputError, match="explanations are for SAE sha256 efefefefefef"):
        annotate_from_neuronpedia(bare, other)
    wide = export_neuronpedia(_cards(sha=None, d_sae=128), tmp_path / "np3", model_id="m", source_id="6-x")
    narrow = [c.model_copy(update={"sae": c.sae.model_copy(update={"sha256": None})}) for c in bare]
    with pytest.raises(InputError, match="128-latent SAE, the cards' has 64"):
        annotate_from_neuronpedia(narrow, wide, source="m/6-x")


def _cli(argv):
    return subprocess.run([sys.executable, "-m", "saekit", *argv], capture_output=True, text=True,
                          env={**os.environ, "SAEKIT_QUIET": "1"})


def test_release_carries_saelens_entry_and_exports_to_neuronpedia(two_sae_manifest: Path, tmp_path: Path, hub,
                                                                  monkeypatch):
    import torch
    import yaml

    import saekit
    from saekit.releases.bundle import build
    from saekit.schemas.card_files import read_cards
    from saekit.releases.publish import publish

    bundle = build(two_sae_manifest, tmp_path / "bundle")
    entry = yaml.safe_load((bundle / "pretrained_saes.yaml").read_text())
    release = json.loads((bundle / "release.json").read_text())
    (rid, rel), = entry.items()
    assert rid == release["release_id"] and rel["repo_id"] == release["hub_repo"]
    assert [s["id"] for s in rel["saes"]] == ["layer6/a", "layer6-b"]
    assert [s["path"] for s in rel["saes"]] == ["layer6/a", "layer6-b"]
    for s in rel["saes"]:
        m = next(x["metrics"] for x in release["saes"] if x["sae_id"] == s["id"])
        assert s["l0"] == pytest.approx(m["l0"]) and s["variance_explained"] == pytest.approx(m["explained_variance"])

    # sae-lens' own catalogue reader parses it
    from sae_lens.loading import pretrained_saes_directory as psd

    class _Files:
        def joinpath(self, _name):
            return bundle / "pretrained_saes.yaml"

    monkeypatch.setattr(psd, "files", lambda _pkg: _Files())
    psd.get_pretrained_saes_directory.cache_clear()
    try:
        lookup = psd.get_pretrained_saes_directory()[rid]
        assert lookup.repo_id == release["hub_repo"] and lookup.saes_map["layer6/a"] == "layer6/a"
    finally:
        psd.get_pretrained_saes_directory.cache_clear()

    # published: registered back by that name through saekit (the entry as the catalogue) ...
    publish(bundle, release["hub_repo"])
    v = saekit.register("from-entry", f"saelens:{rid}/layer6-b", catalogue=bundle / "pretrained_saes.yaml")
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(saekit.load("from-entry").encode_dense(x), saekit.load("res-l6-b/1").encode_dense(x))
    assert v.tags["saekit.source.saelens"] == f"{rid}/layer6-b"
    # ... and by SAELens itself, by release name, once the entry is in its catalogue
    code = f"""
import torch
from sae_lens.loading import pretrained_saes_directory as psd
from pathlib import Path
class F:
    def joinpath(self, _n): return Path({str(bundle / 'pretrained_saes.yaml')!r})
psd.files = lambda _p: F()
from sae_lens import SAE
import saekit
theirs = SAE.from_pretrained(release={rid!r}, sae_id="layer6/a")
x = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
print(bool(torch.equal(theirs.encode(x), saekit.load("res-l6-a/1").encode_dense(x))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HF_ENDPOINT": hub.url})
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "True", out.stderr[-2000:]

    # the release's cards in Neuronpedia's layout, and back
    r = _cli(["cards", "export", "neuronpedia", str(bundle), "--out", str(tmp_path / "np"), "--json"])
    assert r.returncode == 0, r.stderr
    written = json.loads(r.stdout)
    assert [w["sae_id"] for w in written] == ["layer6/a", "layer6-b"]
    for w in written:
        r = _cli(["cards", "import", "neuronpedia", w["folder"], "--out", str(tmp_path / "back.jsonl")])
        assert r.returncode == 0, r.stderr
        from saekit.schemas.card import FeatureCard

        back = [FeatureCard.model_validate_json(line) for line in (tmp_path / "back.jsonl").read_text().splitlines()]
        sae_entry = next(s for s in release["saes"] if s["sae_id"] == w["sae_id"])
        orig = read_cards([bundle / f for f in sae_entry["card_files"]])
        assert len(back) == len(orig) == w["cards"] > 0
        assert [_carried(b) for b in back] == [_carried(o) for o in orig]
    r = _cli(["cards", "export", "neuronpedia", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "x")])
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_saelens_entry_from_manifest_and_records():
    from release_helpers import make_record

    from saekit.releases.ecosystem import saelens_registry
    from saekit.releases.manifest import parse_manifest
    from saekit.releases.modelcard import SAEEntry
    from saekit.schemas import BenchmarkRecord

    manifest = parse_manifest({
        "release_id": "smollm2-saes", "version": "1.0.0", "license": "apache-2.0", "hub_repo": "org/smollm2-saes",
        "base_model": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "saes": [{"ref": "a@production", "sae_id": "layer6/a", "neuronpedia": "smollm2-135m/6-res-mine"},
                 {"ref": "b@production", "sae_id": "layer6-b"}]})
    entries = [SAEEntry("layer6/a", "a@production", "a", 1, "ab" * 32, {},
                        BenchmarkRecord.model_validate(make_record("a", 1, "ab" * 32, 64, ev=0.8125, l0=12.5)), "pass"),
               SAEEntry("layer6-b", "b@production", "b", 1, "cd" * 32, {}, None, "pass")]
    assert saelens_registry(manifest, entries) == {"smollm2-saes": {
        "repo_id": "org/smollm2-saes", "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "conversion_func": None,
        "saes": [{"id": "layer6/a", "path": "layer6/a", "l0": 12.5, "variance_explained": 0.8125,
                  "neuronpedia": "smollm2-135m/6-res-mine"},
                 {"id": "layer6-b", "path": "layer6-b"}]}}
