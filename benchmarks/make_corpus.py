"""Make the project's corpus, benchmarks/data/chunks.jsonl, from the standard library's docstrings.

To make it again, from the repository root, with the interpreter named in MADE_WITH:

    .venv/bin/python -m benchmarks.make_corpus           # writes benchmarks/data/chunks.jsonl
    .venv/bin/python -m benchmarks.make_corpus --check   # exit 1 if the file differs

Nothing is downloaded and nothing is random: the text is the docstrings (inspect.getdoc) of
the modules in MODULES, then of their public classes, functions and methods, in sorted order.
A paragraph is kept if it reads as prose (no doctest, no code, no tables; see _prose) and
was not seen before; a module's kept paragraphs, whitespace collapsed, are one stream of
words, cut into consecutive chunks of MIN_WORDS..MAX_WORDS words: at the first sentence end
once SOFT_WORDS are reached, else at the last sentence end past MIN_WORDS, else hard at
MAX_WORDS. A module's tail shorter than MIN_WORDS is dropped. At most PER_MODULE chunks come
from one module and at most TOTAL in all; ids are c00000, c00001, ... in that order.

The output depends only on the interpreter's standard library, so another Python version
makes a different (equally valid) corpus: the committed file is the corpus, this script
says how it was made. tests/unit/test_corpus.py checks that this script, under MADE_WITH, makes
exactly the committed file.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import platform
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.corpus import CORPUS_PATH

# The interpreter the committed corpus was made with.
MADE_WITH = "3.11.7"

MIN_WORDS, SOFT_WORDS, MAX_WORDS = 40, 50, 90
PER_MODULE = 8
TOTAL = 700

MODULES = (
    "abc", "argparse", "ast", "asyncio.events", "asyncio.locks", "asyncio.queues",
    "asyncio.tasks", "base64", "bdb", "bisect", "calendar", "cmd", "codecs", "collections",
    "colorsys", "concurrent.futures", "configparser", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "dis", "doctest", "email.message",
    "email.utils", "enum", "filecmp", "fileinput", "fnmatch", "fractions", "ftplib",
    "functools", "getopt", "gettext", "glob", "gzip", "heapq", "hmac", "html.parser",
    "http.client", "http.cookiejar", "imaplib", "importlib.abc", "inspect", "io",
    "ipaddress", "json", "linecache", "locale", "logging", "logging.handlers", "mailbox",
    "mimetypes", "modulefinder", "netrc", "numbers", "operator", "optparse", "pathlib",
    "pickle", "pkgutil", "platform", "plistlib", "poplib", "pprint", "profile", "pstats",
    "queue", "quopri", "random", "re", "reprlib", "sched", "secrets", "selectors", "shelve",
    "shlex", "shutil", "smtplib", "socket", "socketserver", "statistics", "string", "struct",
    "subprocess", "tabnanny", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "tokenize", "trace", "traceback", "types", "typing", "unittest.case", "unittest.mock",
    "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "webbrowser",
    "xml.dom.minidom", "zipfile", "zipimport",
)

# A plain word: letters, maybe an apostrophe or hyphen inside, maybe quoted or bracketed,
# maybe followed by punctuation.
_WORD = re.compile(r"^[\"'(]?[A-Za-z][a-z]*(?:['-][A-Za-z][a-z]*)*[\"')]?[.,;:!?)]*$")
_SENTENCE_END = re.compile(r"[a-z)\"'][.!?][\"')]*$")
_ABBREVIATIONS = {"e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "resp."}


def _docs(module: Any) -> Iterator[str]:
    """The docstrings of a module, then of its public classes, functions and methods
    (defined in it, or in its C accelerator _name), sorted by name."""
    owners = {module.__name__, "_" + module.__name__}
    yield inspect.getdoc(module) or ""
    for name in sorted(vars(module)):
        obj = vars(module)[name]
        if name.startswith("_") or getattr(obj, "__module__", None) not in owners:
            continue
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        yield inspect.getdoc(obj) or ""
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                member = vars(obj)[attr]
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if not attr.startswith("_") and inspect.isroutine(member):
                    yield inspect.getdoc(member) or ""


def _prose(paragraph: str) -> str | None:
    """The paragraph, whitespace collapsed, if it reads as English prose; else None."""
    lines = paragraph.splitlines()
    if any(line.lstrip().startswith((">>>", "...")) for line in lines):
        return None  # a doctest
    kept = []
    for line in lines:
        visible = [c for c in line if not c.isspace()]
        if visible and sum(c.isalpha() for c in visible) / len(visible) >= 0.7:
            kept.append(line)
    words = " ".join(kept).split()
    if len(words) < 8 or sum(bool(_WORD.match(w)) for w in words) / len(words) < 0.8:
        return None
    if not words[0][0].isupper() or words[-1].endswith("::"):
        return None
    return " ".join(words)


def _sentence_end(word: str) -> bool:
    return bool(_SENTENCE_END.search(word)) and word.lower() not in _ABBREVIATIONS


def _chunks(words: list[str]) -> Iterator[list[str]]:
    """Consecutive chunks of MIN_WORDS..MAX_WORDS words; a short tail is dropped."""
    start = 0
    while len(words) - start >= MIN_WORDS:
        cut = None
        for i in range(start + SOFT_WORDS - 1, min(start + MAX_WORDS, len(words))):
            if _sentence_end(words[i]):
                cut = i + 1
                break
        if cut is None:
            if len(words) - start <= MAX_WORDS:
                cut = len(words)
            else:
                earlier = [i + 1 for i in range(start + MIN_WORDS - 1, start + SOFT_WORDS - 1)
                           if _sentence_end(words[i])]
                cut = earlier[-1] if earlier else start + MAX_WORDS
        yield words[start:cut]
        start = cut


def make_chunks() -> list[dict[str, str]]:
    """The corpus, in memory: [{"id": "c00000", "text": "..."}, ...]."""
    seen: set[str] = set()
    texts: list[str] = []
    for name in MODULES:
        with warnings.catch_warnings():  # typing.io and typing.re warn when looked at
            warnings.simplefilter("ignore", DeprecationWarning)
            module = importlib.import_module(name)
            docs = list(_docs(module))
        words: list[str] = []
        for doc in docs:
            for paragraph in re.split(r"\n\s*\n", doc):
                prose = _prose(paragraph)
                if prose and prose not in seen:
                    seen.add(prose)
                    words += prose.split()
        for n, chunk in enumerate(_chunks(words)):
            if n == PER_MODULE or len(texts) == TOTAL:
                break
            texts.append(" ".join(chunk))
    return [{"id": f"c{i:05d}", "text": text} for i, text in enumerate(texts)]


def render(chunks: list[dict[str, str]]) -> str:
    """The file's content: one JSON object a line."""
    return "".join(json.dumps(chunk, ensure_ascii=False) + "\n" for chunk in chunks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=CORPUS_PATH)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the file differs from what this makes")
    args = parser.parse_args(argv)
    if platform.python_version() != MADE_WITH:
        print(f"note: the committed corpus was made with Python {MADE_WITH}, this is "
              f"{platform.python_version()}: the output may differ", file=sys.stderr)
    text = render(make_chunks())
    if args.check:
        same = args.output.exists() and args.output.read_text(encoding="utf-8") == text
        print(f"{args.output}: {'up to date' if same else 'differs'}", file=sys.stderr)
        return 0 if same else 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}: {text.count(chr(10))} chunks, {len(text.encode())} bytes",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
