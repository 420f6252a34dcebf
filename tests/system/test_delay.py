"""Delayed jobs on a real daemon: not started before their time, kept across a restart,
counted by status; the CLI's refusals. The store's side is in tests/unit/test_delay.py."""

from __future__ import annotations

import json
import time

from conftest import Instance

from supervisor.client import Client

TASKS = '''\
import time
from workers import task


@task("clock")
def clock(_payload):
    return time.time()
'''


def test_a_delayed_job_starts_after_its_time_and_outlives_a_restart(instance: Instance) -> None:
    instance.write_task_module("clocks", TASKS)
    instance.write_config('tasks = ["clocks"]\n', workers=1)
    assert instance.ctl("start").returncode == 0
    with Client(str(instance.config_path)) as client:
        submitted = time.time()
        soon = client.submit("clock", None, delay=2)
        later = client.submit("clock", None, delay=3600)
        assert client.result(soon, timeout=60) >= submitted + 2
    status = instance.status()
    assert status is not None and status["queue"]["scheduled"] == 1
    assert "(1 scheduled)" in instance.ctl("status").stdout
    assert instance.ctl("stop").returncode == 0
    assert instance.ctl("start").returncode == 0
    status = instance.status()
    assert status is not None and status["queue"]["scheduled"] == 1
    job = json.loads(instance.ctl("job", later).stdout)
    assert job["state"] == "pending" and job["scheduled_at"] >= submitted + 3599
    assert instance.ctl("cancel", later).returncode == 0


def test_the_cli_takes_a_delay_or_an_eta(instance: Instance) -> None:
    assert instance.ctl("start").returncode == 0
    past = instance.ctl("submit", "--eta", "2001-01-01T00:00", "--wait", "echo", "1")
    assert past.returncode == 0 and json.loads(past.stdout) == 1
    assert "is in the past: the job runs now" in past.stderr
    delayed = instance.ctl("submit", "--delay", "600", "echo", "2")
    assert delayed.returncode == 0, delayed.stderr
    job = json.loads(instance.ctl("job", delayed.stdout.strip()).stdout)
    assert job["state"] == "pending" and job["scheduled_at"] > time.time() + 500
    for args in (["--delay", "-1"], ["--eta", "soon"], ["--delay", "1", "--eta", "2030-01-01"]):
        result = instance.ctl("submit", *args, "echo", "3")
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, args
    status = instance.status()
    assert status is not None and status["queue"]["pending"] == 1  # nothing more queued
