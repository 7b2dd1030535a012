"""A release of explained and scored cards (issue 21, item 5): the bundle carries the cards'
explanations and scores, the model card gives each scorer's mean against its control, the
browser lists latents by explanation, searches it and sorts by score, and the Neuronpedia
export writes explanations with Neuronpedia's ExplanationScore rows."""

from __future__ import annotations

import gzip
import html
import json
import re
from pathlib import Path

import pytest
import yaml

from release_helpers import explain_cards, make_cards
from test_browser import CHROMIUM, dump_dom, result_keys


def _annotated_manifest(manifest: Path, tmp_path: Path, *, cards_of: str = "res-l6-a@production") -> Path:
    """The shared two-SAE manifest, its first SAE released with explained cards of ``cards_of``."""
    from saekit.registry import store

    info = store.resolve(cards_of)
    cards = explain_cards(make_cards(info.name, info.version, info.sha256, 64))
    (tmp_path / "explained.jsonl").write_text("".join(json.dumps(c, sort_keys=True) + "\n" for c in cards))
    data = yaml.safe_load(manifest.read_text())
    data["saes"][0]["cards"] = "explained.jsonl"
    out = tmp_path / "release.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


@pytest.fixture
def annotated_bundle(two_sae_manifest: Path, tmp_path: Path) -> Path:
    from saekit.releases.bundle import build

    return build(_annotated_manifest(two_sae_manifest, tmp_path), tmp_path / "bundle")


def test_release_carries_explanations_scores_and_their_means(annotated_bundle: Path, tmp_path: Path):
    from saekit.releases.bundle import export_neuronpedia_release, release_cards

    released = {entry.sae_id: cards for _, entry, cards in release_cards(annotated_bundle)}
    by_index = {c.index: c for c in released["layer6/a"]}
    ann = by_index[2].annotations[-1]
    assert by_index[2].schema_version == "1.1" and ann.description == "explanation of latent 2"
    assert [(r.scorer, r.value, r.control) for r in ann.score_records] == [
        ("detection", 0.8, False), ("detection", 0.5, True), ("fuzzing", 0.7, False), ("fuzzing", 0.4, True)]
    assert by_index[5].annotations[-1].provenance.error == "HTTP 500 after 5 tries"
    assert all(not c.annotations or c.index == 7 for c in released["layer6-b"])  # its check's cards

    readme = (annotated_bundle / "README.md").read_text()
    section = readme[readme.index("## Explanations"):]
    assert "- `layer6/a`: 4 of 64 latents explained, 1 failed." in section
    assert "layer6-b" not in section.split("## ", 2)[1]  # no explanations, no line
    # detection: mean of 0.6, 0.7, 0.8, 0.9; fuzzing: 0.7 on three latents, latent 3 unscored
    assert "| `layer6/a` | detection | balanced_accuracy | 0.750 | 0.500 | 0.500 | 4 | 0 |" in section
    assert "| `layer6/a` | fuzzing | balanced_accuracy | 0.700 | 0.400 | 0.500 | 3 | 1 |" in section

    written = export_neuronpedia_release(annotated_bundle, tmp_path / "np")
    folder = Path(next(w["folder"] for w in written if w["sae_id"] == "layer6/a"))
    rows = [json.loads(line) for p in sorted((folder / "explanations").glob("*.jsonl.gz"))
            for line in gzip.decompress(p.read_bytes()).splitlines()]
    row = next(r for r in rows if r["index"] == "2")
    assert row["description"] == "explanation of latent 2" and row["typeName"] == "saekit-explain-v1"
    assert row["explanationModelName"] == "local-smol"
    assert [(s["explanationScoreTypeName"], s["value"], s["explanationScoreModelName"]) for s in row["scores"]] == [
        ("saekit_detection_balanced_accuracy", 0.8, "local-smol"), ("saekit_fuzzing_balanced_accuracy", 0.7, "local-smol")]
    details = json.loads(row["scores"][0]["jsonDetails"])
    assert details["control_value"] == 0.5 and details["chance"] == 0.5 and details["n_failed"] == 0
    # latent 3's fuzzing has no value: no ExplanationScore row (its value is required); latent 5 failed: no row
    assert [s["explanationScoreTypeName"] for s in next(r for r in rows if r["index"] == "3")["scores"]] == [
        "saekit_detection_balanced_accuracy"]
    assert not any(r["index"] == "5" for r in rows)


def test_release_refuses_annotated_cards_of_another_sae(two_sae_manifest: Path, tmp_path: Path):
    from saekit.releases.bundle import build
    from saekit.schemas import IntegrityError

    manifest = _annotated_manifest(two_sae_manifest, tmp_path, cards_of="res-l6-b@production")
    with pytest.raises(IntegrityError, match=r"latent 0's card is for SAE sha256 [0-9a-f]{12}, not the released"):
        build(manifest, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/setup.sh installs it)")
def test_browser_shows_searches_and_sorts_explanations(annotated_bundle: Path):
    page = annotated_bundle / "browser" / "index.html"
    # sorted by score: latent 3 (0.9, detection only), 2 (0.75), 1 (0.7), 0 (0.65); unscored after
    dom = dump_dom(page, "sort=score&dir=desc&sae=layer6/a")
    assert result_keys(dom)[:5] == ["layer6/a:3", "layer6/a:2", "layer6/a:1", "layer6/a:0", "layer6/a:4"]
    listed = html.unescape(re.search(r'<ul id="results">(.*?)</ul>', dom, re.S)[1])
    assert "explanation of latent 0" in listed and "score=0.65" in listed and "dog breeds" in listed

    # search matches explanation text; the card shows it and its scores beside their controls
    dom = dump_dom(page, "q=explanation%20of%20latent%202")
    assert result_keys(dom) == ["layer6/a:2"]
    card = html.unescape(dom[dom.index('id="card"'):])
    assert "layer6/a #2 — explanation of latent 2" in card
    assert re.search(r'id="explanation">explanation of latent 2 <span class="muted">\(local-smol\)', card), card[:1500]
    scores = card[card.index('id="scores"'):card.index("</table>", card.index('id="scores"'))]
    assert re.findall(r"<tr><td>(\w+)</td><td>balanced_accuracy</td><td>([\d.]+)</td><td>([\d.]+)</td>", scores) == [
        ("detection", "0.800", "0.500"), ("fuzzing", "0.700", "0.400")]
