"""Bounded input handling: every compressed or nested input saekit reads ends in one line
and exit 1 or 2, in bounded memory and time, measured on the real CLI in a child process
(peak RSS from getrusage(RUSAGE_CHILDREN) of a wrapper that runs only that child)."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from pathlib import Path

import pytest

from saekit.schemas import ArtifactFormatError
from sec_helpers import log_measure, saekit
from tests.registry.conftest import make_artifact
from tests.schemas.card_helpers import broken_card_files, make_card

# Peak RSS allowed for a bomb: the interpreter with pydantic and saekit's schemas is ~100 MiB;
# one bounded line (16 MiB) and one 1 MiB chunk on top. The unbounded reader peaked at 2.15 GB.
RSS_BOUND_MIB = 400


def _gzip_stream(path: Path, block: bytes, total: int) -> int:
    """Write ``total`` bytes of ``block`` repeated, gzip-compressed, streaming; returns the size."""
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as f:
        left = total
        while left:
            n = min(left, len(block))
            f.write(co.compress(block[:n]))
            left -= n
        f.write(co.flush())
    return path.stat().st_size


@pytest.fixture(scope="module")
def zeros_bomb(tmp_path_factory) -> Path:
    """~1 MB of gzip that expands to 1 GiB of zero bytes on one line (the reported bomb)."""
    path = tmp_path_factory.mktemp("bombs") / "zeros.jsonl.gz"
    size = _gzip_stream(path, b"\0" * (1 << 20), 1 << 30)
    assert size < 2 << 20
    return path


@pytest.fixture(scope="module")
def newline_bomb(tmp_path_factory) -> Path:
    """gzip that expands to 1 GiB of newlines (the reported 5-minute hang)."""
    path = tmp_path_factory.mktemp("bombs") / "newlines.jsonl.gz"
    _gzip_stream(path, b"\n" * (1 << 20), 1 << 30)
    return path


def test_gzip_zeros_bomb_bounded(zeros_bomb, tmp_path):
    r = saekit("cards", "validate", str(zeros_bomb), home=tmp_path / "home")
    line = r.one_line_error(2)
    log_measure("cards validate 1 GiB-of-zeros .jsonl.gz", r)
    assert f"{zeros_bomb}:1: line longer than {16 << 20} bytes" in line
    assert r.peak_mib < RSS_BOUND_MIB
    # a smaller bound, given as a flag, stops sooner
    r = saekit("cards", "validate", str(zeros_bomb), "--max-line-bytes", "1000", home=tmp_path / "home")
    assert "line longer than 1000 bytes" in r.one_line_error(2)


def test_gzip_newline_bomb_bounded(newline_bomb, tmp_path):
    r = saekit("cards", "validate", str(newline_bomb), "--max-file-bytes", str(256 << 20), home=tmp_path / "home")
    line = r.one_line_error(2)
    log_measure("cards validate 1 GiB-of-newlines .jsonl.gz, --max-file-bytes 256 MiB", r)
    assert f"more than {256 << 20} decompressed bytes" in line
    assert r.peak_mib < RSS_BOUND_MIB
    # the whole GiB under the default bound: blank lines cost no Python work each, and a file
    # of nothing but blanks is refused, not "ok: 0 cards" (issue 25: a bomb's empty result)
    r = saekit("cards", "validate", str(newline_bomb), home=tmp_path / "home")
    log_measure("cards validate 1 GiB-of-newlines .jsonl.gz, default bounds", r)
    assert f"no card in {1 << 30} bytes of blanks" in r.one_line_error(2) and "ok" not in r.out
    assert r.peak_mib < RSS_BOUND_MIB and r.seconds < 120


@pytest.mark.parametrize(
    "name,content,message",
    [
        *broken_card_files(),
        ("deep.json", b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64"),
        ("deep.json.gz", gzip.compress(b"[" * 100_000 + b"]" * 100_000), "nested deeper than 64"),
    ],
    ids=["empty-gz", "text-as-gz", "gz-as-jsonl", "truncated-gz", "not-utf8", "deep-json", "deep-json-gz"],
)
def test_card_files_that_are_not_what_they_say(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    r = saekit("cards", "validate", str(path), home=tmp_path / "home")
    assert message in r.one_line_error(2)


# .json / .json.gz card files are streamed like JSONL (issue 25, item 2): before, a 510 KB
# .json.gz of 512 MiB of blanks was read whole (1,059 MiB, 32 s here) and ended "ok: 0 cards".
_WS = 64 << 20  # 64 MiB of blanks: four times the default --max-line-bytes, ~64 KB of gzip


def _blanks_around(path: Path, head: bytes, block: bytes, tail: bytes) -> Path:
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as f:
        f.write(co.compress(head))
        for _ in range(_WS // len(block)):
            f.write(co.compress(block))
        f.write(co.compress(tail) + co.flush())
    return path


@pytest.mark.parametrize(
    "name,head,tail",
    [
        ("list", b"[", b"]"),
        ("blank", b"", b""),
        ("before-empty-list", b"", b"[]"),
        ("between-cards", b"[" + json.dumps(make_card(0)).encode() + b",", json.dumps(make_card(1)).encode() + b"]"),
        ("after-one-card", json.dumps(make_card(0)).encode(), b""),
    ],
)
def test_json_gz_whitespace_bomb_is_refused_early(tmp_path, name, head, tail):
    path = _blanks_around(tmp_path / f"{name}.json.gz", head, b" \n\t\r" * (1 << 18), tail)
    assert path.stat().st_size < 1 << 20
    r = saekit("cards", "validate", str(path), home=tmp_path / "home")
    line = r.one_line_error(2)
    log_measure(f"cards validate .json.gz, 64 MiB of blanks ({name})", r)
    assert f"more than {16 << 20} bytes of whitespace in a row (--max-line-bytes)" in line and "ok" not in r.out
    assert r.peak_mib < RSS_BOUND_MIB and r.seconds < 20
    # the bound is --max-line-bytes: a smaller one stops sooner
    r = saekit("cards", "validate", str(path), "--max-line-bytes", "1000", home=tmp_path / "home")
    assert "more than 1000 bytes of whitespace in a row" in r.one_line_error(2)


def test_every_card_reader_streams_json(tmp_path):
    """convert, read_cards and read_rows (verify, bundle, carry, annotate read through them)
    refuse the same bomb the same way, in bounded memory."""
    from saekit.schemas import InputError, card_files

    path = _blanks_around(tmp_path / "bomb.json.gz", b"[", b" " * (1 << 20), b"]")
    r = saekit("cards", "convert", str(path), "--out", str(tmp_path / "out.jsonl"), home=tmp_path / "home")
    assert "bytes of whitespace in a row" in r.one_line_error(2) and not (tmp_path / "out.jsonl").exists()
    assert r.peak_mib < RSS_BOUND_MIB
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(make_card(0)) + "\n")
    for args in (("cards", "annotate", str(path), "--annotations", str(good)),
                 ("cards", "annotate", str(good), "--annotations", str(path))):
        r = saekit(*args, home=tmp_path / "home")
        assert "bytes of whitespace in a row" in r.one_line_error(2) and r.peak_mib < RSS_BOUND_MIB
    for read in (card_files.read_cards, card_files.read_rows, lambda p: list(card_files.iter_documents(p))):
        with pytest.raises(InputError, match="bytes of whitespace in a row"):
            read(path)


def test_json_card_bounds_hold_while_streaming(tmp_path):
    """An unterminated 64 MiB card stops at --max-line-bytes; blanks and cards past
    --max-file-bytes stop there; both in bounded memory."""
    endless = _blanks_around(tmp_path / "endless.json.gz", b'[{"pad": "', b"x" * (1 << 20), b"")
    r = saekit("cards", "validate", str(endless), home=tmp_path / "home")
    assert f"{endless}:1: card longer than {16 << 20} bytes" in r.one_line_error(2)
    assert r.peak_mib < RSS_BOUND_MIB
    many = _blanks_around(tmp_path / "many.json.gz", b"[", b" " * ((1 << 20) - 2) + b"0,", b"0]")
    r = saekit("cards", "validate", str(many), "--max-file-bytes", str(8 << 20), home=tmp_path / "home")
    assert f"more than {8 << 20} decompressed bytes" in r.one_line_error(2)
    assert r.peak_mib < RSS_BOUND_MIB


def test_a_card_file_of_blanks_only_is_refused_by_every_path(tmp_path, monkeypatch):
    """Zero cards from more than --max-line-bytes of blanks is an error whichever reader runs:
    .json (blanks split in runs that are each allowed), streamed .jsonl, byte-range workers;
    an empty list or a few blank lines stay "0 cards"."""
    from saekit.schemas import InputError, safeio
    from saekit.schemas import validate as v

    limits = safeio.Limits(max_line_bytes=1000)
    (tmp_path / "split.json").write_text("[" + " " * 900 + "]" + "\n" * 900)
    (tmp_path / "blank.jsonl").write_text("\n \n" * 1000)
    for name in ("split.json", "blank.jsonl"):
        with pytest.raises(InputError, match="no card in .* bytes of blanks"):
            v.validate_paths([tmp_path / name], workers=1, limits=limits)
    monkeypatch.setattr(v, "RANGE_BYTES", 1024)
    monkeypatch.setattr(v, "PARALLEL_MIN_BYTES", 2048)
    with pytest.raises(InputError, match="no card in 3000 bytes of blanks"):
        v.validate_paths([tmp_path / "blank.jsonl"], workers=2, limits=limits)
    (tmp_path / "empty.json").write_text("[]\n")
    (tmp_path / "few.jsonl").write_text("\n\n")
    assert v.validate_paths([tmp_path / "empty.json", tmp_path / "few.jsonl"], limits=limits).n_cards == 0


def test_deep_card_line_is_an_invalid_card(tmp_path):
    path = tmp_path / "deep.jsonl"
    card = make_card(0)
    card["extra"] = {"x": json.loads("[" * 70 + "]" * 70)}
    path.write_text(json.dumps(make_card(1)) + "\n" + json.dumps(card) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    r = saekit("cards", "validate", str(path), home=tmp_path / "home")
    assert r.rc == 1 and "Traceback" not in r.err
    assert f"{path}:2: $: nested deeper than 64 levels" in r.out
    assert f"{path}:3: $: nested deeper than 64 levels" in r.out
    assert r.err.strip().startswith("invalid: 2 errors") and r.err.count("\n") == 1
    r = saekit("cards", "validate", str(path), "--max-depth", "100", home=tmp_path / "home")
    assert r.rc == 1 and f"{path}:2:" not in r.out and f"{path}:3: $: nested deeper than 100" in r.out


def test_cards_convert_is_bounded_too(zeros_bomb, tmp_path):
    r = saekit("cards", "convert", str(zeros_bomb), "--out", str(tmp_path / "out.jsonl"), home=tmp_path / "home")
    assert "line longer than" in r.one_line_error(2)
    assert r.peak_mib < RSS_BOUND_MIB
    deep = tmp_path / "deep.json"
    deep.write_bytes(b"{\"a\":" * 100_000 + b"1" + b"}" * 100_000)
    r = saekit("cards", "convert", str(deep), "--out", str(tmp_path / "out.jsonl"), home=tmp_path / "home")
    assert "nested deeper" in r.one_line_error(2)


# --- safetensors headers ------------------------------------------------------------------


def _safetensors(header: dict | bytes, buffer: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + buffer


def _weights(art: Path) -> tuple[dict, bytes]:
    data = (art / "sae_weights.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _set(art: Path, header: dict | bytes, buffer: bytes, name: str = "sae_weights.safetensors") -> None:
    (art / name).write_bytes(_safetensors(header, buffer))


def test_overlapping_offsets_are_refused_at_registration(tmp_path):
    from saekit.registry import store

    art = make_artifact(tmp_path / "art")
    header, buffer = _weights(art)
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    a, b = names[0], names[1]
    # b points into a's bytes; a trailing copy keeps the buffer length: sizes still fit
    size_b = header[b]["data_offsets"][1] - header[b]["data_offsets"][0]
    if size_b <= header[a]["data_offsets"][1] - header[a]["data_offsets"][0]:
        header[b]["data_offsets"] = [0, size_b]
    else:
        header[a]["data_offsets"] = [header[b]["data_offsets"][0],
                                     header[b]["data_offsets"][0] + header[a]["data_offsets"][1]]
    _set(art, header, buffer)
    with pytest.raises(ArtifactFormatError, match="overlaps|gap|do not fit"):
        store.register("overlap", art)
    assert store.list_versions() == []


@pytest.mark.parametrize("meta", [["not", "an", "object"], {"a": 1}, {"a": {"b": "c"}}, "text"])
def test_metadata_must_be_a_string_map(tmp_path, meta):
    from saekit.registry.artifact import validate_artifact

    art = make_artifact(tmp_path / "art")
    header, buffer = _weights(art)
    header["__metadata__"] = meta
    _set(art, header, buffer)
    with pytest.raises(ArtifactFormatError, match="__metadata__"):
        validate_artifact(art)


def test_header_nested_50000_deep_one_line(tmp_path):
    art = make_artifact(tmp_path / "art")
    _, buffer = _weights(art)
    _set(art, b'{"__metadata__":' + b"[" * 50_000 + b"]" * 50_000 + b"}", buffer)
    r = saekit("register", str(art), "--name", "deep", home=tmp_path / "home")
    assert "header nested deeper than" in r.one_line_error(2)


def test_duplicate_tensor_names_and_gaps_refused(tmp_path):
    from saekit.registry.artifact import validate_artifact

    art = make_artifact(tmp_path / "art")
    header, buffer = _weights(art)
    raw = json.dumps(header)
    dup = raw[:-1] + ", " + json.dumps({"W_enc": header["W_enc"]})[1:]
    _set(art, dup.encode(), buffer)
    with pytest.raises(ArtifactFormatError, match="not JSON"):
        validate_artifact(art)


def test_garbage_sparsity_refused_at_registration(tmp_path):
    art = make_artifact(tmp_path / "art")
    (art / "sparsity.safetensors").write_bytes(b"garbage, not safetensors at all")
    r = saekit("register", str(art), "--name", "sp", home=tmp_path / "home")
    assert "sparsity.safetensors" in r.one_line_error(2)


def test_manifest_yaml_bombs(tmp_path):
    from saekit.releases.manifest import load_manifest
    from saekit.schemas import InputError

    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    for text, message in ((laughs, "aliases"), ("[" * 100_000, "nested too deep"), ("x" * (2 << 20), "larger than the limit")):
        (tmp_path / "m.yaml").write_text(text)
        with pytest.raises(InputError, match=message):
            load_manifest(tmp_path / "m.yaml")
    r = saekit("release", "build", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "b"), home=tmp_path / "home")
    r.one_line_error(2)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_chunked_line_reader_matches_a_plain_split(tmp_path, monkeypatch, chunk):
    """Line numbers and contents of the bounded reader equal str.split's, whatever the chunk."""
    import random

    from saekit.schemas import card_files as v

    monkeypatch.setattr(v, "CHUNK", chunk)
    rng = random.Random(chunk)
    for trial in range(30):
        text = "".join(rng.choice(["a", "bc", " ", "\n", "\n\n", "\r\n", "{}", "x" * 9]) for _ in range(rng.randint(0, 60)))
        path = tmp_path / f"t{trial}.jsonl.gz" if trial % 2 else tmp_path / f"t{trial}.jsonl"
        data = text.encode()
        path.write_bytes(gzip.compress(data) if trial % 2 else data)
        if not trial % 2 and data[:2] == b"\x1f\x8b":
            continue
        want = [(n, line.encode()) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
        assert list(v.jsonl_lines(path)) == want, text


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_streamed_json_reader_matches_json_loads(tmp_path, monkeypatch, chunk):
    """The documents and start lines the streamed .json reader gives equal json.loads' items,
    whatever the chunk (numbers, strings and escapes cut at every place)."""
    import random

    from saekit.schemas import card_files as v

    monkeypatch.setattr(v, "CHUNK", chunk)
    rng = random.Random(chunk)
    values = [{"a": 1}, [1.5e3, -2, "x\\n\u00e9"], "\u2603 snow", 12345678901234567890, -0.5e-7, True, None,
              {"k": {"n": [1, {"m": "\\"}]}}, 1e5, {}]
    for trial in range(40):
        docs = [rng.choice(values) for _ in range(rng.randint(0, 6))]
        ws = lambda: rng.choice(["", " ", "\n", " \n\t ", "\r\n\n"])  # noqa: E731
        text, lines = ws() + "[" + ws(), []
        for i, d in enumerate(docs):
            lines.append(text.count("\n") + 1)
            text += json.dumps(d, ensure_ascii=trial % 2 == 0) + ws() + ("," + ws() if i < len(docs) - 1 else "")
        text += "]" + ws()
        path = tmp_path / (f"t{trial}.json.gz" if trial % 3 == 0 else f"t{trial}.json")
        path.write_bytes(gzip.compress(text.encode()) if trial % 3 == 0 else text.encode())
        got = list(v.json_documents(path))
        assert [json.loads(raw) for _, raw in got] == docs, text
        assert [line for line, _ in got] == lines, text


def test_over_long_line_in_byte_range_workers_names_its_line(tmp_path, monkeypatch):
    """Big plain .jsonl files are split into byte ranges read by worker processes; an
    over-long line there is reported with the file's own line number."""
    from saekit.schemas import InputError, safeio
    from saekit.schemas import validate as v

    monkeypatch.setattr(v, "RANGE_BYTES", 4096)
    monkeypatch.setattr(v, "PARALLEL_MIN_BYTES", 8192)
    card = json.dumps(make_card(0))
    lines = [json.dumps(make_card(i)) for i in range(40)]
    lines[23] = card[:-1] + ', "extra": {"pad": "' + "x" * 9000 + '"}}'
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=rf"big.jsonl:24: line longer than 5000 bytes"):
        v.validate_paths([path], workers=2, limits=safeio.Limits(max_line_bytes=5000))
    report = v.validate_paths([path], workers=2)
    assert report.n_cards == 40


def test_a_fifo_named_like_a_card_file_does_not_hang(tmp_path):
    import os

    fifo = tmp_path / "cards.jsonl"
    os.mkfifo(fifo)
    r = saekit("cards", "validate", str(fifo), home=tmp_path / "home", timeout=60)
    assert "is a FIFO" in r.one_line_error(2)


def test_npz_bomb_is_refused_before_it_expands(tmp_path):
    """A Gemma Scope params.npz whose member inflates 1000:1 (256 MiB of zeros in ~256 KB)."""
    import zipfile

    path = tmp_path / "params.npz"
    header = b"\x93NUMPY\x01\x00" + b"v\x00" + b"{'descr': '<f4', 'fortran_order': False, 'shape': (8192, 8192), }"
    header = header[:8] + len(header[10:].ljust(118, b" ") + b"\n").to_bytes(2, "little") + \
        header[10:].ljust(118, b" ") + b"\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("W_enc.npy", "w", force_zip64=True) as f:
            f.write(header)
            block = b"\0" * (1 << 20)
            for _ in range(256):
                f.write(block)
    assert path.stat().st_size < 2 << 20
    r = saekit("import", "gemmascope", str(path), str(tmp_path / "out"), home=tmp_path / "home")
    line = r.one_line_error(2)
    log_measure("import gemmascope, 256 MiB npz member in ~256 KB", r)
    assert "zip bomb" in line and r.peak_mib < RSS_BOUND_MIB
