"""The Client's exceptions, as the README documents them, against a real daemon."""

from __future__ import annotations

import pytest

from conftest import Instance

from supervisor.client import (Client, DaemonNotRunning, JobError, JobFailed, JobRejected,
                               PayloadError, UnknownJob)

TASKS = """\
from workers import task

@task("api.half")
def half(payload):
    if payload % 2:
        raise ValueError(f"{payload} is odd")
    return payload // 2
"""


def test_the_clients_exceptions(instance: Instance) -> None:
    with pytest.raises(DaemonNotRunning, match="docbrain is not running"):
        Client(str(instance.config_path))
    instance.write_task_module("api_tasks", TASKS)
    instance.write_config('tasks = ["api_tasks"]\n', workers=1)
    assert instance.ctl("start").returncode == 0
    with Client(str(instance.config_path)) as client:
        with pytest.raises(UnknownJob) as unknown:
            client.result("no-such-job", timeout=30)
        assert isinstance(unknown.value, KeyError) and isinstance(unknown.value, JobError)
        assert str(unknown.value) == "no such job: no-such-job"
        assert unknown.value.job_id == "no-such-job"

        with pytest.raises(JobRejected, match="unknown task 'api.nope'"):
            client.submit("api.nope", 1)
        with pytest.raises(PayloadError, match="NaN"):
            client.submit("api.half", float("nan"))

        # Each item's outcome in its place: nothing raised at the first failure.
        outcomes = list(client.map("api.half", [4, 3, 8, float("inf"), 10],
                                   return_exceptions=True, timeout=60))
        assert outcomes[0] == 2 and outcomes[2] == 4 and outcomes[4] == 5
        assert isinstance(outcomes[1], JobFailed) and outcomes[1].message == "3 is odd"
        assert isinstance(outcomes[3], PayloadError)
        with pytest.raises(JobFailed):  # without return_exceptions, the first failure raises
            list(client.map("api.half", [2, 5, 6], timeout=60))
    assert instance.ctl("stop").returncode == 0
