"""The NATS JetStream test servers (tests/nats_servers.py) against real nats-server processes:
a work queue on one node survives SIGKILL; a 3-node cluster loses no acked message when a node
is killed mid-way, and the node rejoins; the fixtures end their processes, even on failure."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from conftest import pid_gone
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType

from tests.nats_servers import (NatsCluster, NatsNode, async_wait_until, jetstream, run,
                                running_node, wait_until)

REPO = Path(__file__).resolve().parents[2]
STREAM = "JOBS"


async def add_work_queue(js: Any, replicas: int = 1) -> None:
    await js.add_stream(name=STREAM, subjects=["jobs.>"], retention=RetentionPolicy.WORK_QUEUE,
                        storage=StorageType.FILE, num_replicas=replicas)


async def fetch_ids(sub: Any, count: int, timeout: float, ack: bool = True) -> list[str]:
    """Fetch until `count` messages arrived (a fetch returns what is there, maybe fewer than
    its batch, and raises a timeout when nothing is); ack each one (confirmed) if `ack`.
    `count` at most: more would be a redelivery, which the callers' assertions catch."""
    ids: list[str] = []
    deadline = time.monotonic() + timeout
    while len(ids) < count:
        assert time.monotonic() < deadline, f"fetched only {len(ids)} of {count}"
        try:
            msgs = await sub.fetch(min(50, count - len(ids)), timeout=1)
        except nats.errors.TimeoutError:
            continue
        except nats.errors.Error:  # e.g. 503 while the consumer elects a new leader
            await asyncio.sleep(0.1)
            continue
        for msg in msgs:
            ids.append(msg.headers["Nats-Msg-Id"])
            if ack:
                await msg.ack_sync()
    return ids


async def stream_messages(js: Any) -> int:
    return int((await js.stream_info(STREAM)).state.messages)


def test_single_node_work_queue_survives_sigkill(nats_server: NatsNode) -> None:
    node = nats_server
    assert node.url == f"nats://127.0.0.1:{node.port}"
    consumer = ConsumerConfig(durable_name="workers", ack_policy=AckPolicy.EXPLICIT, ack_wait=1)

    async def first_life() -> None:
        async with jetstream(node.url) as (_, js):
            await add_work_queue(js)
            for i in range(100):
                ack = await js.publish(f"jobs.{i % 4}", b"job %d" % i,
                                       headers={"Nats-Msg-Id": f"job-{i}"})
                assert (ack.stream, ack.seq, ack.duplicate) == (STREAM, i + 1, None)
            again = await js.publish("jobs.0", b"job 0", headers={"Nats-Msg-Id": "job-0"})
            assert (again.seq, again.duplicate) == (1, True)
            assert await stream_messages(js) == 100

            sub = await js.pull_subscribe("jobs.>", durable="workers", stream=STREAM,
                                          config=consumer)
            ids = await fetch_ids(sub, 100, timeout=30)
            assert sorted(ids) == sorted(f"job-{i}" for i in range(100))
            assert await stream_messages(js) == 0  # a work queue drops what is acked

            for i in range(100, 110):
                await js.publish("jobs.1", b"later", headers={"Nats-Msg-Id": f"job-{i}"})
            taken = await fetch_ids(sub, 3, timeout=30, ack=False)
            assert len(taken) == 3
            info = await js.consumer_info(STREAM, "workers")
            assert (info.num_ack_pending, info.num_pending) == (3, 7)

    run(first_life())
    pid = node.pid
    assert pid is not None
    node.kill()
    assert pid_gone(pid)
    node.restart()
    assert node.pid != pid

    async def second_life() -> None:
        async with jetstream(node.url) as (_, js):
            state = (await js.stream_info(STREAM)).state
            assert (state.messages, state.first_seq, state.last_seq) == (10, 101, 110)
            again = await js.publish("jobs.1", b"later", headers={"Nats-Msg-Id": "job-105"})
            assert (again.seq, again.duplicate) == (106, True)  # the ids survive too
            info = await js.consumer_info(STREAM, "workers")  # the durable survives
            assert info.num_ack_pending + info.num_pending == 10
            sub = await js.pull_subscribe_bind("workers", stream=STREAM)
            ids = await fetch_ids(sub, 10, timeout=30)  # the 3 taken come back after ack_wait
            assert sorted(ids) == sorted(f"job-{i}" for i in range(100, 110))
            assert await stream_messages(js) == 0

    run(second_life())


def test_cluster_loses_no_acked_message_when_a_node_is_killed(
        nats_cluster: NatsCluster) -> None:
    cluster = nats_cluster
    assert len(cluster.urls) == 3 and len(set(cluster.urls)) == 3
    assert cluster.meta_leader() is not None
    total = 200

    async def create() -> str:
        async with jetstream(cluster.urls) as (_, js):
            await add_work_queue(js, replicas=3)
            info = await js.stream_info(STREAM)
            assert info.config.num_replicas == 3
            assert info.cluster is not None and info.cluster.leader
            await js.add_consumer(STREAM, ConsumerConfig(durable_name="workers",
                                                         ack_policy=AckPolicy.EXPLICIT))
            return str(info.cluster.leader)

    # The victim leads the stream and holds the publisher's connection: killing it makes
    # both a leader election and a client reconnect.
    victim = cluster.node(run(create()))
    wait_until(lambda: cluster.stream_replicas_current(STREAM), 30, "3 current replicas")
    others = [n.url for n in cluster.nodes if n is not victim]
    acked: dict[str, int] = {}
    retries = 0

    async def publish_all() -> None:
        nonlocal retries
        async with jetstream([victim.url, *others], dont_randomize=True) as (nc, js):
            assert nc.connected_url.port == victim.port
            deadline = time.monotonic() + 60
            for i in range(total):
                if i == total // 2:
                    victim.kill()
                while True:  # resending the same Nats-Msg-Id cannot store a message twice
                    try:
                        ack = await js.publish(f"jobs.{i % 4}", b"job %d" % i, timeout=2,
                                               headers={"Nats-Msg-Id": f"job-{i}"})
                        acked[f"job-{i}"] = ack.seq
                        break
                    except (nats.errors.Error, asyncio.TimeoutError):
                        retries += 1
                        assert time.monotonic() < deadline, f"could not publish job-{i}"
                        await asyncio.sleep(0.1)
            assert nc.connected_url.port != victim.port

    run(publish_all())
    assert retries > 0  # the stream had no leader for a while: the kill did bite
    assert victim.pid is not None and pid_gone(victim.pid)
    assert len(acked) == total and sorted(acked.values()) == list(range(1, total + 1))

    async def consume() -> None:
        async with jetstream(others) as (_, js):
            state = (await js.stream_info(STREAM)).state
            assert (state.messages, state.last_seq) == (total, total)
            sub = await js.pull_subscribe_bind("workers", stream=STREAM)
            ids = await fetch_ids(sub, total, timeout=60)  # after its leader moved, maybe
            assert sorted(ids) == sorted(acked)  # 0 lost, none twice

            async def drained() -> bool:  # in a cluster, acked leaves the stream later
                return await stream_messages(js) == 0
            await async_wait_until(drained, 30, "the acked messages to leave the stream")

    run(consume())
    victim.restart()
    wait_until(lambda: cluster.stream_replicas_current(STREAM), 30,
               f"{victim.name} to be a current replica again")

    def caught_up() -> bool:
        state = (cluster.stream_details(victim, STREAM) or {}).get("state") or {}
        return state.get("last_seq") == total and state.get("messages") == 0
    wait_until(caught_up, 30, f"{victim.name}'s own replica to catch up")
    cluster.wait_formed()
    print(f"publish retries while {victim.name} was down: {retries}")


def test_stop_and_kill_end_the_processes(tmp_path: Path) -> None:
    with running_node(tmp_path / "a") as node:
        pid = node.pid
        assert pid is not None and not pid_gone(pid)
        node.pause()
        assert node.monitor("/healthz", timeout=0.5) is None  # stopped: it answers nothing
        node.resume()
        wait_until(node.healthy, 30, "the resumed node's health")
        node.pause()  # stop() resumes a paused node first
    assert pid_gone(pid)

    with pytest.raises(RuntimeError, match="inside"):
        with running_node(tmp_path / "b") as node:
            pid = node.pid
            raise RuntimeError("a failure inside the block")
    assert pid is not None and pid_gone(pid)


def test_fixture_teardown_ends_the_processes_of_a_failing_test(tmp_path: Path) -> None:
    """A failing test using the fixtures, in a pytest of its own; then its pids are gone."""
    pids = tmp_path / "pids"
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(f"""\
        import os
        from tests.nats_servers import nats_cluster, nats_server

        def record(pid):
            os.kill(pid, 0)
            with open({str(pids)!r}, "a") as f:
                f.write(f"{{pid}}\\n")

        def test_node(nats_server):
            record(nats_server.pid)
            assert False, "deliberate"

        def test_cluster(nats_cluster):
            for node in nats_cluster.nodes:
                record(node.pid)
            raise RuntimeError("deliberate")
        """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")]).rstrip(os.pathsep))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--basetemp={tmp_path / 'inner'}", "test_inner.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 failed" in result.stdout, result.stdout
    assert "Server is ready" in result.stdout  # the log tails, shown for the failed tests
    recorded = [int(line) for line in pids.read_text().split()]
    assert len(set(recorded)) == 4
    for pid in recorded:
        assert pid_gone(pid), f"nats-server pid {pid} outlived its test"


def test_a_port_taken_before_the_first_start_is_replaced(tmp_path: Path) -> None:
    """The race of choosing a free port and binding it, lost on purpose: new ports, again."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        node = NatsNode(tmp_path / "single")
        node.set_ports(port, node.http_port)
        try:
            node.start()
            assert node.port != port and node.accepts_clients()
            assert "address already in use" in node.log_path.read_text()
        finally:
            node.stop()

        cluster = NatsCluster(tmp_path / "cluster")
        victim = cluster.nodes[1]
        victim.set_ports(victim.port, victim.http_port, port, cluster.nodes[0].routes)
        try:
            cluster.start()
            assert all(node.running for node in cluster.nodes)
            assert port not in [node.cluster_port for node in cluster.nodes]
        finally:
            cluster.stop()
