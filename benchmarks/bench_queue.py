"""Queue benchmark: no-op jobs through a real daemon vs a raw pyzmq DEALER/ROUTER echo.

Both run in the same invocation on the same machine, so the ratio means something on a
shared, noisy machine where absolute figures drift.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from supervisor.client import Client
from supervisor.conf.config import load_config
from supervisor.proto import control
from supervisor.proto.paths import StatePaths

N_JOBS = 20_000
N_ROUND_TRIPS = 1_000
N_BESIDE = 1_000  # echo jobs mapped beside a long job
NAP_TASKS = """\
import time
from workers import task


@task("nap")
def nap(seconds):
    time.sleep(seconds)
    return seconds
"""


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


def _timed_map(client: Client, payloads: list[Any]) -> float:
    t0 = time.perf_counter()
    assert list(client.map("echo", payloads)) == payloads
    return time.perf_counter() - t0


def beside_long_job(n_jobs: int, repeats: int = 3) -> dict[str, float]:
    """A map of echo jobs, 2 workers: idle; while a long job runs on one worker; and with
    the long job first in the same submit (the worker that takes it holds more behind it).
    Medians of `repeats` runs each, in one daemon."""
    with tempfile.TemporaryDirectory(prefix="dbl") as tmp:
        (Path(tmp) / "naps.py").write_text(NAP_TASKS)
        config_path = Path(tmp) / "bench.toml"
        config_path.write_text(f'[supervisor]\nstate_dir = "{tmp}/state"\n'
                               f'[workers]\ncount = 2\ntasks = ["naps"]\n'
                               f'[env]\nPYTHONPATH = "{tmp}"\n')
        ctl = [sys.executable, "-m", "supervisor", "--config", str(config_path)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([tmp, *sys.path])}
        subprocess.run([*ctl, "start"], check=True, capture_output=True, env=env)
        payloads = list(range(n_jobs))
        idle, beside, behind = [], [], []
        try:
            with Client(load_config(str(config_path))) as client:
                _timed_map(client, payloads)  # warm up
                for _ in range(repeats):
                    idle.append(_timed_map(client, payloads))
                    long_id = client.submit("nap", 3.0)
                    _wait_running(client, long_id, tmp)
                    beside.append(_timed_map(client, payloads))
                    client.result(long_id, timeout=60)
                    t0 = time.perf_counter()
                    ids = [client.submit_many_nowait("nap", [3.0])[0],
                           *client.submit_many_nowait("echo", payloads)]
                    assert [client.result(i, timeout=60) for i in ids[1:]] == payloads
                    behind.append(time.perf_counter() - t0)
                    client.result(ids[0], timeout=60)
        finally:
            subprocess.run([*ctl, "stop"], check=True, capture_output=True, env=env)
    return {"idle_s": statistics.median(idle), "beside_s": statistics.median(beside),
            "behind_s": statistics.median(behind)}


def _wait_running(client: Client, job_id: str, tmp: str) -> None:
    """Until the job has run for a while on its worker (by the daemon's own account)."""
    endpoint = StatePaths.for_state_dir(f"{tmp}/state").endpoint("control")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        workers = control.call(endpoint, "status", {}, timeout=10)["workers"]
        if any(w.get("current_job") == job_id and (w.get("current_job_s") or 0) > 0.2
               for w in workers):
            return
        time.sleep(0.05)
    raise RuntimeError(f"job {job_id} did not start within 30 s")


def run() -> list[tuple[str, str, str]]:
    """Rows of (measure, figure, ratio or target) for RESULTS.md."""
    raw = raw_zmq(N_JOBS, N_ROUND_TRIPS)
    daemon = through_daemon(N_JOBS, N_ROUND_TRIPS)
    long = beside_long_job(N_BESIDE)
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
        (f"reference: a map of {N_BESIDE:,} echo jobs, 2 idle workers (median of 3)",
         f"{long['idle_s']:.3f} s", "reference"),
        ("the same map while a 3 s job runs on one worker",
         f"{long['beside_s']:.3f} s", f"{long['beside_s'] / long['idle_s']:.2f}× idle; "
         "target ≤ 1.5×"),
        ("the same map submitted right behind a 3 s job (its worker held jobs behind it)",
         f"{long['behind_s']:.3f} s", f"{long['behind_s'] / long['idle_s']:.2f}× idle"),
    ]
