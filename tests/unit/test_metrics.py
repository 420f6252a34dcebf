"""The Prometheus endpoint: real HTTP scrapes of a real server on 127.0.0.1, parsed with
prometheus_client's own parser, and the exact values checked."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.daemon.metrics import RESTART_REASONS, Metrics, MetricsError
from supervisor.jobs.journal import STATES
from supervisor.pool.lifecycle import WorkerState

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> tuple[set[str], Samples]:
    """(family name: type, for every family; every sample) of one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    families, samples = set(), {}
    for family in text_string_to_metric_families(text):
        families.add(f"{family.name}:{family.type}")
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def with_prefix(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics(version="9.8.7", started=time.monotonic() - 100)
    m.start("127.0.0.1", 0)
    yield m
    m.stop()


def test_families_and_initial_values(metrics: Metrics) -> None:
    assert metrics.port
    families, samples = scrape(metrics.port)
    assert {"docbrain_workers:gauge", "docbrain_worker_restarts:counter", "docbrain_jobs:gauge",
            "docbrain_queue_depth:gauge", "docbrain_jobs_finished:counter",
            "docbrain_job_duration_seconds:histogram", "docbrain_info:gauge",
            "docbrain_uptime_seconds:gauge"} <= families
    # Every known label value is there from the start, at 0.
    assert with_prefix(samples, "docbrain_workers") == {
        frozenset({("state", s.name)}): 0.0 for s in WorkerState}
    assert with_prefix(samples, "docbrain_jobs") == {
        frozenset({("state", s)}): 0.0 for s in STATES}
    assert with_prefix(samples, "docbrain_worker_restarts_total") == {
        frozenset({("reason", r)}): 0.0 for r in RESTART_REASONS}
    assert value(samples, "docbrain_queue_depth") == 0.0
    assert with_prefix(samples, "docbrain_info") == {frozenset({("version", "9.8.7")}): 1.0}
    assert 100.0 <= value(samples, "docbrain_uptime_seconds") < 1000.0
    assert with_prefix(samples, "docbrain_jobs_finished_total") == {}


def test_workers_and_restarts(metrics: Metrics) -> None:
    assert metrics.port
    metrics.set_workers({"READY": 2, "BUSY": 1, "BACKOFF": 1})
    for _ in range(3):
        metrics.restarted("crashed")
    metrics.restarted("recycled")
    metrics.restarted("exit code 3 (no heartbeat for 5 s)")  # free text: bounded to "other"
    _, samples = scrape(metrics.port)
    assert value(samples, "docbrain_workers", state="READY") == 2.0
    assert value(samples, "docbrain_workers", state="BUSY") == 1.0
    assert value(samples, "docbrain_workers", state="BACKOFF") == 1.0
    assert value(samples, "docbrain_workers", state="FATAL") == 0.0
    assert value(samples, "docbrain_worker_restarts_total", reason="crashed") == 3.0
    assert value(samples, "docbrain_worker_restarts_total", reason="recycled") == 1.0
    assert value(samples, "docbrain_worker_restarts_total", reason="other") == 1.0
    assert value(samples, "docbrain_worker_restarts_total", reason="hung") == 0.0
    assert len(with_prefix(samples, "docbrain_worker_restarts_total")) == len(RESTART_REASONS)

    metrics.set_workers({"EXITED": 3})  # a new count replaces the old one, missing states are 0
    _, samples = scrape(metrics.port)
    assert {dict(k)["state"]: v for k, v in with_prefix(samples, "docbrain_workers").items()
            if v} == {"EXITED": 3.0}


def test_jobs_and_queue_depth(metrics: Metrics) -> None:
    assert metrics.port
    # What broker.status() returns, duplicate_runs included (not a state: ignored).
    metrics.set_jobs({"pending": 7, "running": 2, "done": 40, "failed": 3, "dead": 1,
                      "cancelled": 4, "duplicate_runs": 5}, queue_depth=7)
    _, samples = scrape(metrics.port)
    assert {dict(k)["state"]: v for k, v in with_prefix(samples, "docbrain_jobs").items()} == {
        "pending": 7.0, "running": 2.0, "done": 40.0, "failed": 3.0, "dead": 1.0,
        "cancelled": 4.0}
    assert value(samples, "docbrain_queue_depth") == 7.0
    metrics.set_jobs({"done": 41}, queue_depth=0)
    _, samples = scrape(metrics.port)
    assert value(samples, "docbrain_jobs", state="pending") == 0.0
    assert value(samples, "docbrain_jobs", state="done") == 41.0
    assert value(samples, "docbrain_queue_depth") == 0.0


def test_the_store_connection_and_the_shared_queue(metrics: Metrics) -> None:
    assert metrics.port
    _, samples = scrape(metrics.port)
    assert value(samples, "docbrain_store_connected") == 1.0  # the journal: always
    assert value(samples, "docbrain_shared_jobs", state="waiting") == 0.0
    metrics.set_store({"backend": "nats", "server": "nats://10.0.0.5:4222", "problem": None,
                       "stream_pending": 12, "stream_running": 4})
    _, samples = scrape(metrics.port)
    assert value(samples, "docbrain_store_connected") == 1.0
    assert value(samples, "docbrain_shared_jobs", state="waiting") == 12.0
    assert value(samples, "docbrain_shared_jobs", state="leased") == 4.0
    metrics.set_store({"backend": "nats", "server": None, "problem": None,
                       "stream_pending": 12, "stream_running": 4})
    _, samples = scrape(metrics.port)
    assert value(samples, "docbrain_store_connected") == 0.0


def test_finished_jobs_and_durations(metrics: Metrics) -> None:
    assert metrics.port
    metrics.job_finished("echo", "done", 0.002)
    metrics.job_finished("echo", "done", 0.5)
    metrics.job_finished("echo", "failed", 2.0)
    metrics.job_finished("echo", "dead", None)  # never ran to the end: counted, not timed
    metrics.job_finished("embed", "done", 90.0)
    _, samples = scrape(metrics.port)
    finished = with_prefix(samples, "docbrain_jobs_finished_total")
    assert {(dict(k)["task"], dict(k)["state"]): v for k, v in finished.items()} == {
        ("echo", "done"): 2.0, ("echo", "failed"): 1.0, ("echo", "dead"): 1.0,
        ("embed", "done"): 1.0}
    name = "docbrain_job_duration_seconds"
    assert value(samples, f"{name}_count", task="echo") == 3.0
    assert value(samples, f"{name}_sum", task="echo") == pytest.approx(2.502)
    assert value(samples, f"{name}_bucket", task="echo", le="0.001") == 0.0
    assert value(samples, f"{name}_bucket", task="echo", le="0.0025") == 1.0
    assert value(samples, f"{name}_bucket", task="echo", le="1.0") == 2.0
    assert value(samples, f"{name}_bucket", task="echo", le="2.5") == 3.0
    assert value(samples, f"{name}_bucket", task="echo", le="+Inf") == 3.0
    assert value(samples, f"{name}_bucket", task="embed", le="60.0") == 0.0
    assert value(samples, f"{name}_bucket", task="embed", le="120.0") == 1.0
    assert value(samples, f"{name}_bucket", task="embed", le="300.0") == 1.0


def test_unknown_states_are_programming_errors() -> None:
    m = Metrics()
    with pytest.raises(ValueError, match="ready"):
        m.set_workers({"ready": 1})  # the names are WorkerState names, upper case
    with pytest.raises(ValueError, match="running"):
        m.job_finished("echo", "running", 1.0)


def test_two_instances_do_not_share_values() -> None:
    a, b = Metrics(version="1"), Metrics(version="2")  # the global registry would refuse this
    try:
        a.start("127.0.0.1", 0)
        b.start("127.0.0.1", 0)
        assert a.port and b.port and a.port != b.port
        a.restarted("crashed")
        a.set_workers({"READY": 4})
        b.job_finished("noop", "done", 0.1)
        _, sa = scrape(a.port)
        _, sb = scrape(b.port)
        assert value(sa, "docbrain_worker_restarts_total", reason="crashed") == 1.0
        assert value(sb, "docbrain_worker_restarts_total", reason="crashed") == 0.0
        assert value(sa, "docbrain_workers", state="READY") == 4.0
        assert value(sb, "docbrain_workers", state="READY") == 0.0
        assert with_prefix(sa, "docbrain_jobs_finished_total") == {}
        assert value(sb, "docbrain_jobs_finished_total", task="noop", state="done") == 1.0
        assert with_prefix(sa, "docbrain_info") == {frozenset({("version", "1")}): 1.0}
        assert with_prefix(sb, "docbrain_info") == {frozenset({("version", "2")}): 1.0}
    finally:
        a.stop()
        b.stop()


def test_stop_frees_the_port() -> None:
    first = Metrics()
    first.start("127.0.0.1", 0)
    port = first.port
    assert port
    scrape(port)
    first.stop()
    assert first.port is None
    first.stop()  # a second stop does nothing
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    second = Metrics()
    second.start("127.0.0.1", port)
    try:
        assert second.port == port
        scrape(port)
    finally:
        second.stop()


def test_port_in_use_is_a_one_line_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        m = Metrics()
        with pytest.raises(MetricsError) as info:
            m.start("127.0.0.1", port)
    assert str(info.value) == f"metrics: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert m.port is None
    m.start("127.0.0.1", 0)  # a failed start leaves it usable
    m.stop()


def test_address_not_on_this_host_is_a_one_line_error() -> None:
    with pytest.raises(MetricsError) as info:
        Metrics().start("192.0.2.1", 9200)  # TEST-NET-1: never a local address
    message = str(info.value)
    assert message.startswith("metrics: cannot listen on 192.0.2.1:9200: ")
    assert "\n" not in message


def test_start_twice_is_refused(metrics: Metrics) -> None:
    with pytest.raises(MetricsError, match="already serving"):
        metrics.start("127.0.0.1", 0)


def test_ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    m = Metrics()
    m.start("::1", 0)
    try:
        assert m.port
        with urllib.request.urlopen(f"http://[::1]:{m.port}/metrics", timeout=10) as reply:
            assert b"docbrain_info" in reply.read()
    finally:
        m.stop()


def test_gpu_memory_of_the_workers_that_report_it(metrics: Metrics) -> None:
    assert metrics.port
    metrics.set_gpu_memory([(0, "0", 3 << 30), (1, "1", 1 << 30), (2, None, None)])
    _, samples = scrape(metrics.port)
    assert with_prefix(samples, "docbrain_worker_gpu_memory_bytes") == {
        frozenset({("slot", "0"), ("gpu", "0")}): float(3 << 30),
        frozenset({("slot", "1"), ("gpu", "1")}): float(1 << 30)}
    metrics.set_gpu_memory([(1, "1", 2 << 30)])  # slot 0 went away: its series too
    _, samples = scrape(metrics.port)
    assert with_prefix(samples, "docbrain_worker_gpu_memory_bytes") == {
        frozenset({("slot", "1"), ("gpu", "1")}): float(2 << 30)}
