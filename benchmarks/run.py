"""`make bench`: run every benchmark in one invocation and write benchmarks/RESULTS.md."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import (bench_models, bench_priority, bench_queue, bench_rerank, bench_service,
                        bench_shared)

HERE = Path(__file__).resolve().parent


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE,
                               capture_output=True, text=True).stdout.strip()
        return out + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    sections = [("Queue", bench_queue.run), ("Priorities", bench_priority.run),
                ("Models", bench_models.run), ("Rerank", bench_rerank.run),
                ("Reload", bench_service.run), ("Many hosts (NATS JetStream)", bench_shared.run)]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"commit {_commit()}. Every figure comes with its reference, measured in the same run.",
        "",
    ]
    only = sys.argv[1:]  # section titles' first words: run those, print, write nothing
    if only:
        sections = [s for s in sections if s[0].split()[0].lower() in map(str.lower, only)]
    for title, bench in sections:
        print(f"running {title} ...", file=sys.stderr, flush=True)
        rows = bench()
        lines += [f"## {title}", "", "| measure | figure | ratio / target |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
        lines.append("")
    text = "\n".join(lines)
    if not only:
        (HERE / "RESULTS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
