"""The file layer for feature cards: the one place saekit reads and writes card files.

    from saekit.schemas.card_files import read_cards, write_cards
    cards = read_cards("feature_cards.jsonl.gz")         # or a .json, a folder of shards, a list
    write_cards(cards, "out/feature_cards.jsonl")        # .jsonl, .jsonl.gz (gzip mtime 0), .json

Formats: ``.json`` (one document, or a list of documents), ``.jsonl`` and ``.jsonl.gz`` (one
document per line; blank lines are skipped), ``.json.gz``, and a folder, which stands for
the card files under it (sorted by relative path; a release's ``feature_cards/`` shards).

Layers, lowest first, each usable alone:

- bytes: :func:`jsonl_lines` (streamed lines) and :func:`json_documents` (a .json file's
  values, streamed), both within :class:`~saekit.schemas.safeio.Limits` (bytes per file
  after decompression, bytes per line or card, nesting; blanks count like a card) and
  refusing a ``.gz`` that is not gzip, a plain file that is, FIFOs and devices;
- raw documents: :func:`raw_documents` / :func:`iter_documents` give ``(line, bytes)`` of
  each document without parsing it (the fast validator in ``saekit.schemas.validate`` takes
  them as they are);
- parsed: :func:`read_documents` (JSON values), :func:`read_rows` (JSON objects, e.g.
  Neuronpedia export rows), :func:`read_cards` (FeatureCards);
- writing: :func:`write_lines`, :func:`write_cards`, :func:`write_rows`, and
  :func:`write_card_shards`, the release bundle's split into gzip shards.

Files: a path the caller names is taken as named; files found in a folder must be regular
files inside it (no symlinks or hard links: saekit.schemas.safeio.list_files). Every error
is an ``InputError`` (or ``UnsafePathError``) of one line naming the file and, where there
is one, the line. Writes go to a temporary file renamed into place (a symlink at the
destination is replaced, never written through).

Converting other tools' formats (Neuronpedia, OpenAI sae-viewer) is saekit.schemas.convert,
which reads files only through this module.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import re
import stat
import sys
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from saekit.schemas import safeio
from saekit.schemas.card import FeatureCard
from saekit.schemas.errors import InputError
from saekit.schemas.safeio import DEFAULT_LIMITS, Limits, exceeds_depth, load_json

SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".json.gz")
CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
_LINE = re.compile(rb"[^\n]+")

# What a bundle writes: gzip shards of the cards file (releases.bundle sizes them).
SHARD_FOLDER = "feature_cards"
CARDS_FILE = "feature_cards.jsonl"


# --- paths ---------------------------------------------------------------------------


def file_kind(path: Path) -> str:
    """The card-file suffix of ``path`` (one of SUFFIXES); InputError for any other."""
    name = Path(path).name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise InputError(f"unsupported card file type (expected one of {', '.join(SUFFIXES)})", where=str(path))


def expand(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; a folder stands for the card files under it, at any depth, sorted by
    path (folder by folder, as ``sorted(Path.rglob(...))``), each a regular file inside it
    (safeio.list_files refuses links, devices, hard links)."""
    out: list[Path] = []
    given = [Path(p) for p in paths]
    if not given:
        raise InputError("no card files given")
    for p in given:
        if p.is_dir():
            rels = [rel for rel in safeio.list_files(p) if rel.lower().endswith(SUFFIXES)]
            found = [p / rel for rel in sorted(rels, key=lambda rel: rel.split("/"))]  # Path order: by parts
            if not found:
                raise InputError(f"no card files ({', '.join(SUFFIXES)}) in this folder", where=str(p))
            out += found
        else:
            out.append(p)
    return out


def open_error(path: Path, err: OSError) -> InputError:
    """One line for an OSError met opening or reading ``path``."""
    if isinstance(err, FileNotFoundError):
        return InputError("no such file", where=str(path))
    if isinstance(err, IsADirectoryError) or path.is_dir():
        return InputError("is a directory, not a card file", where=str(path))
    return InputError(f"cannot read: {err.strerror or err}", where=str(path))


# --- bytes, bounded ------------------------------------------------------------------


def _chunks(path: Path, limits: Limits) -> Iterator[bytes]:
    """The file's bytes (decompressed for .gz) in chunks of at most CHUNK, bounded by
    ``limits.max_file_bytes``; a .gz that is not gzip, or a plain file that is, is refused."""
    path = Path(path)
    gz = path.name.lower().endswith(".gz")
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the open, a device never ends
            raise InputError("not a regular file", where=str(path))
        raw = open(path, "rb")
    except OSError as err:
        raise open_error(path, err) from None
    with raw:
        try:
            magic = raw.read(2)
        except OSError as err:
            raise open_error(path, err) from None
        if gz and magic != GZIP_MAGIC:
            raise InputError("not a valid gzip file (no gzip header, though the name ends in .gz)", where=str(path))
        if not gz and magic == GZIP_MAGIC:
            raise InputError("is gzip-compressed; name it .gz", where=str(path))
        raw.seek(0)
        f = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
        total = 0
        while True:
            try:
                chunk = f.read(CHUNK)
            except (OSError, EOFError, zlib.error) as err:
                if gz:
                    raise InputError(f"not a valid gzip file ({err})", where=str(path)) from None
                raise open_error(path, err) from None
            if not chunk:
                return
            total += len(chunk)
            if total > limits.max_file_bytes:
                what = "decompressed bytes" if gz else "bytes"
                raise InputError(f"more than {limits.max_file_bytes} {what} (--max-file-bytes)", where=str(path))
            yield chunk


def too_long(path: Path, line: int, limits: Limits) -> InputError:
    return InputError(f"line longer than {limits.max_line_bytes} bytes (--max-line-bytes)", where=f"{path}:{line}")


def only_blanks(path: Path, total: int, limits: Limits) -> InputError:
    """A card file of nothing but blanks past ``max_line_bytes`` is a bomb's filler: refused,
    never "ok: 0 cards" (blanks count like a card, see json_documents)."""
    return InputError(f"no card in {total} bytes of blanks (more than {limits.max_line_bytes}, --max-line-bytes)",
                      where=str(path))


def jsonl_lines(path: Path, limits: Limits = DEFAULT_LIMITS) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines of a .jsonl / .jsonl.gz with their numbers (no newline), streamed in
    chunks within ``limits``: memory stays near one line plus one chunk, and runs of blank
    lines cost no Python work per line. A file of blanks only is refused (only_blanks)."""
    path = Path(path)
    n = 0  # lines completed so far
    partial: list[bytes] = []
    partial_len = 0
    total, found = 0, False
    for chunk in _chunks(path, limits):
        total += len(chunk)
        start = 0
        if partial:
            nl = chunk.find(b"\n")
            if nl < 0:
                partial.append(chunk)
                partial_len += len(chunk)
                if partial_len > limits.max_line_bytes:
                    raise too_long(path, n + 1, limits)
                continue
            line = b"".join(partial) + chunk[:nl]
            partial, partial_len = [], 0
            n += 1
            if len(line) > limits.max_line_bytes:
                raise too_long(path, n, limits)
            if line.strip():
                found = True
                yield n, line
            start = nl + 1
        last = chunk.rfind(b"\n")
        end = last + 1 if last >= start else start
        body = chunk[start:end] if (start or end < len(chunk)) else chunk
        if body and body.strip():
            pos = 0
            for m in _LINE.finditer(body):
                n += body.count(b"\n", pos, m.start())
                pos = m.start()
                line = m.group()
                if len(line) > limits.max_line_bytes:
                    raise too_long(path, n + 1, limits)
                if line.strip():
                    found = True
                    yield n + 1, line
            n += body.count(b"\n", pos)
        elif body:
            n += body.count(b"\n")
        if end < len(chunk):
            partial.append(chunk[end:])
            partial_len = len(chunk) - end
            if partial_len > limits.max_line_bytes:
                raise too_long(path, n + 1, limits)
    if partial:
        line = b"".join(partial)
        if line.strip():
            found = True
            yield n + 1, line
    if not found and total > limits.max_line_bytes:
        raise only_blanks(path, total, limits)


_NOT_WS = re.compile(r"[^ \t\r\n]")
_DECODER = json.JSONDecoder()  # accepts NaN here; each card's check rejects it with a location


class _JsonText:
    """A .json file's text decoded chunk by chunk (UTF-8, incrementally): ``buf`` holds only
    what is not consumed yet, so memory stays near one card plus one chunk, and the line and
    column of ``buf[0]`` are kept for messages."""

    def __init__(self, path: Path, limits: Limits):
        self.path, self.limits = path, limits
        self._chunks = _chunks(path, limits)
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self.bytes_read = 0  # bytes given to the decoder so far (decompressed)
        self.eof = False
        self.buf, self.pos = "", 0  # the text not dropped yet; the read position in it
        self._mark, self._line, self._col = 0, 1, 0  # buf[_mark] is on _line; buf[0] has _col characters before it

    def line_at(self, i: int) -> int:
        """The 1-based line of ``buf[i]`` (``i`` never moves backwards)."""
        if i >= self._mark:
            self._line += self.buf.count("\n", self._mark, i)
        else:
            self._line -= self.buf.count("\n", i, self._mark)
        self._mark = i
        return self._line

    def more(self, at_least: int = 1) -> bool:
        """Drop the consumed text, then append at least ``at_least`` characters (fewer at the
        end of the file); False when nothing was added."""
        self.line_at(self.pos)
        nl = self.buf.rfind("\n", 0, self.pos)
        self._col = self.pos - nl - 1 if nl >= 0 else self._col + self.pos
        pieces, added = [self.buf[self.pos:]], 0
        while added < at_least and not self.eof:
            chunk = next(self._chunks, None)
            pending = len(self._utf8.getstate()[0])
            try:
                text = self._utf8.decode(chunk or b"", final=chunk is None)
            except UnicodeDecodeError as err:
                raise InputError(f"not UTF-8 text (byte {self.bytes_read - pending + err.start})",
                                 where=str(self.path)) from None
            self.bytes_read += len(chunk or b"")
            self.eof = chunk is None
            pieces.append(text)
            added += len(text)
        self.buf, self.pos, self._mark = "".join(pieces), 0, 0
        return added > 0

    def where(self, i: int) -> str:
        nl = self.buf.rfind("\n", 0, i)
        return f"line {self.line_at(i)} column {i - nl if nl >= 0 else self._col + i + 1}"

    def not_json(self, msg: str, i: int) -> InputError:
        msg = msg.removesuffix(" at")  # json's "Unterminated string starting at"
        return InputError(f"not valid JSON: {msg} at {self.where(i)}", where=str(self.path))

    def next_char(self) -> str | None:
        """The next character that is not whitespace (None at the end of the file); a run of
        whitespace counts like a card: at most ``max_line_bytes`` (a gzip of blanks is a bomb)."""
        run = 0
        while True:
            m = _NOT_WS.search(self.buf, self.pos)
            run += (m.start() if m else len(self.buf)) - self.pos
            if run > self.limits.max_line_bytes:
                raise InputError(f"more than {self.limits.max_line_bytes} bytes of whitespace in a row "
                                 "(--max-line-bytes)", where=f"{self.path}:{self.line_at(self.pos)}")
            if m:
                self.pos = m.start()
                return self.buf[self.pos]
            self.pos = len(self.buf)
            if not self.more(CHUNK):
                return None

    def value(self) -> tuple[int, bytes]:
        """The JSON value at ``pos`` (its line, its bytes), unparsed, within the card bounds."""
        limit = self.limits.max_line_bytes
        while True:
            try:
                _, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                # an error well before the end of the text read so far is in the file, not
                # in a chunk boundary (an unterminated string reports where it starts)
                if self.eof or (err.pos + 16 < len(self.buf) and not err.msg.startswith("Unterminated string")):
                    raise self.not_json(err.msg, err.pos) from None
            except RecursionError:
                raise InputError(f"JSON nested deeper than {self.limits.max_depth} levels (--max-depth)",
                                 where=f"{self.path}:{self.line_at(self.pos)}") from None
            else:
                if end + 16 < len(self.buf) or self.eof:  # "1e" may go on as "1e5" in the next chunk
                    break
            if len(self.buf) - self.pos > limit:
                raise InputError(f"card longer than {limit} bytes (--max-line-bytes)",
                                 where=f"{self.path}:{self.line_at(self.pos)}")
            self.more(max(CHUNK, len(self.buf) - self.pos))  # doubling: each retry parses O(card) again
        line = self.line_at(self.pos)
        raw = self.buf[self.pos:end].encode("utf-8", "surrogatepass")
        if len(raw) > limit:
            raise InputError(f"card longer than {limit} bytes (--max-line-bytes)", where=f"{self.path}:{line}")
        if exceeds_depth(raw, self.limits.max_depth):
            raise InputError(f"JSON nested deeper than {self.limits.max_depth} levels (--max-depth)",
                             where=f"{self.path}:{line}")
        self.pos = end
        return line, raw

    def end(self) -> None:
        """Only whitespace may follow the document."""
        if self.next_char() is not None:
            raise self.not_json("extra data", self.pos)


def json_documents(path: Path, limits: Limits = DEFAULT_LIMITS) -> Iterator[tuple[int, bytes]]:
    """The documents of a ``.json`` / ``.json.gz`` file (one object, or each item of a list)
    with the line each starts on, unparsed, streamed under the bounds JSONL has: bytes
    (decompressed), bytes per card, nesting, and whitespace runs (counted like a card, so a
    gzip of blanks is refused early instead of ending as "0 cards")."""
    text = _JsonText(Path(path), limits)
    first = text.next_char()
    if first is None:
        raise InputError("empty file, expected a card or a list of cards", where=str(path))
    if first != "[":
        doc = text.value()
        if first != "{":
            raise InputError("expected a card object or a list of cards", where=str(path))
        text.end()
        yield doc
        return
    text.pos += 1
    if text.next_char() == "]":
        text.pos += 1
        text.end()
        if text.bytes_read > limits.max_line_bytes:
            raise only_blanks(Path(path), text.bytes_read, limits)
        return
    while True:
        yield text.value()
        c = text.next_char()
        if c == ",":
            text.pos += 1
            text.next_char()
            continue
        if c == "]":
            text.pos += 1
            text.end()
            return
        raise text.not_json("expected ',' or ']'", text.pos)


# --- documents -----------------------------------------------------------------------


def raw_documents(path: Path, limits: Limits = DEFAULT_LIMITS) -> Iterable[tuple[int, bytes]]:
    """``(line, raw JSON bytes)`` of every document of one file, by its kind (file_kind):
    .jsonl / .jsonl.gz streamed line by line, .json / .json.gz value by value (json_documents)."""
    path = Path(path)
    if file_kind(path) in (".json", ".json.gz"):
        return json_documents(path, limits)
    return jsonl_lines(path, limits)


def iter_documents(
    paths: str | os.PathLike | Iterable[str | os.PathLike], limits: Limits = DEFAULT_LIMITS
) -> Iterator[tuple[Path, int, bytes]]:
    """``(file, line, raw JSON bytes)`` of every document of ``paths`` (files and folders, see
    :func:`expand`), in order."""
    for path in expand(_as_list(paths)):
        for n, raw in raw_documents(path, limits):
            yield path, n, raw


def read_documents(path: Path, limits: Limits = DEFAULT_LIMITS) -> Iterator[tuple[int, Any]]:
    """``(line, parsed document)`` for every document of one card file; NaN and Infinity are
    refused, nesting is bounded by ``limits.max_depth``."""
    path = Path(path)
    for n, raw in raw_documents(path, limits):
        yield n, load_json(raw, where=f"{path}:{n}", limits=limits, allow_nan=False)


def read_rows(path: str | os.PathLike, limits: Limits = DEFAULT_LIMITS) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl, .jsonl.gz or .json (an object or a list) file: plain
    rows, not cards (a Neuronpedia export's rows, a cards file read as dicts)."""
    path = Path(path)
    rows = []
    for n, doc in read_documents(path, limits):
        if not isinstance(doc, dict):
            raise InputError("expected a JSON object per row", where=f"{path}:{n}")
        rows.append(doc)
    return rows


# --- cards ---------------------------------------------------------------------------

_CARD = TypeAdapter(FeatureCard)


def json_path(loc: Sequence[str | int]) -> str:
    """``('top_examples', 3, 'values')`` -> ``top_examples[3].values``; the root is ``$``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "$"


def parse_card(raw: bytes | str, *, where: str, limits: Limits = DEFAULT_LIMITS) -> FeatureCard:
    """One card from its JSON text; InputError ``where: invalid card: json.path: message``."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if exceeds_depth(data, limits.max_depth):
        raise InputError(f"JSON nested deeper than {limits.max_depth} levels (--max-depth)", where=where)
    try:
        return _CARD.validate_json(data)
    except ValidationError as err:
        e = err.errors(include_url=False, include_input=False)[0]
        if e["type"] == "json_invalid":
            raise InputError(f"not JSON: {e['msg']}", where=where) from None
        raise InputError(f"invalid card: {json_path(e['loc'])}: {e['msg']}", where=where) from None


def read_cards(paths: str | os.PathLike | Iterable[str | os.PathLike], limits: Limits = DEFAULT_LIMITS) -> list[FeatureCard]:
    """The saekit cards of a file, a folder of card files (a release's shards), or a list of
    them, in file and line order. Schema only: ``saekit cards validate`` checks the rest."""
    return [parse_card(raw, where=f"{path}:{n}", limits=limits) for path, n, raw in iter_documents(paths, limits)]


# --- writing -------------------------------------------------------------------------


def _write(out: Path, data: bytes | Iterable[bytes]) -> Path:
    """``data`` (bytes, or pieces of it, streamed) to ``out`` with saekit's one writer
    (safeio.write_bytes: a temporary file renamed into place; a symlink refused)."""
    return safeio.write_bytes(out, data)


def _batched_lines(lines: Iterable[str], size: int = 256) -> Iterator[bytes]:
    batch: list[str] = []
    for x in lines:
        batch.append(x)
        if len(batch) >= size:
            yield "".join(y + "\n" for y in batch).encode("utf-8")
            batch = []
    if batch:
        yield "".join(y + "\n" for y in batch).encode("utf-8")


def write_lines(out: str | os.PathLike, lines: Iterable[str]) -> Path | None:
    """JSON lines to ``out``: .jsonl (streamed), .jsonl.gz (gzip without a timestamp: the same
    bytes every time), .json (one document, or a list of them, indented), or ``-`` (stdout)."""
    to_stdout = str(out) == "-"
    out = Path(out)
    if out.name.endswith(".json") and not to_stdout:
        docs = [json.loads(x) for x in lines]
        text = json.dumps(docs[0] if len(docs) == 1 else docs, indent=2, ensure_ascii=False) + "\n"
        return _write(out, text.encode("utf-8"))
    if to_stdout:
        for piece in _batched_lines(lines):
            sys.stdout.write(piece.decode("utf-8"))
        return None
    if out.name.endswith(".gz"):
        return _write(out, gzip.compress(b"".join(_batched_lines(lines)), mtime=0))
    return _write(out, _batched_lines(lines))


def card_line(card: FeatureCard) -> str:
    """A card as saekit writes it: one JSON line, unset fields left out."""
    return card.model_dump_json(exclude_none=True)


def write_cards(cards: Iterable[FeatureCard], path: str | os.PathLike, *, sort: bool = True) -> Path:
    """Cards to ``path`` (.jsonl, .jsonl.gz, .json; see :func:`write_lines`), in index order
    unless ``sort`` is False (then as given)."""
    cards = sorted(cards, key=lambda c: c.index) if sort else list(cards)
    write_lines(path, (card_line(c) for c in cards))
    return Path(path)


def write_rows(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> Path:
    """JSON objects, one per line, to a .jsonl or .jsonl.gz file (gzip without a timestamp)."""
    path = Path(path)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    return _write(path, gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)


def write_card_shards(
    src: str | os.PathLike, dest: str | os.PathLike, *, per_shard: int, max_bytes: int,
    limits: Limits = DEFAULT_LIMITS,
) -> list[str]:
    """A cards file (.jsonl, a regular file: safeio's rule) into folder ``dest``: copied as
    ``feature_cards.jsonl`` when it holds at most ``per_shard`` cards and ``max_bytes`` bytes,
    else split into ``feature_cards/part-NNNNN-of-MMMMM.jsonl.gz`` shards of at most
    ``per_shard`` lines and ``max_bytes`` uncompressed bytes (blank lines dropped; gzip level
    6 without a timestamp: the same bytes every time). Returns the written paths relative to
    ``dest``."""
    src, dest = Path(src), Path(dest)
    safeio.regular_file(src.parent, src.name)
    if src.stat().st_size <= max_bytes and sum(1 for _ in jsonl_lines(src, limits)) <= per_shard:
        safeio.copy_file(src.parent, src.name, dest / CARDS_FILE)
        return [CARDS_FILE]
    groups: list[list[bytes]] = [[]]
    size = 0
    for _, line in jsonl_lines(src, limits):
        ln = line + b"\n"
        if groups[-1] and (len(groups[-1]) == per_shard or size + len(ln) > max_bytes):
            groups.append([])
            size = 0
        groups[-1].append(ln)
        size += len(ln)
    (dest / SHARD_FOLDER).mkdir()
    names = [f"{SHARD_FOLDER}/part-{i:05d}-of-{len(groups):05d}.jsonl.gz" for i in range(len(groups))]
    for name, lines in zip(names, groups):
        _write(dest / name, gzip.compress(b"".join(lines), compresslevel=6, mtime=0))
    return names


def _as_list(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str | os.PathLike]:
    if isinstance(paths, (str, os.PathLike)):
        return [paths]
    return list(paths)
