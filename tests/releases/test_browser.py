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
