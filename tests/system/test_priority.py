"""Priorities on a real daemon with two real workers: a job of a high priority submitted
behind a backlog of low ones runs after the jobs running now, not after the backlog. The
pieces (the store's order, dispatch, the worker's mailbox) are in tests/unit/test_priority.py.
"""

from __future__ import annotations

import json
import time

from conftest import Instance

from supervisor.client import Client

TASKS = '''\
import time
from workers import task


@task("nap")
def nap(seconds):
    time.sleep(seconds)
    return time.time()
'''
BULK, NAP = 30, 0.3  # 4.5 s of backlog on 2 workers


def test_a_high_priority_job_overtakes_a_queued_backlog(instance: Instance) -> None:
    instance.write_task_module("naps", TASKS)
    instance.write_config('tasks = ["naps"]\n', workers=2)
    assert instance.ctl("start").returncode == 0
    with Client(str(instance.config_path)) as client:
        bulk = client.submit_many_nowait("nap", [NAP] * BULK, priority=1)
        client.result(bulk[0], timeout=60)  # the backlog runs
        submitted = time.time()
        question = client.submit("nap", 0, priority=9)
        answered = client.result(question, timeout=60)
        ends = [client.result(job_id, timeout=120) for job_id in bulk]
        before = sum(end < submitted for end in ends)
        between = sum(submitted <= end < answered for end in ends)
        # First in, first out, it would have waited for every job not ended yet; it waited
        # for the jobs the two workers were running, and what they held to run next.
        assert between <= 6, f"{between} bulk jobs ended while the question waited"
        assert BULK - before - between >= 10, "the backlog was nearly done: test too slow"
    listed = instance.ctl("jobs", "--json", "--limit", "100")
    assert listed.returncode == 0, listed.stderr
    priorities = {row["id"]: row["priority"] for row in json.loads(listed.stdout)["jobs"]}
    assert priorities[question] == 9 and {priorities[j] for j in bulk} == {1}
    table = instance.ctl("jobs", "--limit", "3")
    assert "PRI" in table.stdout.splitlines()[0]


def test_a_priority_out_of_range_is_refused_and_nothing_is_queued(instance: Instance) -> None:
    assert instance.ctl("start").returncode == 0
    for bad in ("10", "-1", "high"):
        result = instance.ctl("submit", "--priority", bad, "noop")
        assert result.returncode == 2, result.stderr
        assert "--priority" in result.stderr and "Traceback" not in result.stderr
    status = instance.status()
    assert status is not None and status["queue"]["pending"] == 0
    assert status["queue"]["done"] == 0
    result = instance.ctl("submit", "--priority", "9", "--wait", "echo", '{"a": 1}')
    assert result.returncode == 0 and json.loads(result.stdout) == {"a": 1}
