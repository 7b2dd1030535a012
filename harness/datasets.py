"""The check's datasets: ``pydoc``, local .txt/.jsonl/.parquet files or folders, and Hub
datasets pinned to a commit.

    pydoc                              CPython's docs (saekit.harness.text)
    fortunes                           Debian fortunes' English files (saekit.harness.text)
    PATH                               a .txt, .jsonl (.jsonl.gz, .jsonl.zst) or .parquet
                                       file, or a folder of them
    hf://datasets/ORG/NAME[@REV]       a Hub dataset; REV (branch, tag, commit) is resolved
                                       to its commit, recorded as hf://datasets/ORG/NAME@COMMIT
    ORG/NAME                           SAELens' ``dataset_path`` (a Hub dataset at main)

``pydoc`` and .txt-only corpora are read whole and their windows sampled by seed
(``text.token_set``). Row datasets (.jsonl, .parquet, the Hub) are read in order, file by
file, only until the check has its windows: a Hub dataset's files are downloaded one at a
time (``hf_hub_download`` at the commit; with HF_HUB_OFFLINE the cached snapshot), so a
check of 8k tokens never fetches a whole corpus.

The column is chosen as SAELens' ActivationsStore chooses it (sae_lens
training/activations_store.py ``__init__``): ``tokens``, else ``input_ids`` (already
tokenized: a row gives one window, its first ``context_size`` ids, BOS included as the
tokenizer wrote it), else ``text``, else ``problem``. Tokenized rows must match the model's
tokenizer: every id inside its vocabulary and, for a Hub dataset, the tokenizer named by
its ``sae_lens.json`` must have the model's vocabulary (SAELens'
``validate_pretokenized_dataset_tokenizer``; only its tokenizer files are downloaded).

Split: a file belongs to the split its path names (``train``, ``test``, ``validation``
and their synonyms, as ``datasets`` resolves data files: datasets/data_files.py
``KEYWORDS_IN_FILENAME_BASE_PATTERNS``); when no path names a split, every file is
``train``, the split SAELens reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from saekit.harness.text import DEFAULT_CORPUS, EVAL_EVERY, FORTUNES, Split, TokenSet, check_text_size, token_set as corpus_token_set
from saekit.registry.hub import endpoint, hub_api, hub_errors, quiet_progress
from saekit.schemas import InputError, NotFoundError
from saekit.schemas.settings import current

HUB_PREFIX = "hf://datasets/"
DATA_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")  # .zst: The Pile's shards
# SAELens' column order (ActivationsStore.__init__): tokenized columns first
TOKEN_COLUMNS = ("tokens", "input_ids")
TEXT_COLUMNS = ("text", "problem")
DEFAULT_SPLIT = "train"
_SPLIT_WORDS = {
    "train": ("train", "training"),
    "test": ("test", "testing", "eval", "evaluation"),
    "validation": ("validation", "valid", "dev", "val"),
}
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
MAX_LINE = 64 << 20  # bytes of one .jsonl line


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed ``--dataset``: ``kind`` is 'pydoc', 'local' or 'hub'."""

    kind: str
    id: str  # 'pydoc', the path, or ORG/NAME
    revision: str | None = None  # hub: as given (default main)

    def pinned(self, commit: str) -> str:
        return f"{HUB_PREFIX}{self.id}@{commit}"


def parse_dataset(text: str) -> DatasetSpec:
    """``--dataset`` (or an SAE's ``dataset_path``) as a DatasetSpec; InputError when it is none."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("empty dataset", where="--dataset")
    if text in (DEFAULT_CORPUS, FORTUNES):  # built-in text corpora (saekit.harness.text)
        return DatasetSpec("pydoc", text)
    if text.startswith(HUB_PREFIX):
        repo, _, rev = text[len(HUB_PREFIX):].partition("@")
        if not _HUB_ID.fullmatch(repo) or ".." in repo or (rev == "" and "@" in text) or "/" in rev:
            raise InputError("expected hf://datasets/ORG/NAME[@REVISION]", where=text)
        return DatasetSpec("hub", repo, rev or None)
    path = Path(text).expanduser()
    if path.exists():
        return DatasetSpec("local", str(path))
    if text.startswith("hf://"):
        raise InputError("a dataset on the Hub is hf://datasets/ORG/NAME[@REVISION]", where=text)
    if _HUB_ID.fullmatch(text) and ".." not in text and not text.startswith((".", "/", "~")):
        return DatasetSpec("hub", text, None)  # SAELens' dataset_path: a Hub dataset id
    raise NotFoundError("no such dataset file or folder", where=text)


def split_of(path: str) -> str | None:
    """The split a data file's path names, or None."""
    low = path.lower()
    for split, words in _SPLIT_WORDS.items():
        if any(re.search(rf"(?:^|[-._ 0-9/]){w}(?:[-._ 0-9/]|$)", low) for w in words):
            return split
    return None


def split_files(paths: list[str], split: str, *, where: str) -> list[str]:
    """The data files of ``split``, in path order (see the module docstring)."""
    data = sorted(p for p in paths if p.lower().endswith(DATA_SUFFIXES)
                  and not any(part.startswith(".") for part in PurePosixPath(p).parts))
    if not data:
        raise InputError(f"no {', '.join(DATA_SUFFIXES)} data files", where=where)
    named = {p: split_of(p) for p in data}
    if not any(named.values()):
        named = {p: DEFAULT_SPLIT for p in data}
    chosen = [p for p in data if named[p] == split]
    if not chosen:
        have = sorted({s for s in named.values() if s})
        raise InputError(f"no data files of split {split!r} (splits: {', '.join(have)})", where=where)
    return chosen


# --- rows ---------------------------------------------------------------------------------


def _pick_column(names: list[str], where: str) -> str:
    for col in TOKEN_COLUMNS + TEXT_COLUMNS:
        if col in names:
            return col
    raise InputError("no 'tokens', 'input_ids', 'text' or 'problem' column (SAELens' columns)", where=where)


def _jsonl_rows(path: Path, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import io

    import pyarrow as pa

    codec = {".gz": "gzip", ".zst": "zstd"}.get(path.suffix.lower())
    raw = pa.CompressedInputStream(pa.OSFile(str(path)), codec) if codec else pa.OSFile(str(path))
    try:
        f = io.BufferedReader(raw)  # decompressed as it is read: only the rows the check needs
        n = 0
        while line := f.readline(MAX_LINE + 1):
            n += 1
            if len(line) > MAX_LINE:
                raise InputError(f"line {n} is over {MAX_LINE >> 20} MiB", where=where)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                raise InputError(f"line {n} is not JSON", where=where) from None
            if not isinstance(row, dict):
                raise InputError(f"line {n} is not a JSON object", where=where)
            yield f"{where}:{n}", row
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"not a readable {codec or 'JSON lines'} file ({str(err).splitlines()[0][:120]})",
                         where=where) from None
    finally:
        raw.close()


def _parquet_rows(path: Path, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        col = _pick_column(pf.schema_arrow.names, where)
        n = 0
        for batch in pf.iter_batches(batch_size=64, columns=[col]):  # bounded: 64 rows at a time
            for value in batch.column(0).to_pylist():
                n += 1
                yield f"{where}:{n}", {col: value}
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"not a readable parquet file ({str(err).splitlines()[0][:120]})", where=where) from None


def file_rows(path: Path, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(row id, row)`` of one data file: a .txt file is one row ``{'text': ...}``."""
    name = path.name.lower()
    if not path.is_file():  # a FIFO or device named like a data file: its read would block forever
        raise InputError("not a regular file", where=where)
    if name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst")):
        yield from _jsonl_rows(path, where)
    elif name.endswith(".parquet"):
        yield from _parquet_rows(path, where)
    else:
        check_text_size([path], where=where)
        yield where, {"text": path.read_text(encoding="utf-8", errors="replace")}


# --- windows ------------------------------------------------------------------------------


def _row_windows(tokenizer: Any, rows: Iterator[tuple[str, dict[str, Any]]], *, context_size: int,
                 prepend_bos: bool, info: dict[str, Any]) -> Iterator[tuple[str, int, list[int]]]:
    """Windows of rows, in order. The first row fixes the column (``info['column']``)."""
    vocab = len(tokenizer)
    bos = tokenizer.bos_token_id
    width = context_size - (1 if prepend_bos else 0)
    column = None
    for doc, row in rows:
        if column is None:
            column = info["column"] = _pick_column(list(row), doc)
        value = row.get(column)
        if column in TOKEN_COLUMNS:
            ids = value
            if not isinstance(ids, list) or not all(type(i) is int for i in ids):
                raise InputError(f"column {column!r} is not a list of token ids", where=doc)
            if len(ids) < context_size:
                # SAELens: a pretokenized dataset's rows must be at least context_size long
                raise InputError(f"tokenized row of {len(ids)} ids is shorter than the context ({context_size})",
                                 where=doc)
            ids = ids[:context_size]
            if any(i < 0 or i >= vocab for i in ids):
                raise InputError(f"token id outside the tokenizer's vocabulary of {vocab}: tokenized with another "
                                 "tokenizer?", where=doc)
            yield doc, 0, ids
        else:
            if not isinstance(value, str):
                raise InputError(f"column {column!r} is not text", where=doc)
            ids = tokenizer(value, add_special_tokens=False)["input_ids"]
            for start in range(0, len(ids) - width + 1, width):
                yield doc, start, ([bos] if prepend_bos else []) + ids[start : start + width]


def _take(windows: Iterator[tuple[str, int, list[int]]], split: Split, n_rows: int, where: str):
    """The first ``n_rows`` windows of a window split (every EVAL_EVERY-th is ``eval``)."""
    if split not in ("eval", "train", "all"):
        raise InputError(f"unknown split {split!r}", where="split")
    out = []
    for i, w in enumerate(windows):
        if split == "all" or (split == "eval") == (i % EVAL_EVERY == 0):
            out.append(w)
            if len(out) == n_rows:
                return out
    raise InputError(f"asked for {n_rows} windows; the dataset's {split} windows number {len(out)}", where=where)


# --- the Hub --------------------------------------------------------------------------------


def _hub_listing(spec: DatasetSpec) -> tuple[str, list[str]]:
    """``(commit, file paths)`` of a Hub dataset at its revision (offline: its cached snapshot)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    where = f"{HUB_PREFIX}{spec.id}"
    rev = spec.revision or "main"
    with hub_errors(where):
        try:
            api = hub_api()  # bounded in time: the listing, and the downloads after it
            commit = api.dataset_info(spec.id, revision=rev).sha
            tree = api.list_repo_tree(spec.id, repo_type="dataset", revision=commit, recursive=True)
            return commit, [e.path for e in tree if isinstance(e, RepoFile)]
        except OfflineModeIsEnabled:
            try:  # HF_HUB_OFFLINE: the cached snapshot of the revision
                folder = Path(snapshot_download(spec.id, repo_type="dataset", revision=rev, local_files_only=True,
                                                cache_dir=current().hub_cache))
            except LocalEntryNotFoundError:
                raise NotFoundError(f"revision {rev} is not in the Hub cache (HF_HUB_OFFLINE is set)",
                                    where=where) from None
            return folder.name, [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]


def _hub_file(spec: DatasetSpec, commit: str, name: str) -> Path:
    from huggingface_hub import hf_hub_download

    with hub_errors(f"{spec.pinned(commit)}/{name}"), quiet_progress():
        return Path(hf_hub_download(spec.id, name, repo_type="dataset", revision=commit, endpoint=endpoint(),
                                    cache_dir=current().hub_cache))


def _named_tokenizer_vocab(name: str, where: str) -> dict[str, int]:
    """The vocabulary of the tokenizer a dataset names (its tokenizer files from the Hub, or the cache)."""
    from huggingface_hub import snapshot_download
    from transformers import AutoTokenizer

    with hub_errors(f"{where}: tokenizer {name}"), quiet_progress():
        folder = snapshot_download(name, endpoint=endpoint(), cache_dir=current().hub_cache, allow_patterns=[
            "tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "*.model"])
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True).get_vocab()
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the tokenizer {name!r} it names ({str(err).splitlines()[0][:120]})",
                         where=where) from None


def _check_tokenizer(spec: DatasetSpec, commit: str, files: list[str], tokenizer: Any, model_id: str | None) -> None:
    """A tokenized Hub dataset names its tokenizer in sae_lens.json (SAELens' pretokenize
    runner writes it); its vocabulary must be the model's, as SAELens'
    ``validate_pretokenized_dataset_tokenizer`` checks (the same name needs no download)."""
    if "sae_lens.json" not in files:
        return
    where = spec.pinned(commit)
    try:
        name = json.loads(_hub_file(spec, commit, "sae_lens.json").read_bytes()).get("tokenizer_name")
    except (ValueError, AttributeError):
        raise InputError("unreadable sae_lens.json", where=where) from None
    if not isinstance(name, str) or name == model_id:
        return
    if _named_tokenizer_vocab(name, where) != tokenizer.get_vocab():
        raise InputError(f"tokenized with {name!r}, whose vocabulary is not the model's ({model_id})", where=where)


def _txt_corpus(path: Path) -> bool:
    """A .txt file, or a folder of .txt files and no row files: read whole (text.token_set)."""
    if path.is_file():
        return path.name.lower().endswith(".txt")
    names = [p.name.lower() for p in path.rglob("*")]
    return not any(n.endswith(DATA_SUFFIXES) and not n.endswith(".txt") for n in names) and any(path.glob("*.txt"))


# --- the token set --------------------------------------------------------------------------


def token_set(
    tokenizer: Any,
    *,
    n_tokens: int,
    context_size: int = 128,
    dataset: str = DEFAULT_CORPUS,
    split: Split = "eval",
    dataset_split: str | None = None,
    seed: int = 0,
    prepend_bos: bool = True,
    model_id: str | None = None,
) -> TokenSet:
    """``ceil(n_tokens / context_size)`` windows of ``dataset`` (see the module docstring).
    ``split``: the window split (every 8th window is ``eval``); ``dataset_split``: the
    dataset's own split (row datasets; default ``train``); ``model_id``: the model's id (a
    tokenized Hub dataset naming it needs no tokenizer download)."""
    import torch

    if context_size < 2:
        raise InputError("context_size must be >= 2", where="context_size")
    if n_tokens <= 0:
        raise InputError("n_tokens must be > 0", where="n_tokens")
    spec = parse_dataset(dataset)
    if spec.kind == "pydoc" or (spec.kind == "local" and _txt_corpus(Path(spec.id))):
        return corpus_token_set(tokenizer, n_tokens=n_tokens, context_size=context_size, corpus=spec.id, split=split,
                                seed=seed, prepend_bos=prepend_bos)
    if prepend_bos and tokenizer.bos_token_id is None:
        raise InputError("the tokenizer has no BOS token; use prepend_bos=False", where="prepend_bos")
    dsplit = dataset_split or DEFAULT_SPLIT
    n_rows = -(-n_tokens // context_size)
    info: dict[str, Any] = {}
    if spec.kind == "hub":
        commit, listed = _hub_listing(spec)
        source = spec.pinned(commit)
        files = split_files(listed, dsplit, where=source)

        def rows() -> Iterator[tuple[str, dict[str, Any]]]:
            for name in files:  # downloaded only when the windows so far are not enough
                yield from file_rows(_hub_file(spec, commit, name), f"{source}/{name}")

        windows = _take(_row_windows(tokenizer, rows(), context_size=context_size, prepend_bos=prepend_bos, info=info),
                        split, n_rows, source)
        if info.get("column") in TOKEN_COLUMNS:
            _check_tokenizer(spec, commit, listed, tokenizer, model_id)
        dataset_id, revision = spec.id, commit
    else:
        path = Path(spec.id)
        source = str(path)
        if path.is_dir():
            base = path
            files = split_files([p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()], dsplit,
                                where=source)
        elif path.name.lower().endswith(DATA_SUFFIXES):
            base, files = path.parent, [path.name]
        else:
            raise InputError(f"not a {', '.join(DATA_SUFFIXES)} file", where=source)

        def rows() -> Iterator[tuple[str, dict[str, Any]]]:
            for name in files:
                yield from file_rows(base / name, str(base / name))

        windows = _take(_row_windows(tokenizer, rows(), context_size=context_size, prepend_bos=prepend_bos, info=info),
                        split, n_rows, source)
        dataset_id, revision = source, None
    tokenized = info.get("column") in TOKEN_COLUMNS
    return TokenSet(
        tokens=torch.tensor([ids for _, _, ids in windows], dtype=torch.long),
        source=source,
        corpus=source,
        split=split,
        seed=seed,
        prepend_bos=prepend_bos and not tokenized,
        documents=[d for d, _, _ in windows],
        positions=[p for _, p, _ in windows],
        dataset_id=dataset_id,
        revision=revision,
        dataset_split=dsplit,
        column=info.get("column"),
    )


def pinned_dataset(dataset: str) -> str:
    """``dataset`` with a Hub dataset's revision resolved to its commit (other datasets as
    given): a check calls it before loading the model, so a missing or unreachable Hub
    dataset fails in seconds, and the windows are read at that commit."""
    spec = parse_dataset(dataset)
    if spec.kind != "hub":
        return dataset
    commit, _ = _hub_listing(spec)
    return spec.pinned(commit)


def sae_dataset(cfg: Any) -> str | None:
    """The dataset an SAE names: SAELens' ``metadata.dataset_path``."""
    value = (getattr(cfg, "metadata", None) or {}).get("dataset_path")
    return value if isinstance(value, str) and value else None
