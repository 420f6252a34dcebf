"""Retries of a retryable task that raised, by a real daemon: exponential backoff, stored,
shown plainly. The journal and the broker alone are in tests/unit/test_retry.py."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import Instance, pid_gone, wait_for

from supervisor.client import Client, JobFailed


TASKS = '''\
import json, os, time
from workers import task

LOG = %r


def record(name, value):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps([name, value, time.time()]) + "\\n").encode())
    finally:
        os.close(fd)


@task("flaky.own", retryable=True, retry_backoff=0.3, retry_backoff_max=0.5)
def own(x):
    record("own", x)
    raise RuntimeError(f"own {x}")


@task("flaky.queue", retryable=True)
def queue(x):
    record("queue", x)
    raise RuntimeError(f"queue {x}")


@task("square")
def square(x):
    return x * x
'''


def _runs(log: Path, name: str) -> list[float]:
    if not log.exists():
        return []
    return [t for n, _, t in map(json.loads, log.read_text().splitlines()) if n == name]


def _start(instance: Instance, log: Path, queue: str) -> None:
    instance.write_task_module("rtasks", TASKS % str(log))
    instance.write_config(f'tasks = ["rtasks"]\n[queue]\n{queue}', workers=2)
    result = instance.ctl("start")
    assert result.returncode == 0, result.stderr


def test_retries_wait_their_backoff(instance: Instance, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    _start(instance, log, "max_attempts = 4\nretry_backoff = 0.2\nretry_backoff_max = 0.3\n")
    with Client(str(instance.config_path)) as client:
        own, queued = client.submit("flaky.own", 1), client.submit("flaky.queue", 2)
        for job_id in (own, queued):
            with pytest.raises(JobFailed):
                client.result(job_id, timeout=60)
    for name, floors in (("own", [0.3, 0.5, 0.5]), ("queue", [0.2, 0.3, 0.3])):
        times = _runs(log, name)
        assert len(times) == 4, (name, times)
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert all(gap >= floor - 0.01 for gap, floor in zip(gaps, floors)), (name, gaps)
    info = json.loads(instance.ctl("job", own).stdout)
    assert (info["state"], info["runs"], info["attempts"], info["retry_at"]) == \
        ("failed", 4, 0, None)


def test_a_waiting_retry_is_shown_and_outlives_a_killed_daemon(instance: Instance,
                                                               tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    _start(instance, log, "retry_backoff = 600\nretry_backoff_max = 600\n")
    with Client(str(instance.config_path)) as client:
        job_id = client.submit("flaky.queue", 3)
    status = instance.wait_status(lambda s: s["queue"]["retrying"] == 1, 60, "a waiting retry")
    assert status["queue"]["pending"] == 1
    info = json.loads(instance.ctl("job", job_id).stdout)
    assert (info["state"], info["runs"], info["attempts"]) == ("pending", 1, 0)
    assert info["error"]["message"] == "queue 3"
    assert 590 < info["retry_at"] - time.time() <= 600
    table = instance.ctl("jobs").stdout.splitlines()
    assert table[0].split() == ["ID", "TASK", "STATE", "PRI", "RUNS", "LOST", "SUBMITTED",
                                "ERROR"]
    assert "retry in 9m" in table[1] and "after RuntimeError: queue 3" in table[1]
    assert "(1 waiting to retry)" in instance.ctl("status").stdout

    daemon = instance.daemon_pid()
    assert daemon is not None
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: pid_gone(daemon), 30, "the killed daemon to go")
    assert instance.ctl("start").returncode == 0
    again = json.loads(instance.ctl("job", job_id).stdout)
    assert again["retry_at"] == info["retry_at"] and again["state"] == "pending"
    with Client(str(instance.config_path)) as client:
        # Jobs run meanwhile; the retry, due in ten minutes, does not.
        assert [client.result(client.submit("square", i), timeout=60) for i in range(20)] == \
            [i * i for i in range(20)]
    assert len(_runs(log, "queue")) == 1
    assert instance.status()["queue"]["retrying"] == 1  # type: ignore[index]
