"""Card builders shared by the schema tests (imported by name, like the other test folders' helpers)."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

DATA = Path(__file__).parent / "data"
SHA = "ab" * 32


def make_card(index: int, /, **changes) -> dict:
    """A small valid card as a plain dict (what a file holds)."""
    card = {
        "schema_version": "1.0",
        "sae": {"name": "smollm2-res-l6", "version": "3", "sha256": SHA, "d_sae": 4608},
        "index": index,
        "annotations": [{"label": "Paris", "source": "human", "scores": {"detection": 0.9}}],
        "stats": {
            "density": 0.001,
            "mean": 1.5,
            "max": 6.0,
            "n_tokens": 65536,
            "histogram": {"bin_edges": [0.0, 2.0, 4.0, 6.0], "counts": [5, 3, 1]},
        },
        "top_examples": [
            {"tokens": ["The", " city", " of", " Paris"], "values": [0.0, 0.0, 0.5, 6.0], "max_value": 6.0, "max_position": 3}
        ],
        "logit_effects": {"positive": [{"token": " France", "token_id": 4881, "value": 1.2}], "negative": []},
    }
    card = copy.deepcopy(card)
    card.update(changes)
    return card


def write_jsonl(path: Path, cards: list) -> Path:
    path.write_text("".join((c if isinstance(c, str) else json.dumps(c)) + "\n" for c in cards))
    return path


def broken_card_files() -> list[tuple[str, bytes, str]]:
    """(file name, bytes, the one-line error's words): card files that are not what their name
    says, for every entry point that reads card files (Python readers, the CLI)."""
    return [
        ("empty.jsonl.gz", b"", "not a valid gzip file"),
        ("text.jsonl.gz", b'{"index": 0}\n', "not a valid gzip file"),
        ("zipped.jsonl", gzip.compress(b'{"index": 0}\n'), "is gzip-compressed"),
        ("trunc.jsonl.gz", gzip.compress(json.dumps(make_card(0)).encode() * 50)[:-20], "not a valid gzip file"),
        ("bad.json", b"\xff\xfe{}", "not UTF-8"),
    ]
