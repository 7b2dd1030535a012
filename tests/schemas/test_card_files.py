"""saekit.schemas.card_files: the one file layer for cards. Every format, write -> read round
trips, the bundle's shard writer, and the refusals (symlinks, over-long lines, broken gzip)."""

from __future__ import annotations

import gzip
import json
import os
import shutil

import pytest
from card_helpers import broken_card_files, make_card, write_jsonl

from saekit.schemas import FeatureCard, InputError, UnsafePathError
from saekit.schemas import card_files as cf
from saekit.schemas.safeio import Limits


def _cards(n: int, start: int = 0) -> list[FeatureCard]:
    return [FeatureCard.model_validate(make_card(i)) for i in range(start, start + n)]


# --- reading every format -------------------------------------------------------------


def test_json_object(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(make_card(3), indent=2))
    assert [c.index for c in cf.read_cards(path)] == [3]
    assert [n for n, _ in cf.raw_documents(path)] == [1]


def test_json_list_with_line_numbers(tmp_path):
    path = tmp_path / "many.json"
    path.write_text("[\n" + ",\n".join(json.dumps(make_card(i)) for i in range(3)) + "\n]\n")
    assert [c.index for c in cf.read_cards(path)] == [0, 1, 2]
    assert [n for n, _ in cf.raw_documents(path)] == [2, 3, 4]
    assert [n for n, _ in cf.read_documents(path)] == [2, 3, 4]


def test_jsonl_skips_blank_lines_and_keeps_numbers(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(make_card(0)) + "\n\n  \n" + json.dumps(make_card(1)) + "\n")
    assert [(p.name, n) for p, n, _ in cf.iter_documents(path)] == [("c.jsonl", 1), ("c.jsonl", 4)]
    assert [c.index for c in cf.read_cards(path)] == [0, 1]


def test_jsonl_gz(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(make_card(i)) + "\n" for i in range(4)).encode()))
    assert [c.index for c in cf.read_cards(path)] == [0, 1, 2, 3]


def test_folder_of_shards_in_name_order(tmp_path):
    folder = tmp_path / "feature_cards"
    folder.mkdir()
    for i in (1, 0):  # written out of order: read sorted by name
        lines = "".join(json.dumps(make_card(j)) + "\n" for j in range(i * 2, i * 2 + 2))
        (folder / f"part-{i:05d}-of-00002.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (folder / "README.txt").write_text("not cards")  # not a card file: skipped
    assert [c.index for c in cf.read_cards(folder)] == [0, 1, 2, 3]
    # a list of paths reads them in the order given
    assert [c.index for c in cf.read_cards(sorted(folder.glob("*.gz"), reverse=True))] == [2, 3, 0, 1]


def test_read_rows_are_plain_objects(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    cf.write_rows(path, [{"a": 1}, {"b": "é"}])
    assert cf.read_rows(path) == [{"a": 1}, {"b": "é"}]
    (tmp_path / "list.json").write_text('[{"a": 1}, 2]')
    with pytest.raises(InputError, match="expected a JSON object per row") as err:
        cf.read_rows(tmp_path / "list.json")
    assert err.value.where == f"{tmp_path / 'list.json'}:1"


def test_invalid_card_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [make_card(0), make_card(1, index=-1)])
    with pytest.raises(InputError, match=r"invalid card: index: ") as err:
        cf.read_cards(path)
    assert err.value.where == f"{path}:2"
    assert "\n" not in str(err.value)


def test_unsupported_suffix_and_missing_file(tmp_path):
    (tmp_path / "cards.txt").write_text("{}")
    with pytest.raises(InputError, match="unsupported card file type"):
        cf.read_cards(tmp_path / "cards.txt")
    with pytest.raises(InputError, match="no such file"):
        cf.read_cards(tmp_path / "missing.jsonl")


# --- write -> read ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz", "c.json"])
def test_write_read_round_trip(tmp_path, name):
    cards = _cards(3, start=5)
    path = cf.write_cards(list(reversed(cards)), tmp_path / "sub" / name)  # written in index order
    assert cf.read_cards(path) == cards
    one = cf.write_cards(cards[:1], tmp_path / f"one-{name}")
    assert cf.read_cards(one) == cards[:1]


def test_write_jsonl_bytes_and_gzip_without_timestamp(tmp_path):
    cards = _cards(2)
    plain = cf.write_cards(cards, tmp_path / "c.jsonl")
    assert plain.read_bytes() == b"".join(c.model_dump_json(exclude_none=True).encode() + b"\n" for c in cards)
    gz = cf.write_cards(cards, tmp_path / "c.jsonl.gz")
    assert gz.read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime 0: the same bytes every time
    assert gzip.decompress(gz.read_bytes()) == plain.read_bytes()
    unsorted = cf.write_cards(list(reversed(cards)), tmp_path / "u.jsonl", sort=False)
    assert [c.index for c in cf.read_cards(unsorted)] == [1, 0]


def test_write_refuses_a_symlink_instead_of_writing_through(tmp_path):
    target = tmp_path / "elsewhere.jsonl"
    target.write_text("keep\n")
    (tmp_path / "out.jsonl").symlink_to(target)
    with pytest.raises(UnsafePathError, match="out.jsonl: is a symlink"):
        cf.write_cards(_cards(1), tmp_path / "out.jsonl")
    assert (tmp_path / "out.jsonl").is_symlink() and target.read_text() == "keep\n"


# --- the bundle's shard writer ---------------------------------------------------------


def _old_write_cards(src, dest, n, per_shard, shard_bytes):
    """releases.bundle._write_cards before the file layer existed (the bytes to keep)."""
    if n <= per_shard and src.stat().st_size <= shard_bytes:
        shutil.copyfile(src, dest / "feature_cards.jsonl")
        return ["feature_cards.jsonl"]
    groups: list[list[bytes]] = [[]]
    size = 0
    with open(src, "rb") as f:
        for ln in f:
            if not ln.strip():
                continue
            ln = ln if ln.endswith(b"\n") else ln + b"\n"
            if groups[-1] and (len(groups[-1]) == per_shard or size + len(ln) > shard_bytes):
                groups.append([])
                size = 0
            groups[-1].append(ln)
            size += len(ln)
    (dest / "feature_cards").mkdir()
    names = [f"feature_cards/part-{i:05d}-of-{len(groups):05d}.jsonl.gz" for i in range(len(groups))]
    for name, lines in zip(names, groups):
        (dest / name).write_bytes(gzip.compress(b"".join(lines), compresslevel=6, mtime=0))
    return names


@pytest.mark.parametrize("per_shard,max_bytes", [(100, 1 << 20), (4, 1 << 20), (3, 1 << 20), (100, 2000), (1, 10)])
def test_shards_are_byte_identical_to_the_old_writer_and_deterministic(tmp_path, per_shard, max_bytes):
    src = tmp_path / "feature_cards.jsonl"
    lines = [json.dumps(make_card(i)) for i in range(10)]
    src.write_text(lines[0] + "\n\n" + "\n".join(lines[1:]))  # a blank line, no final newline
    n = len(lines)
    runs = []
    for k in range(2):
        new, old = tmp_path / f"new{k}", tmp_path / f"old{k}"
        new.mkdir(), old.mkdir()
        names = cf.write_card_shards(src, new, per_shard=per_shard, max_bytes=max_bytes)
        assert names == _old_write_cards(src, old, n, per_shard, max_bytes)
        got = {name: (new / name).read_bytes() for name in names}
        assert got == {name: (old / name).read_bytes() for name in names}
        runs.append(got)
    assert runs[0] == runs[1]
    # the shards read back as the cards, in order
    assert [c.index for c in cf.read_cards([tmp_path / "new0" / name for name in runs[0]])] == list(range(10))


def test_shard_writer_refuses_a_symlinked_source(tmp_path):
    real = write_jsonl(tmp_path / "real.jsonl", [make_card(0)])
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "feature_cards.jsonl").symlink_to(real)
    (tmp_path / "dest").mkdir()
    with pytest.raises(UnsafePathError, match="is a symlink"):
        cf.write_card_shards(tmp_path / "src" / "feature_cards.jsonl", tmp_path / "dest", per_shard=10, max_bytes=1 << 20)


# --- refusals ----------------------------------------------------------------------------


def test_symlink_inside_a_folder_is_refused(tmp_path):
    outside = write_jsonl(tmp_path / "outside.jsonl", [make_card(0)])
    folder = tmp_path / "cards"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [make_card(1)])
    (folder / "b.jsonl").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="b.jsonl: is a symlink"):
        cf.read_cards(folder)


def test_hard_link_inside_a_folder_is_refused(tmp_path):
    folder = tmp_path / "cards"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [make_card(1)])
    os.link(folder / "a.jsonl", tmp_path / "other-name.jsonl")
    with pytest.raises(UnsafePathError, match="hard link"):
        cf.read_cards(folder)


def test_over_long_line_names_its_line(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [make_card(0), make_card(1)])
    with pytest.raises(InputError, match="line longer than 100 bytes") as err:
        cf.read_cards(path, Limits(max_line_bytes=100))
    assert err.value.where == f"{path}:1"
    big = tmp_path / "big.json"
    big.write_text(json.dumps([make_card(0)]))
    with pytest.raises(InputError, match="card longer than 100 bytes"):
        cf.read_cards(big, Limits(max_line_bytes=100))


def test_file_and_depth_bounds(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl.gz", [])
    path.write_bytes(gzip.compress(b"\n" * 5000))
    with pytest.raises(InputError, match="more than 1000 decompressed bytes"):
        cf.read_cards(path, Limits(max_file_bytes=1000))
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100 + "]" * 100 + "\n")
    with pytest.raises(InputError, match="nested deeper than 64"):
        cf.read_cards(deep)
    with pytest.raises(InputError, match="nested deeper than 64"):
        list(cf.read_documents(deep))


@pytest.mark.parametrize("name,content,message", broken_card_files())
def test_broken_files_are_one_line_input_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    for read in (cf.read_cards, cf.read_rows, lambda p: list(cf.read_documents(p))):
        with pytest.raises(InputError, match=message) as err:
            read(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_nan_is_refused_in_documents(tmp_path):
    path = tmp_path / "nan.jsonl"
    path.write_text('{"a": NaN}\n')
    with pytest.raises(InputError, match="not JSON"):
        cf.read_rows(path)


def test_validate_reads_through_card_files():
    """validate.py takes its readers from card_files (never the reverse)."""
    import inspect

    from saekit.schemas import validate

    assert validate.jsonl_lines is cf.jsonl_lines and validate.json_documents is cf.json_documents
    imports = [line for line in inspect.getsource(cf).splitlines() if line.startswith(("import ", "from "))]
    assert imports and not any("validate" in line or "convert" in line for line in imports)


def test_cannot_write_is_one_line_and_leaves_no_temporary_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="cannot write") as err:
        cf.write_cards(_cards(1), tmp_path / "file" / "c.jsonl")
    assert "\n" not in str(err.value)

    def failing():
        yield cf.card_line(_cards(1)[0])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cf.write_lines(tmp_path / "c.jsonl", failing())
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]


def test_folder_order_is_path_order_at_any_depth(tmp_path):
    folder = tmp_path / "cards"
    for rel, i in (("a/b.jsonl", 0), ("a-c.jsonl", 1), ("z.json", 2)):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(folder / rel, [make_card(i)])
    assert [p.relative_to(folder).as_posix() for p in cf.expand([folder])] == ["a/b.jsonl", "a-c.jsonl", "z.json"]
    assert cf.expand([folder]) == sorted(p for p in folder.rglob("*") if p.is_file())


def test_convert_reads_through_card_files_folders_included(tmp_path):
    from saekit.schemas.convert import convert_files

    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [make_card(0)])
    (folder / "b.json").write_text(json.dumps([make_card(1), make_card(2)]))
    res = convert_files([folder], tmp_path / "out.jsonl.gz")
    assert [c.index for c in res.cards] == [0, 1, 2]
    assert cf.read_cards(tmp_path / "out.jsonl.gz") == res.cards
