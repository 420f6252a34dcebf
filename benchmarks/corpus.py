"""The project's text corpus: English chunks of 40-90 words, one JSON object a line.

`benchmarks/data/chunks.jsonl` is committed; the tests (tests/system/test_models.py) and the
benchmarks embed it. benchmarks/make_corpus.py made it and says how to make it again.
"""

from __future__ import annotations

import json
from pathlib import Path

CORPUS_PATH = Path(__file__).resolve().parent / "data" / "chunks.jsonl"


def load_chunks(path: Path = CORPUS_PATH) -> list[dict[str, str]]:
    """Every chunk, in order: {"id": "c00000", "text": "..."}."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def load_texts(path: Path = CORPUS_PATH) -> list[str]:
    """The chunks' texts, in order."""
    return [chunk["text"] for chunk in load_chunks(path)]
