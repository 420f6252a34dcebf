"""Many hosts benchmark: one queue on NATS JetStream (`[queue] backend = "nats"`).

"Hosts" are daemons with state_dirs of their own on this machine, on real nats-servers
(one node, then a 3-node cluster with 3 replicas) started here in temporary directories.
Each figure is measured next to its reference in the same invocation:
- no-op jobs/s, 2 hosts x 2 workers, submitted by a client with no daemon (it talks to
  NATS itself), vs raw nats-py (publish with acknowledgement, pull, ack: the least a
  durable work queue on JetStream does) on the same servers, and vs the SQLite backend
  (one host, 2 workers) with the same client API;
- embedding throughput on one host through its daemon, NATS vs SQLite;
- kill -9 of a host's daemon: until the jobs it was running ended on the other host.
All hosts share this machine's 2 cores with the servers and the client: the figures are
of the whole system on one machine, not of a host.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.corpus import load_texts
from supervisor.client import Client
from supervisor.conf.config import load_config
from supervisor.proto import control
from supervisor.proto.paths import StatePaths
from tests.nats_servers import NatsCluster, NatsNode

N_JOBS = 5_000
N_RAW = 20_000
ACK_WAIT = 5
NAP_TASKS = """\
import time
from workers import task


@task("nap")
def nap(seconds):
    time.sleep(seconds)
    return seconds
"""


def _nats_config(servers: list[str], replicas: int, stream: str) -> str:
    listed = ", ".join(f'"{url}"' for url in servers)
    return (f'[queue]\nbackend = "nats"\n[queue.nats]\nservers = [{listed}]\n'
            f'stream = "{stream}"\nreplicas = {replicas}\nack_wait = {ACK_WAIT}\n')


@contextlib.contextmanager
def _hosts(root: Path, count: int, queue: str, workers: int = 2, credit: int = 16
           ) -> Iterator[tuple[list[list[str]], Path]]:
    """`count` daemons (own state_dirs, the nap task) with this [queue] configuration;
    yields their docbrainctl argv prefixes and a client's configuration (no daemon)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "naps.py").write_text(NAP_TASKS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
    ctls = []
    try:
        for index in range(count):
            config = root / f"host{index}.toml"
            config.write_text(f'[supervisor]\nstate_dir = "{root}/host{index}"\n'
                              f'[workers]\ncount = {workers}\ncredit = {credit}\ntasks = ["naps"]\n'
                              f'[env]\nPYTHONPATH = "{root}"\n{queue}')
            ctl = [sys.executable, "-m", "supervisor", "--config", str(config)]
            subprocess.run([*ctl, "start"], check=True, capture_output=True, env=env)
            ctls.append(ctl)
        client = root / "client.toml"
        client.write_text(f'[supervisor]\nstate_dir = "{root}/client"\n{queue}')
        yield ctls, client
    finally:
        for ctl in ctls:
            subprocess.run([*ctl, "stop"], capture_output=True, env=env)


def _map_rate(config: Path, task: str, payloads: list[Any], window: int = 1000) -> float:
    with Client(str(config), window=window) as client:
        list(client.map(task, payloads[:500], timeout=600))  # warm up
        t0 = time.perf_counter()
        results = list(client.map(task, payloads, timeout=600))
        rate = len(payloads) / (time.perf_counter() - t0)
    assert len(results) == len(payloads)
    return rate


def raw_nats(servers: list[str], replicas: int, n: int) -> float:
    """Messages/s: publish each with its acknowledgement (256 in flight) while a pull
    consumer fetches (256 at a time) and acks them, on a work-queue stream."""
    async def go() -> float:
        import nats
        from nats.js import api

        nc = await nats.connect(servers=servers)
        js = nc.jetstream(timeout=30)
        stream = f"RAW{replicas}"
        await js.add_stream(api.StreamConfig(
            name=stream, subjects=[f"{stream}.>"], retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE, num_replicas=replicas))
        sub = await js.pull_subscribe(f"{stream}.>", durable="raw",
                                      config=api.ConsumerConfig(ack_wait=30, max_ack_pending=-1))
        body = b'{"payload": null}'

        async def produce() -> None:
            for start in range(0, n, 256):
                await asyncio.gather(*(js.publish(f"{stream}.{i}", body, headers={
                    "Nats-Msg-Id": str(i)}) for i in range(start, min(n, start + 256))))

        async def consume() -> None:
            got = 0
            while got < n:
                try:
                    msgs = await sub.fetch(256, timeout=1)
                except asyncio.TimeoutError:
                    continue
                await asyncio.gather(*(m.ack() for m in msgs))
                got += len(msgs)

        t0 = time.perf_counter()
        await asyncio.gather(produce(), consume())
        await nc.flush()
        rate = n / (time.perf_counter() - t0)
        await js.delete_stream(stream)
        await nc.close()
        return rate
    return asyncio.run(go())


def _running_jobs(ctl: list[str]) -> list[str]:
    config = load_config(ctl[-1])
    endpoint = StatePaths.for_state_dir(config.supervisor.state_dir).endpoint("control")
    workers = control.call(endpoint, "status", {}, timeout=10)["workers"]
    return [w["current_job"] for w in workers if w.get("current_job")]


def host_killed(root: Path, url: str) -> dict[str, float]:
    """2 hosts x 2 workers (credit 1: each holds the job it runs) run 4 jobs of 2 s; host
    0's daemon gets SIGKILL while its workers run 2 of them: seconds until those 2 ended
    on host 1."""
    with _hosts(root, 2, _nats_config([url], 1, "KILL"), credit=1) as (ctls, client_config):
        with Client(str(client_config)) as client:
            ids = client.submit_many_nowait("nap", [2.0] * 4)
            deadline = time.monotonic() + 60
            while len(_running_jobs(ctls[0])) < 2 or len(_running_jobs(ctls[1])) < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError("the 4 jobs did not all start within 60 s")
                time.sleep(0.05)
            theirs = _running_jobs(ctls[0])
            config = load_config(ctls[0][-1])
            paths = StatePaths.for_state_dir(config.supervisor.state_dir)
            pid = int(Path(paths.pidfile).read_text().split()[0])
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            for job_id in theirs:
                client.result(job_id, timeout=120)
            elapsed = time.perf_counter() - t0
            for job_id in ids:
                client.result(job_id, timeout=120)
    return {"seconds": elapsed, "jobs": len(theirs)}


def run() -> list[tuple[str, str, str]]:
    """Rows of (measure, figure, ratio or target) for RESULTS.md."""
    texts = load_texts()
    with tempfile.TemporaryDirectory(prefix="dbs") as tmp:
        root = Path(tmp)
        node = NatsNode(root / "node").start()
        try:
            raw1 = raw_nats([node.url], 1, N_RAW)
            with _hosts(root / "n1", 2, _nats_config([node.url], 1, "ONE")) as (_, client):
                one = _map_rate(client, "noop", list(range(N_JOBS)))
            with _hosts(root / "e1", 1, _nats_config([node.url], 1, "EMBED")) as (ctls, _):
                embed_nats = _map_rate(Path(ctls[0][-1]), "embed",
                                       [{"text": t} for t in texts], window=len(texts))
            killed = host_killed(root / "k1", node.url)
        finally:
            node.stop()
        with _hosts(root / "sq", 1, "") as (ctls, _):
            sqlite = _map_rate(Path(ctls[0][-1]), "noop", list(range(N_JOBS)))
            embed_sqlite = _map_rate(Path(ctls[0][-1]), "embed",
                                     [{"text": t} for t in texts], window=len(texts))
        cluster = NatsCluster(root / "cluster").start()
        try:
            raw3 = raw_nats(cluster.urls, 3, N_RAW)
            with _hosts(root / "n3", 2, _nats_config(cluster.urls, 3, "THREE")) as (_, client):
                three = _map_rate(client, "noop", list(range(N_JOBS)))
        finally:
            cluster.stop()
    return [
        (f"raw nats-py on one server: publish with ack, pull, ack ({N_RAW:,} messages)",
         f"{raw1:,.0f} msgs/s", "reference"),
        (f"no-op jobs, 2 hosts x 2 workers, one server, client without daemon ({N_JOBS:,})",
         f"{one:,.0f} jobs/s", f"{one / raw1:.2f}× raw; {one / sqlite:.2f}× SQLite; "
         "target ≥ 10,000 jobs/s"),
        (f"raw nats-py on a 3-node cluster, 3 replicas ({N_RAW:,} messages)",
         f"{raw3:,.0f} msgs/s", "reference"),
        ("no-op jobs, 2 hosts x 2 workers, 3-node cluster, 3 replicas",
         f"{three:,.0f} jobs/s", f"{three / raw3:.2f}× raw; target ≥ 5,000 jobs/s"),
        (f"reference: no-op jobs, SQLite backend, one host x 2 workers ({N_JOBS:,}, Client.map)",
         f"{sqlite:,.0f} jobs/s", "reference"),
        (f"embed {len(texts)} chunks, one host x 2 workers, NATS backend (through the daemon)",
         f"{embed_nats:.1f} chunks/s", f"{embed_nats / embed_sqlite:.2f}× SQLite; "
         "target ≥ 0.95×"),
        ("reference: the same on the SQLite backend", f"{embed_sqlite:.1f} chunks/s",
         "reference"),
        (f"kill -9 of a host's daemon running {killed['jobs']:.0f} jobs: until they ended on "
         "the other host", f"{killed['seconds']:.2f} s",
         f"ack_wait {ACK_WAIT} s; target ≤ ack_wait + 5 s"),
    ]


if __name__ == "__main__":
    for row in run():
        print(" | ".join(row))
