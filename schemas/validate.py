"""Validate feature-card files: every card against FeatureCard, then checks across cards.

    report = validate_paths(["feature_cards.jsonl.gz"], d_sae=4608)
    for err in report.errors: print(err)          # file:line: json.path: message

Accepts ``.json`` (one card or a list of cards), ``.jsonl`` and ``.jsonl.gz`` (one card per
line; blank lines are skipped). Each card goes through pydantic-core's JSON parser straight
from its raw bytes (no Python dicts in between; see "the fast path" below), then the checks
of ``consistency_errors``; across cards it reports duplicate latent indices, indices
outside the SAE's width and files whose cards point at different SAEs. Big files are
validated by a pool of worker processes (fork; each reads its own byte range of a .jsonl).

Errors a user caused in a card are collected (``ValidationReport``); a path that cannot be
read as card input at all (missing, not JSON, broken gzip) raises ``InputError``. Files are
read by saekit.schemas.card_files (the one file layer for cards), as raw bytes per card.

Bounds (``saekit.schemas.safeio.Limits``, flags of ``saekit cards validate``): bytes per
file after decompression, bytes per line (or per card of a .json list), JSON nesting.
Files are read in chunks, so memory stays near one line plus one chunk whatever a .gz
expands to; a line or file over its bound stops validation with an InputError naming the
file and line; a card nested too deep is an invalid card (reported with its line).
"""

from __future__ import annotations

import gc
import operator
import os
import stat
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from pydantic import TypeAdapter, ValidationError
from pydantic_core import SchemaValidator, core_schema

from saekit.schemas.card import ActivationExample, FeatureCard, check_citations, consistency_errors
from saekit.schemas.card_files import (
    GZIP_MAGIC,
    expand,
    file_kind,
    json_documents,
    json_path,
    jsonl_lines,
    only_blanks,
    too_long,
)
from saekit.schemas.errors import InputError
from saekit.schemas.safeio import DEFAULT_LIMITS, Limits, exceeds_depth

MAX_ERRORS = 50
# Lines per unit of work sent to a worker process, and the input size (in lines) below
# which a pool is not worth its start-up.
BATCH_LINES = 512
PARALLEL_MIN_LINES = 4 * BATCH_LINES
# Plain .jsonl files this big are split into byte ranges that workers read themselves.
RANGE_BYTES = 8 << 20
PARALLEL_MIN_BYTES = 4 * RANGE_BYTES

_CARD = TypeAdapter(FeatureCard)

# SAE identity of a card, for the cross-card checks: (name, version, sha256).
SAEKey = tuple


@dataclass(frozen=True, order=True)
class CardError:
    """One problem, located as ``file:line: json.path: message``."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path}: {self.message}"


@dataclass
class ValidationReport:
    """The outcome of validating some card files; ``errors`` holds the first ``max_errors``."""

    files: list[str] = field(default_factory=list)
    n_cards: int = 0
    n_errors: int = 0
    errors: list[CardError] = field(default_factory=list)
    max_errors: int = MAX_ERRORS

    @property
    def ok(self) -> bool:
        return self.n_errors == 0

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "files": self.files,
            "n_cards": self.n_cards,
            "n_errors": self.n_errors,
            "truncated": self.n_errors > len(self.errors),
            "errors": [asdict(e) for e in self.errors],
        }


# --- one card ------------------------------------------------------------------------


def _nonfinite(value: object, path: str) -> str | None:
    """Path of the first NaN/Infinity inside a free-form (``Any``) value, else None."""
    if isinstance(value, float):
        return path if value != value or value in (_INF, -_INF) else None
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (float, dict, list)):
                found = _nonfinite(v, f"{path}.{k}")
                if found:
                    return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, (float, dict, list)):
                found = _nonfinite(v, f"{path}[{i}]")
                if found:
                    return found
    return None


_INF = float("inf")


def check_card_bytes(raw: bytes | str) -> tuple[FeatureCard | None, list[tuple[str, str]]]:
    """Validate one card's JSON text: ``(card or None, [(json_path, message), ...])``.

    pydantic-core reads NaN and Infinity (JSON has neither): typed number fields reject
    them; the free-form fields (``extra``, ``downstream[].details``) are checked here.
    """
    try:
        card = _CARD.validate_json(raw)
    except ValidationError as err:
        return None, [(json_path(e["loc"]), e["msg"]) for e in err.errors(include_url=False, include_input=False)]
    errors = consistency_errors(card)
    if card.extra or card.downstream:
        errors += _free_form_errors(card.extra, [d.details for d in card.downstream])
    return card, errors


# --- the fast path ---------------------------------------------------------------------
#
# Most of validate_json's time goes into building Python objects: ~65 model instances and
# ~4,000 list items per realistic card, all dropped right after. The fast validator is the
# same core schema with the model wrappers removed (fields come back as plain dicts, under
# the same strict config) and the token/value/id lists of an example replaced by their
# lengths once validated (all the cross-field checks need), and integers are plain strict
# ints (JsonInt also takes 1.0, at a cost per value). It accepts no card FeatureCard
# rejects; a card it rejects goes through FeatureCard, which decides and words the errors
# (tests/schemas/test_differential.py checks the verdicts and that fast_consistency_errors
# equals consistency_errors).

_LENGTH_FIELDS = ("tokens", "values", "token_ids")


def _fast_validator() -> SchemaValidator | None:
    configs: list[dict] = []

    def lengths(schema: dict) -> dict:
        if schema.get("type") == "list":
            return core_schema.no_info_after_validator_function(len, schema)
        return {**schema, "schema": lengths(schema["schema"])}

    def walk(node):
        if isinstance(node, list):
            return [walk(x) for x in node]
        if not isinstance(node, dict):
            return node
        json_int = (node.get("metadata") or {}).get("saekit_json_int")
        if json_int is not None:
            return core_schema.int_schema(strict=True, **{k: b for k, b in json_int.items() if b is not None})
        if node.get("type") == "model":
            configs.append({k: v for k, v in (node.get("config") or {}).items() if k != "title"})
            inner = walk(node["schema"])
            if node.get("cls") is ActivationExample:
                fields = dict(inner["fields"])
                for name in _LENGTH_FIELDS:
                    fields[name] = {**fields[name], "schema": lengths(fields[name]["schema"])}
                inner = {**inner, "fields": fields}
            return {**inner, "ref": node["ref"]} if "ref" in node else inner
        return {k: walk(v) for k, v in node.items()}

    schema = walk(FeatureCard.__pydantic_core_schema__)
    if not configs or any(c != configs[0] for c in configs):
        return None  # models with different configs: no single config to apply, use the models
    return SchemaValidator(schema, config={**configs[0], "cache_strings": "all"})


_FAST = _fast_validator()


def fast_consistency_errors(d: dict) -> list[tuple[str, str]]:
    """consistency_errors on the fast validator's output (fields dicts, list lengths)."""
    errors: list[tuple[str, str]] = []
    d_sae = d["sae"][0]["d_sae"]
    if d_sae is not None and d["index"] >= d_sae:
        errors.append(("index", f"{d['index']} >= d_sae {d_sae}"))
    stats, logits = d["stats"], d["logit_effects"]
    if stats is not None and stats[0]["histogram"] is not None:
        _fast_histogram("stats.histogram", stats[0]["histogram"][0], errors)
    if logits is not None and logits[0]["histogram"] is not None:
        _fast_histogram("logit_effects.histogram", logits[0]["histogram"][0], errors)
    for i, (ann, _, _) in enumerate(d["annotations"]):
        prov = ann["provenance"]
        if prov is not None and prov[0]["examples"]:
            refs = [(r["where"], r["index"], r["bin"]) for r, _, _ in prov[0]["examples"]]
            check_citations(i, refs, {"top_examples": [e["bin"] for e, _, _ in d["top_examples"]],
                                       "quantile_examples": [e["bin"] for e, _, _ in d["quantile_examples"]]}, errors)
    for i, (ex, _, _) in enumerate(d["top_examples"]):
        n = ex["tokens"]
        if ex["values"] != n:
            errors.append((f"top_examples[{i}].values", f"{ex['values']} values for {n} tokens"))
        if ex["token_ids"] is not None and ex["token_ids"] != n:
            errors.append((f"top_examples[{i}].token_ids", f"{ex['token_ids']} ids for {n} tokens"))
        if ex["max_position"] is not None and ex["max_position"] >= n:
            errors.append((f"top_examples[{i}].max_position", f"{ex['max_position']} outside {n} tokens"))
    return errors


def _fast_histogram(path: str, h: dict, errors: list[tuple[str, str]]) -> None:
    edges = h["bin_edges"]
    if len(edges) != len(h["counts"]) + 1:
        errors.append((path, "needs len(bin_edges) == len(counts) + 1"))
    if not all(map(operator.lt, edges, edges[1:])):
        errors.append((f"{path}.bin_edges", "must be strictly increasing"))


def _free_form_errors(extra: dict, details: list[dict]) -> list[tuple[str, str]]:
    errors = []
    for path, value in [("extra", extra)] + [(f"downstream[{i}].details", d) for i, d in enumerate(details)]:
        bad = _nonfinite(value, path) if value else None
        if bad:
            errors.append((bad, "Input should be a finite number (JSON has no NaN or Infinity)"))
    return errors


def _check_fast(raw: bytes) -> tuple[tuple | None, list[tuple[str, str]]]:
    """``((sae key, index, the card's sae.d_sae) or None, errors)`` for one card, on the fast path."""
    if _FAST is None:
        card, errors = check_card_bytes(raw)
        return (None if card is None else (sae_key(card), card.index, card.sae.d_sae)), errors
    try:
        d = _FAST.validate_json(raw)[0]
    except ValidationError:  # invalid, or valid in a way the fast path does not take: FeatureCard decides
        card, errors = check_card_bytes(raw)
        return (None if card is None else (sae_key(card), card.index, card.sae.d_sae)), errors
    errors = fast_consistency_errors(d)
    if d["extra"] or d["downstream"]:
        errors += _free_form_errors(d["extra"], [x[0]["details"] for x in d["downstream"]])
    sae = d["sae"][0]
    return ((sae["name"], sae["version"], sae["sha256"]), d["index"], sae["d_sae"]), errors


def sae_key(card: FeatureCard) -> SAEKey:
    return (card.sae.name, card.sae.version, card.sae.sha256)


def _describe(key: SAEKey) -> str:
    name, version, sha = key
    out = name + (f"@{version}" if version is not None else "")
    return out + (f" (sha256 {sha[:12]})" if sha else "")


# --- a batch of cards (what a worker process runs) -----------------------------------


def _validate_batch(args: tuple) -> tuple:
    """Validate ``[(line, raw), ...]``: counts, the first ``cap`` errors, per-card metadata."""
    file_idx, items, d_sae, cap, max_depth = args
    errors: list[tuple] = []
    n_errors = 0
    meta: list[tuple] = []  # (line, sae key, index) of every card that passed the schema
    for line, raw in items:
        if exceeds_depth(raw, max_depth):
            found, errs = None, [("$", f"nested deeper than {max_depth} levels (--max-depth)")]
        else:
            found, errs = _check_fast(raw)
        if found is not None:
            key, index, own_d_sae = found
            if d_sae is not None and index >= d_sae:
                errs.append(("index", f"{index} >= d_sae {d_sae} (--d-sae)"))
            if d_sae is not None and own_d_sae is not None and own_d_sae != d_sae:
                errs.append(("sae.d_sae", f"{own_d_sae} != d_sae {d_sae} (--d-sae)"))
            meta.append((line, key, index))
        n_errors += len(errs)
        for path, msg in errs:
            if len(errors) < cap:
                errors.append((file_idx, line, path, msg))
    return len(items), n_errors, errors, meta


# --- batching ------------------------------------------------------------------------


def _batches(items: Iterable[tuple[int, bytes]], size: int) -> Iterator[list[tuple[int, bytes]]]:
    batch: list[tuple[int, bytes]] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def default_workers() -> int:
    """Worker processes for big inputs: the CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- the whole job -------------------------------------------------------------------


def validate_paths(
    paths: Iterable[str | os.PathLike],
    *,
    d_sae: int | None = None,
    max_errors: int = MAX_ERRORS,
    workers: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> ValidationReport:
    """Validate every card in ``paths``; raises InputError for a path that is not card input.

    ``d_sae`` bounds latent indices (on top of each card's own ``sae.d_sae``). ``workers``
    (default: the CPUs available) processes share files of more than a few thousand cards.
    ``limits``: bytes per file and per line, nesting (see the module docstring).
    """
    paths = expand(paths)
    if d_sae is not None and d_sae <= 0:
        raise InputError(f"d_sae must be > 0, got {d_sae}")
    for p in paths:  # fail fast on usage errors, before any work
        if not p.exists():
            raise InputError("no such file", where=str(p))
        file_kind(p)
        mode = p.stat().st_mode
        if not stat.S_ISREG(mode):  # a FIFO or a device would block or never end
            what = "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
            raise InputError(f"is {what}, not a card file", where=str(p))
    workers = default_workers() if workers is None else max(1, workers)
    report = ValidationReport(files=[str(p) for p in paths], max_errors=max_errors)
    errors: list[tuple] = []
    first_seen: dict[tuple, tuple[int, int]] = {}  # (sae key, index) -> (file_idx, line)
    pool = None
    gc_was_enabled = gc.isenabled()
    gc.disable()  # validated cards are dropped at once and hold no cycles: collections only cost time
    try:
        for file_idx, path in enumerate(paths):
            parallel = workers > 1 and _can_fork()
            kind = file_kind(path)
            if parallel and kind == ".jsonl" and path.stat().st_size >= PARALLEL_MIN_BYTES and _plain(path):
                # workers read their own byte ranges: no card bytes pass through this process
                if path.stat().st_size > limits.max_file_bytes:
                    raise InputError(f"more than {limits.max_file_bytes} bytes (--max-file-bytes)", where=str(path))
                pool = pool or _pool(workers)
                results: Iterable[tuple] = _ranges(pool, file_idx, path, d_sae, max_errors, limits)
            else:
                if kind in (".json", ".json.gz"):
                    items: Iterable[tuple[int, bytes]] = json_documents(path, limits)
                else:
                    items = jsonl_lines(path, limits)
                batches = _batches(items, BATCH_LINES)
                head = []
                for b in batches:
                    head.append(b)
                    if len(head) * BATCH_LINES >= PARALLEL_MIN_LINES:
                        break
                jobs = ((file_idx, b, d_sae, max_errors, limits.max_depth) for b in _chain(head, batches))
                if parallel and len(head) * BATCH_LINES >= PARALLEL_MIN_LINES:
                    pool = pool or _pool(workers)
                    results = pool.imap(_validate_batch, jobs)
                else:
                    results = map(_validate_batch, jobs)
            file_key: SAEKey | None = None
            file_key_line = 0
            cards_before = report.n_cards
            for n_cards, n_errors, batch_errors, meta in results:
                report.n_cards += n_cards
                report.n_errors += n_errors
                errors.extend(batch_errors)
                for line, key, index in meta:
                    if file_key is None:
                        file_key, file_key_line = key, line
                    elif key != file_key:
                        report.n_errors += 1
                        errors.append((file_idx, line, "sae", f"card is for SAE {_describe(key)} but line "
                                       f"{file_key_line} of this file is for {_describe(file_key)}"))
                    seen = first_seen.setdefault((key, index), (file_idx, line))
                    if seen != (file_idx, line):
                        where = f"line {seen[1]}" if seen[0] == file_idx else f"{paths[seen[0]]}:{seen[1]}"
                        report.n_errors += 1
                        errors.append((file_idx, line, "index", f"duplicate latent index {index} (first at {where})"))
                if len(errors) > 4 * max_errors:  # keep memory bounded on hopeless files
                    errors = sorted(errors, key=_where)[:max_errors]
            if report.n_cards == cards_before and path.stat().st_size > limits.max_line_bytes:
                raise only_blanks(path, path.stat().st_size, limits)  # the byte-range workers' case
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if gc_was_enabled:
            gc.enable()
    # stable sort: errors of one line keep the order they were found in
    report.errors = [CardError(str(paths[f]), line, p, m) for f, line, p, m in sorted(errors, key=_where)[:max_errors]]
    return report


def _where(err: tuple) -> tuple[int, int]:
    return err[0], err[1]


def _pool(workers: int):
    import multiprocessing

    return multiprocessing.get_context("fork").Pool(workers)


def _plain(path: Path) -> bool:
    """Not gzip inside (a plain .jsonl that is gzip goes the streaming way, which refuses it)."""
    try:
        with open(path, "rb") as f:
            return f.read(2) != GZIP_MAGIC
    except OSError:
        return False


def _validate_range(args: tuple) -> tuple:
    """Validate the lines of ``path`` that start in bytes [start, end); line numbers local.
    The last element is the local number of the first line over max_line_bytes (0: none)."""
    file_idx, path, start, end, d_sae, cap, max_line, max_depth = args
    with open(path, "rb") as f:
        if start:
            f.seek(start - 1)
            skipped = f.readline(max_line + 2)  # the line holding byte start-1 belongs to the range before
            if not skipped.endswith(b"\n") and len(skipped) == max_line + 2:
                return (0, 0, 0, [], [], 0)  # inside an over-long line: the range where it starts reports it
        pos = f.tell()
        data = f.read(max(0, end - pos)) if pos < end else b""
        if data and not data.endswith(b"\n"):
            data += f.readline(max_line + 1)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for n, raw in enumerate(lines, start=1):
        if len(raw) > max_line:
            return (0, 0, 0, [], [], n)
    items = [(n, raw) for n, raw in enumerate(lines, start=1) if raw.strip()]
    return (len(lines), *_validate_batch((file_idx, items, d_sae, cap, max_depth)), 0)


def _ranges(pool, file_idx: int, path: Path, d_sae: int | None, cap: int, limits: Limits) -> Iterator[tuple]:
    """Results of byte-range jobs over ``path``, renumbered to the file's line numbers."""
    size = path.stat().st_size
    jobs = [(file_idx, str(path), a, min(a + RANGE_BYTES, size), d_sae, cap, limits.max_line_bytes, limits.max_depth)
            for a in range(0, size, RANGE_BYTES)]
    offset = 0
    for n_lines, n_cards, n_errors, errors, meta, long_line in pool.imap(_validate_range, jobs):
        if long_line:
            raise too_long(path, offset + long_line, limits)
        yield (
            n_cards,
            n_errors,
            [(f, line + offset, p, m) for f, line, p, m in errors],
            [(line + offset, key, index) for line, key, index in meta],
        )
        offset += n_lines


def _chain(head: list, rest: Iterator) -> Iterator:
    yield from head
    yield from rest


def _can_fork() -> bool:
    # fork is what makes the pool cheap (no re-import per worker); only where it is safe.
    return sys.platform.startswith("linux")
