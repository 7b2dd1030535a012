"""Real English text as token sets, each pinned by the sha256 of its token ids.

The default corpus is CPython's own documentation: ``pydoc_data.topics`` (the language
reference and library chapters ``help()`` shows; ~465k characters, ~113k SmolLM2 tokens),
written by people and shipped with every Python install, so it exists on a fresh machine
without any download. A text file (or a folder of ``*.txt``) works too, and so does
``fortunes``: the English fortune-cookie files of Debian's ``fortunes`` package (quotations,
jokes and short anecdotes about people; ~1.3 MB of everyday English, ~300k tokens), for
models probed on plain English prompts (``apt-get install fortunes``).

Documents are tokenized one by one and cut into windows of ``context_size`` tokens
(``context_size - 1`` text tokens after BOS when ``prepend_bos``); a document's tail that
does not fill a window is dropped. Every 8th window is held out as the ``eval`` split;
the rest is ``train`` (the demo SAE trains on it). A seed permutes the windows of a split.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from saekit.schemas import InputError, NotFoundError

DEFAULT_CORPUS = "pydoc"
FORTUNES = "fortunes"
FORTUNES_DIR = Path("/usr/share/games/fortunes")
# Debian fortunes' English files about people and everyday life (no computing, art, or
# untranslated files): one document per file, its quotes separated by blank lines
FORTUNES_FILES = ("education", "food", "fortunes", "goedel", "humorists", "kids", "law", "literature", "love",
                  "magic", "medicine", "men-women", "miscellaneous", "news", "people", "pets", "platitudes",
                  "politics", "riddles", "songs-poems", "sports", "wisdom", "work")
EVAL_EVERY = 8
Split = Literal["train", "eval", "all"]

# A text corpus is read and tokenized whole (a 200 MiB .txt took 22 GiB and was killed; an
# 8 MiB one, 1.7 GiB and 24 s in `saekit check`); row files (.jsonl, .parquet) are read as needed.
MAX_TEXT_BYTES = 4 << 20

_DOCS_CACHE: dict[str, list[tuple[str, str]]] = {}
_TOK_CACHE: dict[tuple, list[tuple[str, list[int]]]] = {}


def corpus_documents(corpus: str = DEFAULT_CORPUS) -> list[tuple[str, str]]:
    """``[(document_id, text)]`` of a corpus: 'pydoc', a text file or a folder of .txt files."""
    if corpus in _DOCS_CACHE:
        return _DOCS_CACHE[corpus]
    if corpus == "pydoc":
        import pydoc_data.topics as topics

        docs = [(key, topics.topics[key]) for key in sorted(topics.topics)]
    elif corpus == FORTUNES:
        files = [FORTUNES_DIR / name for name in FORTUNES_FILES if (FORTUNES_DIR / name).is_file()]
        if not files:
            raise NotFoundError("Debian's fortunes package is not installed (apt-get install fortunes)",
                                where=str(FORTUNES_DIR))
        docs = [(f.name, _unfortune(f.read_text(encoding="utf-8", errors="replace"))) for f in files]
    else:
        path = Path(corpus).expanduser()
        if path.is_dir():
            files = sorted(path.glob("*.txt"))
        elif path.is_file():
            files = [path]
        else:
            raise NotFoundError("no such text file or folder", where=corpus)
        if not files:
            raise InputError("no *.txt files", where=corpus)
        check_text_size(files, where=corpus)
        docs = [(f.name, f.read_text(encoding="utf-8", errors="replace")) for f in files]
    _DOCS_CACHE[corpus] = docs
    return docs


def _unfortune(text: str) -> str:
    """A fortune file's quotes, separated by blank lines instead of its '%' lines."""
    return "\n".join("" if line == "%" else line for line in text.splitlines())


def check_text_size(files: list[Path], *, where: str) -> None:
    """Refuse text files that would be tokenized whole past MAX_TEXT_BYTES (together), and
    anything but regular files (a FIFO's read blocks forever)."""
    total = 0
    for f in files:
        if not f.is_file():
            raise InputError("not a regular file", where=str(f))
        total += f.stat().st_size
    if total > MAX_TEXT_BYTES:
        raise InputError(f"{total} bytes of text, over the {MAX_TEXT_BYTES >> 20} MiB read whole; "
                         "give rows (.jsonl), read only as far as the check needs", where=where)


def corpus_label(corpus: str = DEFAULT_CORPUS) -> str:
    """A readable source name for records: the pydoc corpus depends on the Python version."""
    if corpus == "pydoc":
        return f"pydoc_data.topics (CPython {platform.python_version()} documentation)"
    if corpus == FORTUNES:
        return f"Debian fortunes ({FORTUNES_DIR}: {len(FORTUNES_FILES)} English files)"
    return str(Path(corpus).expanduser())


def fingerprint(token_ids: Any) -> str:
    """sha256 of the token ids as little-endian int32, row-major (the data fingerprint)."""
    import numpy as np
    import torch

    if isinstance(token_ids, torch.Tensor):
        token_ids = token_ids.detach().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(token_ids, dtype="<i4"))
    return hashlib.sha256(arr.tobytes()).hexdigest()


@dataclass
class TokenSet:
    """Token windows [n, context_size] with where each came from."""

    tokens: Any  # torch.LongTensor [n, context_size]
    source: str
    corpus: str
    split: str
    seed: int
    prepend_bos: bool
    documents: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # offset in the document of the first text token
    # row datasets (saekit.harness.datasets): the dataset, its commit (Hub), split and column
    dataset_id: str | None = None
    revision: str | None = None
    dataset_split: str | None = None
    column: str | None = None

    @property
    def context_size(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.numel())

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.tokens)

    def config(self) -> dict[str, Any]:
        """What rebuilds this token set (saekit.harness.datasets.token_set; ``corpus`` is its
        ``dataset``, pinned to a commit for a Hub dataset)."""
        return {
            "corpus": self.corpus,
            "split": self.split,
            "seed": self.seed,
            "context_size": self.context_size,
            "n_tokens": self.n_tokens,
            "prepend_bos": self.prepend_bos,
            "dataset_split": self.dataset_split,
        }


def _tokenized(tokenizer: Any, corpus: str) -> list[tuple[str, list[int]]]:
    key = (id(tokenizer), corpus)
    if key not in _TOK_CACHE:
        docs = corpus_documents(corpus)
        enc = tokenizer([text for _, text in docs], add_special_tokens=False)["input_ids"]
        _TOK_CACHE[key] = [(doc, list(ids)) for (doc, _), ids in zip(docs, enc)]
    return _TOK_CACHE[key]


def token_set(
    tokenizer: Any,
    *,
    n_tokens: int,
    context_size: int = 128,
    corpus: str = DEFAULT_CORPUS,
    split: Split = "eval",
    seed: int = 0,
    prepend_bos: bool = True,
) -> TokenSet:
    """``ceil(n_tokens / context_size)`` windows of a corpus split (deterministic for a seed)."""
    import torch

    if context_size < 2:
        raise InputError("context_size must be >= 2", where="context_size")
    if n_tokens <= 0:
        raise InputError("n_tokens must be > 0", where="n_tokens")
    bos = tokenizer.bos_token_id if prepend_bos else None
    if prepend_bos and bos is None:
        raise InputError("the tokenizer has no BOS token; use prepend_bos=False", where="prepend_bos")
    width = context_size - (1 if prepend_bos else 0)
    windows: list[tuple[str, int, list[int]]] = []
    for doc, ids in _tokenized(tokenizer, corpus):
        for start in range(0, len(ids) - width + 1, width):
            windows.append((doc, start, ids[start : start + width]))
    if split == "eval":
        windows = windows[::EVAL_EVERY]
    elif split == "train":
        windows = [w for i, w in enumerate(windows) if i % EVAL_EVERY]
    elif split != "all":
        raise InputError(f"unknown split {split!r}", where="split")
    n_rows = -(-n_tokens // context_size)
    if n_rows > len(windows):
        raise InputError(
            f"asked for {n_rows} windows of {context_size} tokens; the {split} split has {len(windows)}",
            where=corpus_label(corpus),
        )
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))[:n_rows].tolist()
    chosen = [windows[i] for i in order]
    rows = [([bos] if prepend_bos else []) + ids for _, _, ids in chosen]
    return TokenSet(
        tokens=torch.tensor(rows, dtype=torch.long),
        source=corpus_label(corpus),
        corpus=corpus,
        split=split,
        seed=seed,
        prepend_bos=prepend_bos,
        documents=[d for d, _, _ in chosen],
        positions=[p for _, p, _ in chosen],
    )


def special_token_ids(tokenizer: Any) -> list[int]:
    """BOS, EOS, PAD, SEP, decoder-start ids: the tokens SAELens' evals exclude
    (sae_lens/util.py get_special_token_ids, used by evals.run_evals)."""
    out = set()
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id"):
        tid = getattr(tokenizer, attr, None)
        if tid is not None:
            out.add(int(tid))
    return sorted(out)
