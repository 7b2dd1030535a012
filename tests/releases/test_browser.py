"""The static feature browser, opened from the file in headless Chromium."""

from __future__ import annotations

import functools
import html
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROOT = Path(__file__).resolve().parents[2]


def dump_dom(page: Path, fragment: str, check: bool = True) -> str:
    """The DOM after the page's scripts ran, for ``file://PAGE#FRAGMENT``."""
    r = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--virtual-time-budget=3000", "--dump-dom", f"{page.as_uri()}#{fragment}"],
        capture_output=True, text=True, timeout=90,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    if check:
        assert '<ul id="results">' in r.stdout, r.stdout[:500]
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


def _bench():
    """benchmarks/browser.py: its DevTools driver (headless Chromium over a pipe), its probes
    and its cards."""
    spec = importlib.util.spec_from_file_location("bench_browser", ROOT / "benchmarks" / "browser.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/setup.sh installs it)")
def test_browser_lists_and_searches_16384_latents_quickly(tmp_path: Path):
    from saekit.releases.browser import render

    bench = _bench()
    page = tmp_path / "index.html"
    page.write_text(render("wide", [("wide", 16384, bench.wide_cards(16384))]), encoding="utf-8")
    size_mb = page.stat().st_size / 2**20
    assert size_mb < 64, size_mb

    with bench.DevTools() as browser:
        browser.open(page.as_uri() + "#sort=index&dir=asc")
        t = browser.eval(bench.PAINT_TIMINGS)
        assert t["latents"] == 16384 and t["count_text"] == "16384 latents (first 200 shown)", t
        assert t["keys"][:2] == ["wide:0", "wide:1"]
        # All from navigation start (the page's timeOrigin), not from the script's start.
        print(f"16384 latents: {size_mb:.1f} MiB page; from navigation start: first contentful paint "
              f"{t['first_contentful_paint_ms']:.0f} ms, list painted {t['list_painted_ms']:.0f} ms "
              f"(in the DOM at {t['list_in_dom_ms']:.0f} ms, {t['script_ms']:.0f} ms of it the page's script)")
        assert t["first_contentful_paint_ms"] < 2000, t
        assert t["list_painted_ms"] is not None and t["list_painted_ms"] < 2000, t

        # search by label and by token over every latent, typed into the box; the card shows every section
        s = browser.eval(bench.SEARCH % json.dumps("sixteen thousand"))
        assert s["keys"] == ["wide:16000"], s["keys"]
        assert s["title"] == "wide #16000 \u2014 wide sixteen thousand"
        assert s["sections"] == ["explanation", "scores", "examples", "quantile-examples", "hist", "downstream"]
        assert "exact-ablation" in s["card_text"] and "attribution" in s["card_text"] and " tok16000" in s["card_text"]
        assert "wide explanation 16000" in s["card_text"]  # labelled, so the explanation is shown beside the label
        s = browser.eval(bench.SEARCH % json.dumps("tok12345"))
        assert s["keys"] == ["wide:12345"] and s["title"] == "wide #12345 \u2014 wide explanation 12345"
        # search by explanation text, over every latent
        s = browser.eval(bench.SEARCH % json.dumps("ocelots"))
        assert s["keys"] == ["wide:9000"] and s["title"] == "wide #9000 \u2014 ocelots in animal lists", s
        print(f"search by explanation: painted {s['search_painted_ms']:.0f} ms")
        assert s["search_painted_ms"] < 2000, s["search_painted_ms"]

        # opened sorted by explanation score: the highest first (0.996: latents 996, 1993, ...), as fast
        browser.open("about:blank")
        browser.open(page.as_uri() + "#sort=score&dir=desc")
        t = browser.eval(bench.PAINT_TIMINGS)
        assert t["keys"][:3] == ["wide:996", "wide:1993", "wide:2990"], t["keys"][:3]
        print(f"sorted by score: list painted {t['list_painted_ms']:.0f} ms from navigation start")
        assert t["list_painted_ms"] is not None and t["list_painted_ms"] < 2000, t
        print(f"search typed after load: results in the DOM {s['search_ms']:.0f} ms, painted {s['search_painted_ms']:.0f} ms")
        assert s["search_painted_ms"] < 2000, s["search_painted_ms"]


def _assert_browser_works(dom: str) -> None:
    """``#q=labrador`` opened: the search found latent 7 and its card shows the quantile
    examples, the activation histogram and the downstream effect."""
    assert result_keys(dom) == ["layer6/rich:7"], result_keys(dom)
    card = html.unescape(dom[dom.index('id="card"'):])
    assert "layer6/rich #7 — dog breeds" in card
    assert 'id="quantile-examples"' in card and "> spaniel</span>" in card and "quantile_50" in card
    assert re.search(r'<svg class="hist" id="hist"[^>]*>(<rect [^>]*>.*?</rect>){4}</svg>', card), card[:2000]
    down = card[card.index('id="downstream"'):]
    assert "exact-ablation" in down and "0.04210" in down and "attribution" in down


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/setup.sh installs it)")
def test_browser_from_the_hub(tmp_path: Path, hub, monkeypatch: pytest.MonkeyPatch):
    """A published release's browser, viewed as a Hub user can: downloaded with
    huggingface_hub at the release's tag and opened from the file, or served as a page (what a
    static Space does). The Hub's own resolve URL serves it as text, not as a page."""
    import http.server
    import threading
    import urllib.request

    from huggingface_hub import hf_hub_download

    from release_helpers import register_checked, write_manifest
    from saekit.releases.bundle import build
    from saekit.releases.publish import publish

    monkeypatch.setenv("SAEKIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SAEKIT_QUIET", "1")
    register_checked("res-rich", 0, tmp_path, rich=True)
    manifest = write_manifest(tmp_path / "release.yaml", [("res-rich@production", "layer6/rich")], repo="org/browser")
    bundle = build(manifest, tmp_path / "bundle")
    published = publish(bundle, "org/browser", endpoint=hub.url)
    assert "browser/index.html" in published.files

    # (a) hf_hub_download at the published tag into a folder, then open from file://
    path = Path(hf_hub_download("org/browser", "browser/index.html", revision=published.tag, endpoint=hub.url,
                                local_dir=tmp_path / "download"))
    assert path == tmp_path / "download" / "browser" / "index.html" and not path.is_symlink()
    assert path.read_bytes() == (bundle / "browser" / "index.html").read_bytes()
    _assert_browser_works(dump_dom(path, "q=labrador"))
    # Not from the cache path: that is a link to a blob named by its hash, and Chromium, going
    # by the name of the file it reads, shows a page with no .html as text (docs/releases.md).
    cached = Path(hf_hub_download("org/browser", "browser/index.html", revision=published.tag, endpoint=hub.url,
                                  cache_dir=tmp_path / "hf-cache"))
    assert cached.is_symlink() and not cached.resolve().name.endswith(".html")
    assert '<ul id="results">' not in dump_dom(cached, "q=labrador", check=False)

    # (b) the resolve URL: text with nosniff, like the Hub, so Chromium shows the source, not the page
    url = f"{hub.url}/org/browser/resolve/{published.tag}/browser/index.html"
    with urllib.request.urlopen(url) as r:
        assert r.headers["Content-Type"].startswith("text/plain") and r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["X-Repo-Commit"] == published.commit
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--no-first-run", "--virtual-time-budget=3000", "--dump-dom", url + "#q=labrador"],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    assert '<ul id="results">' not in r.stdout and "&lt;ul id=\"results\"&gt;" in r.stdout  # shown as text

    # ... served as a page over HTTP (a static Space serves its files as pages), it works
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        site = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                            "--no-first-run", "--virtual-time-budget=3000", "--dump-dom", site + "#q=labrador"],
                           capture_output=True, text=True, timeout=90)
        assert r.returncode == 0, r.stderr[-2000:]
        _assert_browser_works(r.stdout)
    finally:
        server.shutdown()
        server.server_close()
