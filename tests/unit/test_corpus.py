"""The project's corpus (benchmarks/data/chunks.jsonl): its shape, and that it is made here.

No file of the project reads text from outside the repository: a clone has everything the
tests and benchmarks need.
"""

from __future__ import annotations

import json
import platform
import re

import pytest
from conftest import REPO

from benchmarks import make_corpus
from benchmarks.corpus import CORPUS_PATH, load_texts


def test_every_chunk_is_an_object_with_a_unique_id_and_40_to_90_words() -> None:
    lines = CORPUS_PATH.read_text(encoding="utf-8").splitlines()
    chunks = [json.loads(line) for line in lines]
    assert len(chunks) >= 500
    assert all(set(chunk) == {"id", "text"} for chunk in chunks)
    assert [chunk["id"] for chunk in chunks] == [f"c{i:05d}" for i in range(len(chunks))]
    counts = {chunk["id"]: len(chunk["text"].split()) for chunk in chunks}
    assert not {i: n for i, n in counts.items() if not 40 <= n <= 90}
    assert all(chunk["text"] == " ".join(chunk["text"].split()) for chunk in chunks)
    assert len({chunk["text"] for chunk in chunks}) == len(chunks)
    assert CORPUS_PATH.stat().st_size < 300_000
    assert load_texts() == [chunk["text"] for chunk in chunks]


@pytest.mark.skipif(platform.python_version() != make_corpus.MADE_WITH,
                    reason=f"the corpus was made from Python {make_corpus.MADE_WITH}'s "
                           "docstrings; another version's differ")
def test_make_corpus_makes_exactly_the_committed_file() -> None:
    made = make_corpus.render(make_corpus.make_chunks())
    assert made == CORPUS_PATH.read_text(encoding="utf-8"), \
        "benchmarks/data/chunks.jsonl is out of date: python -m benchmarks.make_corpus"


def test_nothing_reads_text_from_outside_the_repository() -> None:
    # The folder next to the checkout, as a string path or Path parts; its name is built
    # in pieces so that this file does not match.
    name = "sha" + "red"
    outside = re.compile(rf"\.\./{name}|\b{name}['\"]?\s*/\s*['\"]?data\b")
    files = [REPO / "Makefile", *(REPO / ".ci").rglob("*")]
    for folder in ("supervisor", "workers", "tests", "benchmarks"):
        files += [p for p in (REPO / folder).rglob("*")
                  if p.suffix in (".py", ".toml", ".md", ".txt", ".cfg", ".sh", "")]
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}"
             for p in files if p.is_file() and "__pycache__" not in p.parts
             for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace")
                                      .splitlines(), 1)
             if outside.search(line)]
    assert not found, "\n".join(found)
