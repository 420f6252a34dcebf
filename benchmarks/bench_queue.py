"""Queue benchmark: no-op jobs through a real daemon vs a raw pyzmq DEALER/ROUTER echo.

Both run in the same invocation on the same machine, so the ratio means something on a
shared, noisy machine where absolute figures drift.
"""

from __future__ import annotations

import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from supervisor.client import Client
from supervisor.config import load_config

N_JOBS = 20_000
N_ROUND_TRIPS = 1_000


def _echo_server(endpoint: str, ready: Any) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.SNDHWM, 0)  # a ROUTER drops what is over its high-water mark
    sock.bind(endpoint)
    ready.set()
    while True:
        frames = sock.recv_multipart()
        if frames[1] == b"stop":
            sock.send_multipart(frames)
            return
        sock.send_multipart(frames)


def raw_zmq(n_msgs: int, n_round_trips: int) -> dict[str, float]:
    """A DEALER pipelining to a ROUTER echo in another process, and one-at-a-time trips."""
    with tempfile.TemporaryDirectory(prefix="dbz") as tmp:
        endpoint = f"ipc://{tmp}/echo.sock"
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Event()
        server = ctx.Process(target=_echo_server, args=(endpoint, ready))
        server.start()
        ready.wait(30)
        zctx = zmq.Context()
        sock = zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(endpoint)
        body = b"x" * 40
        t0 = time.perf_counter()
        window, sent, received = 256, 0, 0
        while received < n_msgs:
            while sent < n_msgs and sent - received < window:
                sock.send_multipart([b"\x01\x08", body])
                sent += 1
            sock.recv_multipart()
            received += 1
        throughput = n_msgs / (time.perf_counter() - t0)
        trips = []
        for _ in range(n_round_trips):
            t = time.perf_counter()
            sock.send_multipart([b"\x01\x08", body])
            sock.recv_multipart()
            trips.append(time.perf_counter() - t)
        sock.send_multipart([b"stop"])
        sock.recv_multipart()
        server.join(10)
        sock.close(0)
        zctx.term()
    return {"msgs_per_s": throughput, **_percentiles(trips)}


def _percentiles(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=100)
    return {"p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000}


def through_daemon(n_jobs: int, n_round_trips: int, workers: int = 2) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dbq") as tmp:
        config_path = Path(tmp) / "bench.toml"
        config_path.write_text(f'[supervisor]\nstate_dir = "{tmp}/state"\n'
                               f"[workers]\ncount = {workers}\n")
        ctl = [sys.executable, "-m", "supervisor", "--config", str(config_path)]
        subprocess.run([*ctl, "start"], check=True, capture_output=True)
        try:
            with Client(load_config(str(config_path))) as client:
                list(client.map("noop", range(2000)))  # warm up
                t0 = time.perf_counter()
                results = list(client.map("noop", range(n_jobs)))
                throughput = n_jobs / (time.perf_counter() - t0)
                assert len(results) == n_jobs
                trips = []
                for i in range(n_round_trips):
                    t = time.perf_counter()
                    client.result(client.submit("noop", i), timeout=30)
                    trips.append(time.perf_counter() - t)
        finally:
            subprocess.run([*ctl, "stop"], check=True, capture_output=True)
    return {"jobs_per_s": throughput, **_percentiles(trips)}


def run() -> list[tuple[str, str, str]]:
    """Rows of (measure, figure, ratio or target) for RESULTS.md."""
    raw = raw_zmq(N_JOBS, N_ROUND_TRIPS)
    daemon = through_daemon(N_JOBS, N_ROUND_TRIPS)
    return [
        ("raw pyzmq DEALER/ROUTER echo, 2 processes, pipelined",
         f"{raw['msgs_per_s']:,.0f} msgs/s", "reference"),
        ("raw pyzmq echo round trip p50 / p99",
         f"{raw['p50_ms']:.3f} / {raw['p99_ms']:.3f} ms", "reference"),
        (f"no-op jobs end to end, 2 workers, durable journal ({N_JOBS:,} jobs, Client.map)",
         f"{daemon['jobs_per_s']:,.0f} jobs/s",
         f"{daemon['jobs_per_s'] / raw['msgs_per_s']:.2f}× raw echo; target ≥ 10,000 jobs/s"),
        ("single job round trip (submit, then result) p50 / p99",
         f"{daemon['p50_ms']:.3f} / {daemon['p99_ms']:.3f} ms",
         f"p50 {daemon['p50_ms'] / raw['p50_ms']:.1f}× raw echo; target p50 ≤ 0.5 ms"),
    ]
