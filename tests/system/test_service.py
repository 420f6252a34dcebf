"""The daemon as a service: sd_notify to a real datagram socket, and the metrics endpoint
of a real run. The protocol alone is in tests/unit/test_service.py."""

from __future__ import annotations

import os
import signal
import socket
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import Instance, wait_for
from helpers_service import notify_socket, received  # noqa: F401 (a fixture)
from prometheus_client.parser import text_string_to_metric_families

from supervisor.client import Client, JobFailed


def test_daemon_tells_systemd_ready_watchdog_reloading_stopping(
        instance: Instance, notify_socket: socket.socket) -> None:
    instance.env["NOTIFY_SOCKET"] = notify_socket.getsockname()
    instance.env["WATCHDOG_USEC"] = "300000"  # a ping every 0.1 s
    daemon = instance.start_foreground()
    got: list[str] = []

    def seen(message: str, count: int = 1) -> bool:
        got.extend(received(notify_socket))
        return sum(1 for m in got if m.startswith(message)) >= count

    wait_for(lambda: seen("READY=1"), 60, "READY=1")
    ready = next(m for m in got if m.startswith("READY=1"))
    assert "STATUS=2/2 workers ready, 0 jobs queued" in ready
    # READY only once every worker is: the status says so at the same moment.
    assert [w["state"] for w in instance.status()["workers"]] == ["READY"] * 2  # type: ignore
    wait_for(lambda: seen("WATCHDOG=1", 3), 30, "three watchdog pings")
    for worker in instance.status()["workers"]:  # type: ignore[index]
        assert "NOTIFY_SOCKET" not in psutil.Process(worker["pid"]).environ()

    got.clear()
    instance.write_config("[env]\nNEW_VAR = \"1\"\n")  # rolls both workers
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for(lambda: seen("READY=1"), 60, "READY=1 after the reload")
    reloading = [i for i, m in enumerate(got) if m.startswith("RELOADING=1")]
    ready_again = [i for i, m in enumerate(got) if m.startswith("READY=1")]
    assert reloading and reloading[0] < ready_again[0]
    assert instance.status()["supervisor"]["reload"]["state"] == "done"  # type: ignore

    os.kill(daemon.pid, signal.SIGTERM)
    assert daemon.wait(60) == 0
    got.extend(received(notify_socket))
    assert any(m.startswith("STOPPING=1") for m in got)


BROKEN_WHEN = """\
import os
if os.path.exists(%r):
    raise SystemExit(3)
"""


def test_watchdog_is_withheld_while_every_slot_is_fatal(
        instance: Instance, notify_socket: socket.socket, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    instance.write_task_module("wtasks", BROKEN_WHEN % str(broken))
    instance.write_config('tasks = ["wtasks"]\n[restart]\nbackoff_start = 0.05\n'
                          'flap_limit = 2\n', workers=1)
    instance.env["NOTIFY_SOCKET"] = notify_socket.getsockname()
    instance.env["WATCHDOG_USEC"] = "300000"  # a ping every 0.1 s
    instance.start_foreground()
    got: list[str] = []
    # Pings start with the loop, before the worker has imported its tasks: wait for READY.
    wait_for(lambda: got.extend(received(notify_socket)) or (
        "WATCHDOG=1" in got and any(m.startswith("READY=1") for m in got)), 60,
        "READY=1 and a watchdog ping")
    broken.touch()  # from now on the worker dies at import: two deaths make the slot FATAL
    os.kill(instance.wait_ready(1)["workers"][0]["pid"], signal.SIGKILL)
    wait_for(lambda: "every worker slot is FATAL" in instance.log_text, 60, "all FATAL")
    received(notify_socket)  # what was sent before the slot went FATAL
    since = instance.status()["supervisor"]["uptime_s"]  # type: ignore[index]
    # Ten periods of the ping on the daemon's own clock, not a sleep of ours.
    instance.wait_status(lambda s: s["supervisor"]["uptime_s"] >= since + 1.0, 30,
                         "the daemon 1 s further on")
    assert "WATCHDOG=1" not in received(notify_socket)

    broken.unlink()
    reloaded = instance.ctl("reload")  # starts the FATAL slot again
    assert reloaded.returncode == 0, reloaded.stderr
    wait_for(lambda: "WATCHDOG=1" in received(notify_socket), 30, "the pings again")
    assert "WATCHDOG=1 resumed" in instance.log_text


# -- metrics -----------------------------------------------------------------------------

METRIC_TASKS = '''\
from workers import task


@task("ok")
def ok(x):
    return x


@task("bad")
def bad(x):
    raise ValueError("no")
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_endpoint_serves_what_a_real_run_did(instance: Instance) -> None:
    port = free_port()
    instance.write_task_module("mtasks", METRIC_TASKS)
    instance.write_config(f'tasks = ["mtasks"]\n[metrics]\nport = {port}\n')
    started = instance.ctl("start")
    assert started.returncode == 0, started.stderr
    status = instance.wait_ready(2)
    assert status["supervisor"]["metrics_port"] == port
    with Client(str(instance.config_path)) as client:
        assert list(client.map("ok", range(20))) == list(range(20))
        with pytest.raises(JobFailed):
            client.result(client.submit("bad", 1), timeout=30)
    victim = status["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    instance.wait_status(lambda s: s["workers"][0]["pid"] not in (None, victim) and
                         s["workers"][0]["state"] == "READY", 60, "slot 0 restarted")

    def counted() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        samples = scrape(port)
        wanted = samples.get(("docbrain_workers", frozenset({("state", "READY")})))
        return samples if wanted == 2 and samples.get(
            ("docbrain_jobs", frozenset({("state", "done")}))) == 20 else None

    samples = wait_for(counted, 30, "the gauges refreshed")
    done = ("docbrain_jobs_finished_total", frozenset({("task", "ok"), ("state", "done")}))
    failed = ("docbrain_jobs_finished_total", frozenset({("task", "bad"), ("state", "failed")}))
    assert samples[done] == 20 and samples[failed] == 1
    assert samples[("docbrain_job_duration_seconds_count", frozenset({("task", "ok")}))] == 20
    assert samples[("docbrain_jobs", frozenset({("state", "failed")}))] == 1
    assert samples[("docbrain_queue_depth", frozenset())] == 0
    assert samples[("docbrain_worker_restarts_total", frozenset({("reason", "crashed")}))] == 1
    stopped = instance.ctl("stop")
    assert stopped.returncode == 0, stopped.stderr
    with pytest.raises(OSError):  # the endpoint went with the daemon
        scrape(port)


def test_metrics_port_in_use_fails_the_start_with_one_line(instance: Instance) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        instance.write_config(f"[metrics]\nport = {port}\n")
        result = instance.ctl("start")
    assert result.returncode == 1
    assert result.stderr.strip() == \
        f"docbrainctl: metrics: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert instance.daemon_pid() is None and instance.marked_pids() == []


def test_metrics_off_by_default(instance: Instance) -> None:
    assert instance.ctl("start").returncode == 0
    assert instance.wait_ready(2)["supervisor"]["metrics_port"] is None
    assert "metrics on http" not in instance.log_text
