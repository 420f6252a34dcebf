"""doctor's queue check on made-up answers of NATS: the cases a single server here does not
produce (replicas behind, a consumer another host configured). Real servers are in
tests/system/test_nats_doctor.py."""

from __future__ import annotations

from typing import Any

from supervisor.conf.settings import Config, NatsSettings, QueueSettings
from supervisor.doctor.queue import SharedQueue, judge

SERVERS = ("nats://10.0.0.5:4222", "nats://10.0.0.6:4222", "nats://10.0.0.7:4222")


def _config(**nats: Any) -> Config:
    return Config(queue=QueueSettings(backend="nats", nats=NatsSettings(**nats)))


def _queue(replicas: int = 3, problems: tuple[str, ...] = (), ack_wait: float = 30.0,
           behind: tuple[str, ...] = ()) -> SharedQueue:
    cluster = {"leader": "n1", "replicas": [
        {"name": name, "current": name not in behind, "lag": 7 if name in behind else 0}
        for name in ("n2", "n3")]}
    return SharedQueue(", ".join(SERVERS), server=SERVERS[0],
                       stream={"replicas": replicas, "messages": 12, "problems": problems},
                       consumer={"ack_wait": ack_wait, "waiting": 10, "leased": 2,
                                 "redelivered": 1},
                       cluster=cluster)


def _verdict(config: Config, shared: SharedQueue | None) -> tuple[str, str, str]:
    verdict = judge(config, shared)
    return str(verdict.status), verdict.detail, verdict.advice


def test_the_sqlite_backend_needs_nothing_of_nats() -> None:
    status, detail, _ = _verdict(Config(), None)
    assert status == "PASS" and "SQLite" in detail


def test_a_healthy_cluster_says_where_and_how_many() -> None:
    status, detail, _ = _verdict(_config(servers=SERVERS, replicas=3), _queue())
    assert status == "PASS"
    assert detail == (f"{SERVERS[0]}: stream DOCBRAIN, 3 replica(s), leader n1, all current: "
                      "10 waiting, 2 leased, 1 redelivered")


def test_unreachable_servers_fail_with_the_reason() -> None:
    shared = SharedQueue(", ".join(SERVERS), error="NATS servers unreachable (...): refused")
    status, detail, advice = _verdict(_config(servers=SERVERS), shared)
    assert status == "FAIL" and "unreachable" in detail and "[queue.nats]" in advice


def test_a_stream_that_differs_fails() -> None:
    shared = _queue(problems=("1 replicas (not 3, as queue.nats.replicas says)",))
    status, detail, advice = _verdict(_config(servers=SERVERS, replicas=3), shared)
    assert status == "FAIL" and "1 replicas (not 3" in detail and "refuse" in advice


def test_a_replica_behind_is_named() -> None:
    status, detail, _ = _verdict(_config(servers=SERVERS, replicas=3), _queue(behind=("n3",)))
    assert status == "WARN" and "n3 (lag 7)" in detail and "n2" not in detail


def test_one_replica_on_several_servers_is_a_single_point_of_failure() -> None:
    status, detail, advice = _verdict(_config(servers=SERVERS, replicas=1), _queue(replicas=1))
    assert status == "WARN" and "replicas = 1" in detail and "replicas = 3" in advice


def test_another_hosts_ack_wait_is_pointed_out() -> None:
    status, detail, _ = _verdict(_config(servers=SERVERS, replicas=3, ack_wait=30),
                              _queue(ack_wait=60))
    assert status == "WARN" and "60 s" in detail and "30 s" in detail


def test_a_stream_not_created_yet_is_fine() -> None:
    shared = SharedQueue(SERVERS[0], server=SERVERS[0])
    status, detail, _ = _verdict(_config(), shared)
    assert status == "PASS" and "does not exist yet" in detail
