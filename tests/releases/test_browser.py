"""The static feature browser, opened from the file in headless Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def dump_dom(page: Path, fragment: str) -> str:
    """The DOM after the page's scripts ran, for ``file://PAGE#FRAGMENT``."""
    r = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--virtual-time-budget=3000", "--dump-dom", f"{page.as_uri()}#{fragment}"],
        capture_output=True, text=True, timeout=90,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def result_keys(dom: str) -> list[str]:
    """data-key of each rendered result row (the page's own script text excluded)."""
    ul = re.search(r'<ul id="results">(.*?)</ul>', dom, re.S)
    assert ul, dom[:500]
    return re.findall(r'<li class="latent[^"]*" data-key="([^"]+)"', ul[1])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/setup.sh installs it)")
def test_browser_opens_from_file_searches_and_renders_examples(two_sae_manifest: Path, tmp_path: Path):
    from saekit.releases.bundle import build

    page = build(two_sae_manifest, tmp_path / "bundle") / "browser" / "index.html"
    text = page.read_text()
    # Self-contained: no external scripts, styles, images or fetches; the data is inlined.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "fetch(" not in text and "XMLHttpRequest" not in text
    data = json.loads(re.search(r'<script id="saekit-data" type="application/json">(.*?)</script>', text, re.S)[1])
    assert [s["sae_id"] for s in data["saes"]] == ["layer6/a", "layer6-b"]
    assert len(data["saes"][0]["latents"]) == 64

    # Search by token: both SAEs' latent 7 fire on " labrador"; the best match's card opens.
    dom = dump_dom(page, "q=labrador")
    results = result_keys(dom)
    assert results == ["layer6/a:7", "layer6-b:7"], results
    assert "2 latents" in dom
    card = dom[dom.index('id="card"'):]
    assert "layer6/a #7 — dog breeds" in html.unescape(card)
    examples = card[card.index('id="examples"'):]
    # The example renders token by token, the top token highlighted as the maximum.
    assert re.search(r'<span class="tok max" data-v="3.5"[^>]*background-color: rgba\(255, 140, 0, 1\.000\)[^>]*> labrador</span>',
                     examples), examples[:800]
    assert '> my</span>' in examples and '> sat</span>' in examples

    # Search by label, restricted to one SAE, sorted by max activation ascending.
    dom = dump_dom(page, "q=dog%20breeds&sae=layer6-b")
    assert result_keys(dom) == ["layer6-b:7"]
    dom = dump_dom(page, "sort=max&dir=desc&sae=layer6/a")
    keys = result_keys(dom)
    assert keys[0] == "layer6/a:63" and len(keys) == 64  # max activation 1 + i/10 is largest for i = 63


def _wide_cards(n: int) -> list[dict]:
    """``n`` cards shaped like a check's: 5 top and 4 quantile examples, histogram, logits,
    attribution on every card and exact ablation on a few."""
    words = [" alpha", " beta", " gamma", " delta", " def", " class", " return", " import", ",", "."]
    cards = []
    for i in range(n):
        ex = []
        for j in range(9):
            toks = [words[(i + j + t) % len(words)] for t in range(24)] + [f" tok{i}"]
            vals = [0.0] * 24 + [round(1 + (i % 97) / 10 - j * 0.1, 3)]
            ex.append({"tokens": toks, "values": vals, "max_position": 24, "max_value": vals[-1],
                       "bin": "top" if j < 5 else f"quantile_{(j - 5) * 25 + 12}"})
        down = [{"task": "t", "metric": "delta_ce_loss_per_firing_token", "value": (i % 13) / 1000,
                 "method": "attribution", "n_tokens": 5}]
        if i % 1000 == 0:
            down.append({"task": "t", "metric": "delta_ce_loss_per_firing_token", "value": (i % 13) / 900,
                         "method": "exact-ablation", "n_tokens": 5})
        cards.append({
            "index": i, "annotations": [{"label": "wide sixteen thousand"}] if i == 16000 else [],
            "stats": {"density": (i % 101) / 1000, "max": 1 + (i % 97) / 10, "mean": 0.5,
                      "histogram": {"bin_edges": [0.1 * k for k in range(1, 18)], "counts": [float(k % 5) for k in range(16)]}},
            "top_examples": ex[:5], "quantile_examples": ex[5:],
            "logit_effects": {"positive": [{"token": f" up{k}", "value": 1.0 - k / 10} for k in range(10)],
                              "negative": [{"token": f" down{k}", "value": -1.0 + k / 10} for k in range(10)]},
            "downstream": down,
        })
    return cards


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/setup.sh installs it)")
def test_browser_lists_and_searches_16384_latents_quickly(tmp_path: Path):
    import time

    from saekit.releases.browser import render

    page = tmp_path / "index.html"
    page.write_text(render("wide", [("wide", 16384, _wide_cards(16384))]), encoding="utf-8")
    size_mb = page.stat().st_size / 2**20
    assert size_mb < 64, size_mb

    def open_page(fragment: str) -> tuple[str, float]:
        t = time.perf_counter()
        r = subprocess.run(  # real time (no virtual time budget): the page's own timing is wall-clock
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--dump-dom", f"{page.as_uri()}#{fragment}"], capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout, time.perf_counter() - t

    dom, wall = open_page("sort=index&dir=asc")
    assert "16384 latents (first 200 shown)" in dom
    assert result_keys(dom)[:2] == ["wide:0", "wide:1"]
    ready = float(re.search(r'data-ready-ms="([0-9.]+)"', dom)[1])
    script = float(re.search(r'data-script-ms="([0-9.]+)"', dom)[1])
    print(f"16384 latents: {size_mb:.1f} MiB page, list rendered {ready:.0f} ms after navigation start "
          f"({script:.0f} ms of it the page's script), chromium process wall {wall:.1f} s")
    assert ready < 2000, ready

    # search by label and by token over every latent; the card shows every section
    dom, _ = open_page("q=sixteen%20thousand")
    assert result_keys(dom) == ["wide:16000"]
    card = html.unescape(dom[dom.index('id="card"'):])
    assert "wide #16000 — wide sixteen thousand" in card
    assert 'id="quantile-examples"' in card and 'id="hist"' in card and 'id="downstream"' in card
    assert "exact-ablation" in card and "attribution" in card and " tok16000" in card
    dom, _ = open_page("q=tok12345")
    assert result_keys(dom) == ["wide:12345"]
