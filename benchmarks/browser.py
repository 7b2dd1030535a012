"""The static feature browser at full size: first paint and search, measured from navigation start.

Builds one browser page (``saekit.releases.browser.render``) for N latents shaped like a
check's cards (5 top and 4 quantile examples, a histogram, logit effects, a downstream
effect on every card), opens it from ``file://`` in headless Chromium, each repeat in a fresh
browser process, and reads over the DevTools protocol (``--remote-debugging-pipe``, standard
library only) what the page did, all in milliseconds from navigation start (the page's
``performance.timeOrigin``):

- ``first_contentful_paint_ms``: the paint entry ``first-contentful-paint``;
- ``list_in_dom_ms``: the page's script finished rendering the list (``data-ready-ms``);
- ``list_painted_ms``: the list painted (Element Timing entry ``latent-list``, the count line
  written in the same update as the list);
- ``largest_contentful_paint_ms``, ``dom_content_loaded_ms``, ``load_event_ms``;
- a search typed into the box after load (``search_ms``: input event to results in the DOM;
  ``search_painted_ms``: to the next frame), and a search given in the URL
  (``index.html#q=...``: ``url_search_painted_ms`` from navigation start).

Medians over the repeats. Results go to ``benchmarks/results/browser_<date>.json`` (then run
``python3 scripts/perf_page.py``).

    python3 benchmarks/browser.py [--latents 16384] [--repeats 5] [--out PATH]

tests/releases/test_browser.py imports this file for its DevTools driver and its cards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
         "--window-size=1280,900"]


def wide_cards(n: int) -> list[dict]:
    """``n`` cards shaped like a check's: 5 top and 4 quantile examples, histogram, logits,
    attribution on every card and exact ablation on a few, and an explanation scored by
    detection and fuzzing with their controls (what `cards explain` and `cards score` write).
    Latent 16000 has the label "wide sixteen thousand"; latent i fires hardest on the token
    `` tok{i}``, is explained "wide explanation {i}" (latent 9000: "ocelots in animal lists")
    and scores (i % 997) / 1000 on both scorers (highest: latent 996)."""
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
        value = (i % 997) / 1000
        explained = {"description": "ocelots in animal lists" if i == 9000 else f"wide explanation {i}",
                     "explainer_model": "local-smol",
                     "score_records": [{"scorer": s, "metric": "balanced_accuracy", "value": value, "chance": 0.5,
                                        "n_pos": 5, "n_neg": 5, "control": c, "scorer_model": "local-smol"}
                                       for s in ("detection", "fuzzing") for c in (False, True)]}
        cards.append({
            "index": i, "annotations": ([{"label": "wide sixteen thousand"}] if i == 16000 else []) + [explained],
            "stats": {"density": (i % 101) / 1000, "max": 1 + (i % 97) / 10, "mean": 0.5,
                      "histogram": {"bin_edges": [0.1 * k for k in range(1, 18)], "counts": [float(k % 5) for k in range(16)]}},
            "top_examples": ex[:5], "quantile_examples": ex[5:],
            "logit_effects": {"positive": [{"token": f" up{k}", "value": 1.0 - k / 10} for k in range(10)],
                              "negative": [{"token": f" down{k}", "value": -1.0 + k / 10} for k in range(10)]},
            "downstream": down,
        })
    return cards


class DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4 of the
    browser, NUL-separated JSON messages): one page, navigate, evaluate. No websocket
    library needed; a fresh profile per instance (nothing cached between instances)."""

    def __init__(self, binary: str | None = None, timeout: float = 120.0):
        binary = binary or CHROMIUM
        if not binary:
            raise RuntimeError("chromium not found (scripts/setup.sh installs it)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="saekit-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Above 9, so that 3<&N 4>&M cannot clobber one with the other; bash (not sh: dash
        # takes single-digit descriptors only) puts them at 3 and 4 and execs the browser.
        r, w = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)
        bash = shutil.which("bash") or "/bin/bash"
        cmd = [bash, "-c", f'exec "$0" "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-', binary, *FLAGS,
               f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(cmd, pass_fds=(r, w), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(r)
        os.close(w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        self.session = ""
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self.call("Page.enable", session=True)
            self.call("Page.setLifecycleEventsEnabled", session=True, enabled=True)
            self.call("Runtime.enable", session=True)
        except BaseException:
            self.close()
            raise

    # -- protocol --------------------------------------------------------------------------
    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited (code {self.proc.poll()})")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, *, session: bool = False, **params: Any) -> dict:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)

    def wait_event(self, method: str, match: Callable[[dict], bool] = lambda params: True) -> dict:
        """The first event ``method`` whose params ``match`` (already received, or next)."""
        for i, e in enumerate(self.events):
            if e["method"] == method and match(e.get("params", {})):
                return self.events.pop(i)
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read(deadline)
            if m.get("method") == method and match(m.get("params", {})):
                return m
            if "method" in m:
                self.events.append(m)

    # -- the page --------------------------------------------------------------------------
    def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self.events.clear()
        r = self.call("Page.navigate", session=True, url=url)
        if r.get("errorText"):
            raise RuntimeError(f"{url}: {r['errorText']}")
        # this navigation's load (lifecycle events carry its loaderId; a late event of the
        # previous document does not count)
        self.wait_event("Page.lifecycleEvent", lambda p: p.get("name") == "load" and p.get("loaderId") == r.get("loaderId"))

    def eval(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (promises awaited)."""
        r = self.call("Runtime.evaluate", session=True, expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script error: {r['exceptionDetails'].get('text')} "
                               f"{r['exceptionDetails'].get('exception', {}).get('description', '')}")
        return r["result"].get("value")

    def close(self) -> None:
        try:
            os.write(self._to_browser, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - a browser that will not close is killed
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> DevTools:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# After load: wait two frames, then collect the paint, element and LCP entries (buffered).
PAINT_TIMINGS = """(async () => {
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const observed = (type) => new Promise((resolve) => {
    const out = [];
    try {
      const po = new PerformanceObserver((l) => out.push(...l.getEntries()));
      po.observe({ type, buffered: true });
      setTimeout(() => { po.disconnect(); resolve(out); }, 200);
    } catch (e) { resolve(out); }
  });
  const nav = performance.getEntriesByType("navigation")[0] || {};
  const paints = [...performance.getEntriesByType("paint"), ...(await observed("paint"))];
  const paint = Object.fromEntries(paints.map((e) => [e.name, e.startTime]));
  const el = (await observed("element")).filter((e) => e.identifier === "latent-list");
  const lcp = await observed("largest-contentful-paint");
  const d = document.body.dataset;
  return {
    first_paint_ms: paint["first-paint"] ?? null,
    first_contentful_paint_ms: paint["first-contentful-paint"] ?? null,
    list_in_dom_ms: d.readyMs ? Number(d.readyMs) : null,
    list_painted_ms: el.length ? (el[0].renderTime || el[0].startTime) : null,
    largest_contentful_paint_ms: lcp.length ? (lcp[lcp.length - 1].renderTime || lcp[lcp.length - 1].startTime) : null,
    dom_content_loaded_ms: nav.domContentLoadedEventEnd ?? null,
    load_event_ms: nav.loadEventEnd ?? null,
    script_ms: d.scriptMs ? Number(d.scriptMs) : null,
    latents: d.latents ? Number(d.latents) : null,
    count_text: document.getElementById("count").textContent,
    keys: [...document.querySelectorAll("#results li.latent")].slice(0, 5).map((li) => li.dataset.key),
  };
})()"""

# Type a query into the search box (the same input event a keystroke fires) and time it.
SEARCH = """(async (query) => {
  const q = document.getElementById("q");
  const t0 = performance.now();
  q.value = query;
  q.dispatchEvent(new Event("input", { bubbles: true }));
  const t1 = performance.now();
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const t2 = performance.now();
  const card = document.getElementById("card");
  return {
    search_ms: t1 - t0, search_painted_ms: t2 - t0,
    keys: [...document.querySelectorAll("#results li.latent")].map((li) => li.dataset.key),
    count_text: document.getElementById("count").textContent,
    title: (document.getElementById("card-title") || {}).textContent || null,
    sections: ["explanation", "scores", "examples", "quantile-examples", "hist", "downstream"].filter((id) => card.querySelector("#" + id)),
    card_text: card.textContent,
  };
})(%s)"""


def measure(page: Path, *, search: str = "tok12345", timeout: float = 120.0) -> dict[str, Any]:
    """One cold open of ``page`` (a fresh browser): paint timings, a typed search, and a
    search given in the URL (a second navigation of the same browser)."""
    with DevTools(timeout=timeout) as browser:
        browser.open(page.as_uri() + "#sort=index&dir=asc")
        out = browser.eval(PAINT_TIMINGS)
        s = browser.eval(SEARCH % json.dumps(search))
        out.update(search_ms=s["search_ms"], search_painted_ms=s["search_painted_ms"], search_keys=s["keys"][:5],
                   search_sections=s["sections"])
        browser.open("about:blank")  # else a new fragment of the same page would not reload it
        browser.open(page.as_uri() + "#q=" + search)
        u = browser.eval(PAINT_TIMINGS)
        out.update(url_search_in_dom_ms=u["list_in_dom_ms"], url_search_painted_ms=u["list_painted_ms"],
                   url_search_keys=u["keys"])
    return out


def _machine() -> dict[str, Any]:
    version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip() if CHROMIUM else None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus_usable": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "python": platform.python_version(), "chromium": version}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latents", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from saekit.releases.browser import render

    load_start = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="saekit-browser-bench-") as tmp:
        page = Path(tmp) / "index.html"
        t = time.perf_counter()
        page.write_text(render("wide", [("wide", args.latents, wide_cards(args.latents))]), encoding="utf-8")
        render_s = time.perf_counter() - t
        runs = []
        for i in range(args.repeats):
            r = measure(page)
            assert r["latents"] == args.latents and r["search_keys"] == ["wide:12345"], r
            runs.append(r)
            print(f"repeat {i + 1}: FCP {r['first_contentful_paint_ms']:.0f} ms, list painted {r['list_painted_ms']:.0f} ms, "
                  f"search {r['search_ms']:.1f} ms (painted {r['search_painted_ms']:.1f} ms), "
                  f"URL search painted {r['url_search_painted_ms']:.0f} ms", flush=True)
        size = page.stat().st_size
    keys = ["first_paint_ms", "first_contentful_paint_ms", "list_in_dom_ms", "list_painted_ms",
            "largest_contentful_paint_ms", "dom_content_loaded_ms", "load_event_ms", "script_ms",
            "search_ms", "search_painted_ms", "url_search_in_dom_ms", "url_search_painted_ms"]
    medians = {k: round(statistics.median(r[k] for r in runs), 1) for k in keys if all(r.get(k) is not None for r in runs)}
    now = dt.datetime.now(dt.timezone.utc)
    result = {
        "benchmark": "browser",
        "title": f"Feature browser: {args.latents:,} latents in headless Chromium, from navigation start",
        "command": f"python3 benchmarks/browser.py --latents {args.latents} --repeats {args.repeats}",
        "machine": _machine(),
        "date": now.isoformat(timespec="seconds"),
        "loadavg_1m": load_start,
        "latents": args.latents,
        "page_mib": round(size / 2**20, 1),
        "render_page_s": round(render_s, 2),
        "repeats": args.repeats,
        "median_ms": medians,
        "first_contentful_paint_ms_each": [round(r["first_contentful_paint_ms"], 1) for r in runs],
        "list_painted_ms_each": [round(r["list_painted_ms"], 1) for r in runs],
        "search": "'tok12345' typed into the box after load (one match of 16,384; its card opens); the URL search"
                  " is a second navigation of the same browser, to index.html#q=tok12345",
        "load_average_at_end": list(os.getloadavg()),
    }
    print(json.dumps({"page_mib": result["page_mib"], "median_ms": medians}, indent=1))
    out = args.out or ROOT / "benchmarks" / "results" / f"browser_{now:%Y%m%dT%H%M}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
