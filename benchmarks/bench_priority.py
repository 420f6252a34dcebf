"""A question during an ingest: priorities through the daemon, each figure beside its
reference in the same run.

One daemon with the default model and 2 workers:
- idle: QUERIES single-query embed jobs at priority 9, one by one (submit, then result);
- bulk alone: BULK single-chunk embed jobs at priority 1, all submitted at once, until the
  last result; and the same at the default priority, which is batched as before;
- mixed: the same bulk submitted at once, and while it runs, the same queries one by one
  from a second client: their latency against idle's, the bulk's throughput against alone.
Then idle and mixed again with the queue on NATS JetStream (one server, one host): the
priorities as subjects and consumers of their own (supervisor.jobs.jetstream).
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_models import daemon
from benchmarks.corpus import load_texts
from supervisor.client import Client
from supervisor.conf.config import load_config
from tests.nats_servers import NatsNode

BULK = 4_000
QUERIES = 50
SUBMIT_AT_ONCE = 500  # jobs per submit_many_nowait while queueing the bulk


def _queries() -> list[str]:
    """Short questions, as a user would type them: the first words of some chunks."""
    return [" ".join(text.split()[:8]) + "?" for text in load_texts()[:QUERIES]]


def _ask(client: Client, queries: list[str]) -> list[float]:
    """Each query's latency in seconds, one after the other."""
    latencies = []
    for query in queries:
        began = time.perf_counter()
        result = client.result(client.submit("embed", {"text": query}, priority=9),
                               timeout=600)
        latencies.append(time.perf_counter() - began)
        assert len(result["embeddings"]) == 1 and result["dim"] == 384
    return latencies


def _ingest(client: Client, chunks: list[str], queued: threading.Event | None = None,
            priority: int = 1) -> float:
    """Submit every chunk as a job of `priority`, then wait for all; seconds it took."""
    began = time.perf_counter()
    ids: list[str] = []
    for start in range(0, len(chunks), SUBMIT_AT_ONCE):
        part = chunks[start:start + SUBMIT_AT_ONCE]
        ids += client.submit_many_nowait("embed", [{"text": t} for t in part],
                                         priority=priority)
    if queued is not None:
        queued.set()
    for job_id in ids:
        assert client.result(job_id, timeout=1200)["dim"] == 384
    return time.perf_counter() - began


def _p99(samples: list[float]) -> float:
    return sorted(samples)[max(0, int(len(samples) * 0.99) - 1)] if samples else 0.0


def _mixed(client: Client, asker: Client, chunks: list[str],
           queries: list[str]) -> tuple[float, list[float]]:
    """The bulk, and the queries one by one once it is queued: (its seconds, latencies)."""
    queued = threading.Event()
    busy: list[float] = []

    def ask_when_queued() -> None:
        queued.wait(600)
        busy.extend(_ask(asker, queries))

    thread = threading.Thread(target=ask_when_queued, daemon=True)
    thread.start()
    seconds = _ingest(client, chunks, queued)
    thread.join(600)
    return seconds, busy


def measure_nats(chunks: list[str], queries: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dbq") as tmp:
        node = NatsNode(Path(tmp) / "node").start()
        try:
            more = (f'[queue]\nbackend = "nats"\n[queue.nats]\nservers = ["{node.url}"]\n'
                    'stream = "QUESTIONS"\n')
            with daemon(2, more=more) as (ctl, _started):
                config = load_config(ctl[-1])
                with Client(config) as client, Client(config) as asker:
                    _ask(asker, queries[:5])  # warm up
                    idle = _ask(asker, queries)
                    mixed, busy = _mixed(client, asker, chunks, queries)
        finally:
            node.stop()
    return {"idle_p50": statistics.median(idle), "idle_p99": _p99(idle),
            "busy_p50": statistics.median(busy), "busy_p99": _p99(busy),
            "mixed_per_s": BULK / mixed}


def measure() -> dict[str, Any]:
    chunks = list(itertools.islice(itertools.cycle(load_texts()), BULK))
    queries = _queries()
    with daemon(2) as (ctl, _started):
        config = load_config(ctl[-1])
        with Client(config) as client, Client(config) as asker:
            _ask(asker, queries[:5])  # warm up
            idle = _ask(asker, queries)
            alone = _ingest(client, chunks)
            default = _ingest(client, chunks, priority=5)
            mixed, busy = _mixed(client, asker, chunks, queries)
    return {"idle_p50": statistics.median(idle), "idle_p99": _p99(idle),
            "busy_p50": statistics.median(busy), "busy_p99": _p99(busy),
            "alone_per_s": BULK / alone, "mixed_per_s": BULK / mixed,
            "default_per_s": BULK / default, "nats": measure_nats(chunks, queries)}


def run() -> list[tuple[str, str, str]]:
    """Rows of (measure, figure, ratio or target) for RESULTS.md."""
    m = measure()
    n, ms = m["nats"], 1000.0
    return [
        (f"{QUERIES} query embed jobs (priority 9), one by one, idle daemon, 2 workers: "
         "latency p50 / p99", f"{m['idle_p50'] * ms:.1f} / {m['idle_p99'] * ms:.1f} ms",
         "reference"),
        (f"the same queries while {BULK:,} single-chunk embed jobs (priority 1) are queued",
         f"{m['busy_p50'] * ms:.1f} / {m['busy_p99'] * ms:.1f} ms",
         f"p99 {m['busy_p99'] / m['idle_p99']:.2f}× idle; target ≤ 3×"),
        (f"reference: {BULK:,} single-chunk embed jobs (priority 1) alone",
         f"{m['alone_per_s']:.1f} chunks/s", "reference"),
        ("the same bulk with the queries mixed in", f"{m['mixed_per_s']:.1f} chunks/s",
         f"{m['mixed_per_s'] / m['alone_per_s']:.2f}× alone; target ≥ 0.95×"),
        ("the same bulk at the default priority (batches of up to the credit, 16)",
         f"{m['default_per_s']:.1f} chunks/s",
         f"priority 1 alone: {m['alone_per_s'] / m['default_per_s']:.2f}× this: the cost of "
         "its batches of workers.low_priority_batch (2)"),
        ("NATS backend (one server, one host x 2 workers): the queries, idle",
         f"{n['idle_p50'] * ms:.1f} / {n['idle_p99'] * ms:.1f} ms",
         f"p99 {n['idle_p99'] / m['idle_p99']:.2f}× SQLite's idle"),
        (f"NATS: the queries while the {BULK:,} priority-1 jobs are queued",
         f"{n['busy_p50'] * ms:.1f} / {n['busy_p99'] * ms:.1f} ms",
         f"p99 {n['busy_p99'] / n['idle_p99']:.2f}× NATS idle; target ≤ 3×"),
        ("NATS: the bulk with the queries mixed in", f"{n['mixed_per_s']:.1f} chunks/s",
         f"{n['mixed_per_s'] / m['alone_per_s']:.2f}× SQLite's bulk alone"),
    ]


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
