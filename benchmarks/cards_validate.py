"""Time ``saekit cards validate`` against jsonschema's Draft202012Validator, in one run.

    python3 benchmarks/cards_validate.py                  # 131,072 cards, the README numbers
    python3 benchmarks/cards_validate.py --cards 16384    # quicker

Cards are realistic saekit cards: 20 top examples of 64 tokens each (tokens, token ids
unless --no-token-ids, activations that are mostly zero around a few peaks, source), an activation histogram of 50 bins,
10 positive and 10 negative logit effects, an annotation with scores, provenance. 1 in 200
cards is broken (wrong type, out of range, unknown key, missing key, 1.5 for an integer).
They are written to a temporary .jsonl file and validated the way the CLI does it
(saekit.schemas.validate.validate_paths: raw bytes per line through pydantic-core, a
process per CPU).

jsonschema is too slow to run on all of them: it is timed on a subset (parse + validate,
one process) and extrapolated linearly, which the output says. On the same subset the
script checks that saekit's schema verdict (pydantic, without saekit's extra consistency
and cross-card checks) equals jsonschema's, card by card, and over the whole file that
saekit flags exactly the cards that were broken. On a shared machine wall time depends on
the other jobs: CPU seconds (user + system, all processes) and the load average are
recorded beside it. Results: benchmarks/results/cards_validate.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import datetime as dt
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_EXAMPLES, N_TOKENS, N_BINS, N_LOGITS = 20, 64, 50, 10
DISTINCT = 2048  # distinct cards built; the file repeats them with fresh indices

WORDS = (
    "the of and to in is was for on that with as by at from his her it an are be this which or had "
    "not but were have one all their been they has more when who will there can its would about "
    "city Paris river market light school water music paper house garden north summer winter"
).split()


def vocabulary(rng: random.Random, size: int = 4096) -> list[str]:
    pieces = [" " + w for w in WORDS] + WORDS + [".", ",", "\n", "'s", "ing", "ed", " (", ")", '"', " -", ":"]
    while len(pieces) < size:
        w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 7)))
        pieces.append((" " if rng.random() < 0.6 else "") + w)
    return pieces


def build_card(rng: random.Random, vocab: list[str], index: int, *, token_ids: bool = True) -> dict:
    examples = []
    for _ in range(N_EXAMPLES):
        ids = [rng.randrange(len(vocab)) for _ in range(N_TOKENS)]
        values = [0.0] * N_TOKENS
        for _ in range(rng.randint(1, 6)):  # a few peaks; most tokens do not fire
            values[rng.randrange(N_TOKENS)] = round(rng.uniform(0.05, 12.0), 4)
        peak = max(range(N_TOKENS), key=values.__getitem__)
        examples.append(
            {
                "tokens": [vocab[i] for i in ids],
                "values": values,
                **({"token_ids": ids} if token_ids else {}),
                "max_value": values[peak],
                "max_position": peak,
                "source": {"dataset": "HuggingFaceFW/fineweb-edu", "document": str(rng.randrange(10**7)), "position": rng.randrange(4096)},
                "bin": "top",
            }
        )
    edges = [round(i * 0.25, 4) for i in range(N_BINS + 1)]
    logit = lambda sign: {"token": rng.choice(vocab), "token_id": rng.randrange(49152), "value": round(sign * rng.uniform(0.1, 3.0), 4)}  # noqa: E731
    return {
        "schema_version": "1.0",
        "sae": {"name": "smollm2-135m-res-l6", "version": "3", "sha256": "5e" * 32, "d_sae": 1 << 20},
        "index": index,
        "annotations": [
            {"label": "city names", "description": "Names of European cities, mostly capitals", "source": "auto",
             "explainer_model": "gpt-4o-mini", "scores": {"detection": round(rng.random(), 4), "fuzzing": round(rng.random(), 4)},
             "created_at": "2026-11-20T10:00:00Z"}
        ],
        "stats": {
            "density": round(rng.uniform(1e-5, 0.05), 6),
            "mean": round(rng.uniform(0.5, 4), 4),
            "max": round(rng.uniform(4, 12), 4),
            "n_tokens": 2_000_000,
            "histogram": {"bin_edges": edges, "counts": [rng.randrange(10_000) for _ in range(N_BINS)]},
        },
        "top_examples": examples,
        "logit_effects": {"positive": [logit(1) for _ in range(N_LOGITS)], "negative": [logit(-1) for _ in range(N_LOGITS)]},
        "tags": ["geography"],
        "provenance": {"tool": "saekit", "tool_version": "0.1.0", "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "hook_name": "model.layers.6"},
    }


BREAKS = [
    lambda c: c.__setitem__("index", str(c["index"])),
    lambda c: c["stats"].__setitem__("density", 1.5),
    lambda c: c.__setitem__("colour", "red"),
    lambda c: c.pop("sae"),
    lambda c: c["top_examples"][3].__setitem__("max_position", 1.5),
    lambda c: c["top_examples"][7]["values"].__setitem__(5, "high"),
    lambda c: c["sae"].__setitem__("sha256", "5E" * 32),
    lambda c: c["logit_effects"]["positive"][0].__setitem__("value", True),
]


def write_file(path: Path, n: int, *, token_ids: bool = True, seed: int = 0) -> tuple[list[bool], int]:
    """Write n cards (1 in 200 broken); returns which lines are broken and the bytes written."""
    rng = random.Random(seed)
    vocab = vocabulary(rng)
    templates = [json.dumps(build_card(rng, vocab, 0, token_ids=token_ids), separators=(",", ":")) for _ in range(DISTINCT)]
    key = '"index":0,'
    broken = []
    size = 0
    with open(path, "w") as f:
        for i in range(n):
            if i % 200 == 199:
                card = json.loads(templates[i % DISTINCT])
                card["index"] = i
                BREAKS[(i // 200) % len(BREAKS)](card)
                line = json.dumps(card, separators=(",", ":"))
                broken.append(True)
            else:
                line = templates[i % DISTINCT].replace(key, f'"index":{i},', 1)
                broken.append(False)
            f.write(line + "\n")
            size += len(line) + 1
    return broken, size


def cpu_seconds() -> float:
    """User + system time of this process and its reaped children (the worker pool)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import pydantic
    import pydantic_core

    return {
        "cpu": cpu,
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "pydantic": pydantic.VERSION,
        "pydantic_core": pydantic_core.__version__,
        "jsonschema": importlib.metadata.version("jsonschema"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cards", type=int, default=131_072)
    ap.add_argument("--jsonschema-cards", type=int, default=256, help="subset timed with jsonschema")
    ap.add_argument("--single-core-cards", type=int, default=16_384, help="subset timed with one process (0: skip)")
    ap.add_argument("--no-token-ids", action="store_true", help="examples without token ids (as Neuronpedia's)")
    ap.add_argument("--workers", type=int, default=None, help="saekit processes (default: CPUs usable)")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/cards_validate[_no_token_ids].json")
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the temporary card file")
    args = ap.parse_args()
    if args.out is None:
        args.out = ROOT / "benchmarks" / "results" / f"cards_validate{'_no_token_ids' if args.no_token_ids else ''}.json"

    import jsonschema

    from saekit.schemas import validate as v
    from saekit.schemas.export import load_committed

    env = machine()
    tmp = Path(tempfile.mkdtemp(prefix="saekit-bench-", dir=args.tmp))
    try:
        path = tmp / "feature_cards.jsonl"
        t0 = time.perf_counter()
        broken, size = write_file(path, args.cards, token_ids=not args.no_token_ids)
        print(f"built {args.cards:,} cards, {size / 1e9:.2f} GB ({size / args.cards / 1e3:.1f} kB/card) in {time.perf_counter() - t0:.1f} s")

        workers = args.workers or v.default_workers()
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        report = v.validate_paths([path], workers=workers, max_errors=args.cards)
        t_saekit = time.perf_counter() - t0
        cpu_saekit = cpu_seconds() - cpu0
        flagged = sorted({e.line for e in report.errors})
        expected = [i + 1 for i, b in enumerate(broken) if b]
        assert report.n_cards == args.cards, report.n_cards
        assert flagged == expected, "saekit did not flag exactly the broken cards"
        rate = args.cards / t_saekit
        print(f"saekit ({workers} processes): {args.cards:,} cards in {t_saekit:.2f} s = {rate:,.0f} cards/s, "
              f"{size / t_saekit / 1e6:.0f} MB/s; flagged exactly the {len(expected)} broken cards")
        print(f"  CPU time {cpu_saekit:.1f} s (all processes) = {args.cards / cpu_saekit:,.0f} cards per CPU-second; "
              f"load average now {os.getloadavg()[0]:.1f} on {env['cpus_usable']} CPUs")

        single = None
        if args.single_core_cards:
            sub = tmp / "single.jsonl"
            with open(path, "rb") as src, open(sub, "wb") as dst:
                for _, line in zip(range(args.single_core_cards), src):
                    dst.write(line)
            t0 = time.perf_counter()
            v.validate_paths([sub], workers=1, max_errors=args.cards)
            t1 = time.perf_counter() - t0
            single = args.single_core_cards / t1
            print(f"saekit (1 process, {args.single_core_cards:,} cards): {single:,.0f} cards/s")

        # jsonschema on a subset: parse + validate each line, one process
        validator = jsonschema.Draft202012Validator(load_committed("feature_card"))
        lines = []
        with open(path, "rb") as f:
            for _, line in zip(range(args.jsonschema_cards), f):
                lines.append(line)
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        js_verdicts = [validator.is_valid(json.loads(line)) for line in lines]
        t_js = time.perf_counter() - t0
        cpu_js = cpu_seconds() - cpu0
        js_rate = len(lines) / t_js
        # saekit's schema verdict on the same cards (pydantic only)
        ours = [v.check_card_bytes(line)[0] is not None for line in lines]
        same = ours == js_verdicts
        assert same, [i for i, (a, b) in enumerate(zip(ours, js_verdicts)) if a != b]
        assert sum(not x for x in js_verdicts) == sum(broken[: len(lines)])
        print(f"jsonschema Draft202012Validator (1 process, {len(lines):,} cards, extrapolated): "
              f"{js_rate:,.1f} cards/s -> {args.cards / js_rate:,.0f} s for {args.cards:,}; same verdicts: {same}")
        ratio = rate / js_rate
        print(f"saekit / jsonschema: {ratio:,.0f}x wall clock" + (f", {single / js_rate:,.0f}x per process" if single else ""))

        result = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": env,
            "command": " ".join(["python3", "benchmarks/cards_validate.py", *sys.argv[1:]]),
            "cards": args.cards,
            "bytes": size,
            "card": {"top_examples": N_EXAMPLES, "tokens_per_example": N_TOKENS, "histogram_bins": N_BINS,
                     "logit_effects": 2 * N_LOGITS, "token_ids": not args.no_token_ids, "broken_every": 200},
            "saekit": {"processes": workers, "seconds": round(t_saekit, 3), "cards_per_s": round(rate),
                       "cpu_seconds": round(cpu_saekit, 2), "cards_per_cpu_s": round(args.cards / cpu_saekit),
                       "single_process_cards_per_s": round(single) if single else None,
                       "flagged_exactly_the_broken_cards": True},
            "jsonschema": {"processes": 1, "cards_timed": len(lines), "cards_per_s": round(js_rate, 2),
                           "cards_per_cpu_s": round(len(lines) / cpu_js, 2),
                           "extrapolated_seconds": round(args.cards / js_rate, 1), "note": "timed on a subset, extrapolated linearly"},
            "same_verdicts_on_subset": same,
            "ratio_wall": round(ratio, 1),
            "ratio_cpu": round((args.cards / cpu_saekit) / (len(lines) / cpu_js), 1),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
            "ratio_per_process": round(single / js_rate, 1) if single else None,
            "under_10_s": t_saekit < 10.0,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
