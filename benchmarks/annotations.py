"""Explaining and scoring latents with the local model (SmolLM2-135M, in process): speed,
tokens, the cached rerun, peak memory, and the scorer calibration table (issue 21).

The latents are harness.calibrate's rule latents (fires on digits, on " the", on Python
keywords; real pydoc token windows). Phases, each with a fresh request cache:

- ``explain``: ``explain_files`` on the rule cards (the model writes an explanation);
- ``score``: ``score_files`` on the same cards carrying the rule as their explanation, so the
  record's value is the rule's score and its control the next rule's explanation (a
  shuffled explanation): the calibration table;
- ``rerun``: both phases again on the same cache: requests sent must be 0;
With ``--per-prompt 1`` (the default here, and the demo's) each window is its own prompt and
the answer a forced choice of "1" or "0" read from the first answer token's probabilities
(harness.score.forced_choice): SmolLM2-135M cannot write delphi's list answer (with
``--per-prompt 5`` every window failed: results/annotations_20261206T1232.json).

    python3 benchmarks/annotations.py [--scorers detection] [--n 5] [--per-prompt 1] [--out PATH]

Results go to ``benchmarks/results/annotations_<date>.json`` (then ``python3 scripts/perf_page.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5, help="held-out activating and zero windows per latent (each)")
    ap.add_argument("--scorers", nargs="+", default=["detection"])
    ap.add_argument("--per-prompt", type=int, default=1, help="windows per detection/fuzzing prompt (1: forced choice)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from saekit.harness.calibrate import rule_cards
    from saekit.harness.explain import ExplainOptions, explain_files
    from saekit.harness.llm_client import CachedClient, LocalChatClient, Params, RequestCache
    from saekit.harness.model import load_lm
    from saekit.harness.score import ScoreOptions, score_files
    from saekit.schemas.card_files import read_cards, write_cards

    load_start = list(os.getloadavg())
    _, tok = load_lm()
    local = LocalChatClient()
    eopts = ExplainOptions(n_top=5, n_quantile=0, params=Params(max_tokens=24), concurrency=1)
    sopts = ScoreOptions(n_pos=args.n, n_neg=args.n, per_prompt=args.per_prompt, scorers=tuple(args.scorers),
                         params=Params(max_tokens=1 if args.per_prompt == 1 else 24, logprobs=True), concurrency=1)
    phases: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_cards(rule_cards(tok), tmp / "rules.jsonl")
        write_cards(rule_cards(tok, explained=True), tmp / "rules_explained.jsonl")
        cache = RequestCache(tmp / "cache")
        for run in ("first", "rerun"):
            client = CachedClient(local, cache)
            t0 = time.perf_counter()
            e = explain_files([tmp / "rules.jsonl"], tmp / f"explained_{run}.jsonl", client, eopts)
            t1 = time.perf_counter()
            e_in, e_out, e_sent = client.tokens_in, client.tokens_out, client.sent
            s = score_files([tmp / "rules_explained.jsonl"], tmp / f"scored_{run}.jsonl", client, sopts)
            t2 = time.perf_counter()
            phases[run] = {"explain_s": round(t1 - t0, 3), "score_s": round(t2 - t1, 3), "requests_sent": client.sent,
                           "requests_cached": client.cached, "explained": e.explained, "explain_failed": e.failed,
                           "explain_tokens_in": e_in, "explain_tokens_out": e_out, "explain_requests": e_sent,
                           "score_tokens_in": client.tokens_in - e_in, "score_tokens_out": client.tokens_out - e_out}
            if run == "first":
                score_summary = s
                explanations = {c.index: c.annotations[-1].description for c in read_cards([tmp / "explained_first.jsonl"])}
                calib = []
                for c in read_cards([tmp / "scored_first.jsonl"]):
                    for r in c.annotations[-1].score_records:
                        calib.append({"rule": c.tags[0].removeprefix("rule:"), "scorer": r.scorer, "metric": r.metric,
                                      "explanation": "shuffled" if r.control else "rule", "value": r.value,
                                      "n_pos": r.n_pos, "n_neg": r.n_neg, "n_failed": r.n_failed})
        # what the scorer model answered (the cache keeps every answer): why windows failed
        answers = sorted({json.loads(f.read_bytes())["text"][:100] for f in (tmp / "cache").rglob("*.json")}
                         - set(explanations.values()))[:6]
        same = (tmp / "scored_first.jsonl").read_bytes() == (tmp / "scored_rerun.jsonl").read_bytes()
    n = len(explanations)
    first = phases["first"]
    date = dt.datetime.now(dt.timezone.utc)
    result = {
        "benchmark": "annotations",
        "title": "Semantic annotations with the local model (SmolLM2-135M-Instruct, in process, CPU)",
        "command": "python3 benchmarks/annotations.py " + " ".join(argv or []),
        "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs usable, "
                   f"{platform.platform()}, Python {platform.python_version()}",
        "date": date.isoformat(timespec="seconds"),
        "loadavg_1m": load_start,
        "latents": n,
        "windows_per_latent": {"activating": args.n, "zero": args.n, "per_prompt": sopts.per_prompt},
        "scorers": ", ".join(args.scorers),
        "latents_explained_per_hour": round(n / first["explain_s"] * 3600, 1),
        "latents_scored_per_hour": round(n / first["score_s"] * 3600, 1),
        "tokens_per_latent": {"explain_in": first["explain_tokens_in"] // n, "explain_out": first["explain_tokens_out"] // n,
                              "score_in": first["score_tokens_in"] // n, "score_out": first["score_tokens_out"] // n},
        "first_run": first,
        "rerun_from_cache": {**phases["rerun"], "cards_byte_identical": same},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "explanations": {f"{i}": v for i, v in explanations.items()},
        "windows_failed": score_summary.n_failed,
        "sample_answers": answers,
        "calibration": calib,
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"annotations_{date:%Y%m%dT%H%M}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
