"""Retry and purge on a real daemon: failed jobs run again after the bug is fixed, with
their ids and their history; purge counts, then removes; every refusal is one line, exit 2,
nothing changed. The broker's side is in tests/unit/test_retry_purge.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Instance

from supervisor.client import Client, JobFailed, UnknownJob

TASKS = '''\
import os
from workers import task


@task("flaky")
def flaky(path):
    if not os.path.exists(path):
        raise RuntimeError("the bug is not fixed yet")
    return "ok"
'''


def _start(instance: Instance) -> None:
    instance.write_task_module("flakes", TASKS)
    instance.write_config('tasks = ["flakes"]\n', workers=1)
    result = instance.ctl("start")
    assert result.returncode == 0, result.stderr


def test_failed_jobs_run_again_with_their_history(instance: Instance, tmp_path: Path) -> None:
    _start(instance)
    fixed = tmp_path / "fixed"
    with Client(str(instance.config_path)) as client:
        ids = client.submit_many_nowait("flaky", [str(fixed)] * 3)
        for job_id in ids:
            with pytest.raises(JobFailed, match="not fixed yet"):
                client.result(job_id, timeout=60)
        result = instance.ctl("retry", ids[0], "nonesuch")
        assert result.returncode == 2 and "nonesuch: no such job" in result.stderr
        assert "nothing was retried" in result.stderr
        fixed.write_text("")
        result = instance.ctl("retry", ids[0])
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{ids[0]} pending again"
        assert client.result(ids[0], timeout=60) == "ok"
        job = json.loads(instance.ctl("job", ids[0]).stdout)
        assert job["state"] == "done" and job["id"] == ids[0]
        (before,) = job["history"]
        assert before["state"] == "failed" and "not fixed yet" in before["error"]["message"]

        result = instance.ctl("retry", "--state", "failed", "--task", "flaky")
        assert result.returncode == 0, result.stderr
        assert "2 failed job(s) retried" in result.stderr
        assert [client.result(j, timeout=60) for j in ids[1:]] == ["ok", "ok"]
        result = instance.ctl("retry", ids[0])
        assert result.returncode == 2 and f"{ids[0]} is done" in result.stderr
        assert "Traceback" not in result.stderr
    status = instance.status()
    assert status is not None and status["queue"]["done"] == 3
    assert status["queue"]["failed"] == 0


def test_purge_counts_then_removes(instance: Instance) -> None:
    _start(instance)
    with Client(str(instance.config_path)) as client:
        ids = client.submit_many_nowait("echo", [1, 2, 3])
        assert [client.result(j, timeout=60) for j in ids] == [1, 2, 3]
        listed = instance.ctl("jobs", "--task", "echo", "--since", "1h", "--json")
        assert {row["id"] for row in json.loads(listed.stdout)["jobs"]} == set(ids)
        listed = instance.ctl("jobs", "--task", "flaky", "--json")
        assert json.loads(listed.stdout)["jobs"] == []
        result = instance.ctl("purge", "--state", "done")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("would remove 3 done job(s)")
        assert instance.ctl("purge", "--state", "done", "--older-than", "1h", "--yes"
                            ).stdout.strip() == "removed 0 done job(s)"
        result = instance.ctl("purge", "--state", "done", "--task", "echo", "--yes")
        assert result.stdout.strip() == "removed 3 done job(s)"
        with pytest.raises(UnknownJob):
            client.result(ids[0], timeout=30)
    status = instance.status()
    assert status is not None and status["queue"]["done"] == 0
    for args in (["purge"], ["purge", "--state", "running"],
                 ["purge", "--state", "done", "--older-than", "soon"]):
        result = instance.ctl(*args)
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr and result.stderr.count("\n") <= 1
