"""Retries of a retryable task that raised: exponential backoff, stored, shown plainly."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import zmq

from conftest import Instance, pid_gone, wait_for
from supervisor import wire
from supervisor.broker import Broker
from supervisor.client import Client, JobFailed
from supervisor.config import ConfigError, load_config
from supervisor.jobqueue import JobQueue, QueuedJob
from workers.tasks import task


def test_delayed_jobs_come_back_when_due_soonest_first() -> None:
    queue = JobQueue(max_attempts=3)
    queue.push(QueuedJob("new", "t", b"null"))
    for name, at in (("late", 30.0), ("soon", 10.0), ("soon2", 10.0)):
        queue.defer(QueuedJob(name, "t", b"null"), at)
    assert "late" in queue and queue.next_due() == 10.0
    assert queue.release(9.9) == 0
    assert queue.release(10.0) == 2
    assert [j.id for j in queue.pending] == ["soon", "soon2", "new"]
    assert queue.next_due() == 30.0
    assert queue.release(100.0) == 1 and queue.next_due() is None


def _fail(broker: Broker, job_id: str) -> None:
    job = broker.queue.assign(0, 0.0)
    assert job is not None and job.id == job_id
    broker.jobs_started(0, [job_id], 0.0)
    broker.on_results(0, wire.Result(ids=[job_id], oks=[False], errors=[{
        "type": "RuntimeError", "message": "no", "traceback": ""}], seconds=[0.0],
        data=[b"null"]), 0.0)


def test_backoff_doubles_up_to_its_bound_task_settings_first(tmp_path: Path) -> None:
    config = tmp_path / "docbrain.toml"
    config.write_text(f'[supervisor]\nstate_dir = "{tmp_path}"\n'
                      "[queue]\nmax_attempts = 5\nretry_backoff = 2\nretry_backoff_max = 5\n")
    broker = Broker(load_config(str(config), environ={}), zmq.Context.instance(),
                    f"ipc://{tmp_path}/q.sock", str(tmp_path / "journal.sqlite3"))
    try:
        broker.worker_ready({"own": {"retryable": True, "retry_backoff": 0.5,
                                     "retry_backoff_max": 1.5},
                             "plain": {"retryable": True, "retry_backoff": "bad"}})
        delays = {}
        for name in ("own", "plain"):
            broker.queue.push(QueuedJob(name, name, b"null"))
            broker.journal.add(name, name, b"null", 0.0)
            delays[name] = []
            for _ in range(4):
                before = time.time()
                _fail(broker, name)
                at = broker.queue.next_due()
                assert at is not None
                delays[name].append(round(at - before, 1))
                broker.queue.release(at)
            _fail(broker, name)  # the fifth run: max_attempts reached, failed for good
        broker.journal.commit()
        assert delays == {"own": [0.5, 1.0, 1.5, 1.5], "plain": [2.0, 4.0, 5.0, 5.0]}
        stored = broker.journal.get("own")
        assert stored is not None and (stored.state, stored.runs) == ("failed", 5)
        assert stored.summary()["retry_at"] is None
    finally:
        broker.close()


def test_backoff_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="retry_backoff must be a number of seconds"):
        task("x.bad", retryable=True, retry_backoff=-1)
    with pytest.raises(ConfigError, match="queue.retry_backoff_max: must not be below"):
        load_config(None, environ={"DOCBRAIN_QUEUE_RETRY_BACKOFF": "10",
                                   "DOCBRAIN_QUEUE_RETRY_BACKOFF_MAX": "5"})


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
    assert table[0].split() == ["ID", "TASK", "STATE", "RUNS", "LOST", "SUBMITTED", "ERROR"]
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
