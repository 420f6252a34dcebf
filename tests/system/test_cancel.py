"""Cancel on a real daemon with a real worker: a pending job at once, a running one only
with --terminate (its worker killed and replaced, the job not run again), all or none, and
the CLI's one-line refusals. The broker's side is in tests/unit/test_cancel.py."""

from __future__ import annotations

import json

import pytest
from conftest import Instance, wait_for
from helpers_queue import start_naps

from supervisor.client import CancelRefused, Client, JobCancelled


def _running(instance: Instance, job_id: str) -> dict[str, object]:
    return wait_for(lambda: next((w for w in (instance.status() or {}).get("workers", [])
                                  if w["current_job"] == job_id), None),
                    60, f"job {job_id} to run")


def test_cancel_pending_then_running_with_terminate(instance: Instance) -> None:
    start_naps(instance, 1)
    with Client(str(instance.config_path)) as client:
        long_id = client.submit("nap", 300)
        worker = _running(instance, long_id)
        queued = client.submit_many_nowait("nap", [0, 0])
        result = instance.ctl("cancel", queued[0])
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{queued[0]} cancelled"
        with pytest.raises(JobCancelled, match="cancelled"):
            client.result(queued[0], timeout=30)

        # Running: refused without --terminate, and nothing changes.
        result = instance.ctl("cancel", long_id)
        assert result.returncode == 2
        assert "is running" in result.stderr and "--terminate" in result.stderr
        assert "Traceback" not in result.stderr
        assert _running(instance, long_id)["pid"] == worker["pid"]

        result = instance.ctl("cancel", "--terminate", long_id)
        assert result.returncode == 0, result.stderr
        assert "worker was stopped" in result.stdout
        with pytest.raises(JobCancelled):
            client.result(long_id, timeout=30)
        # The worker is replaced, and the job left in the queue runs on the new one.
        assert client.result(queued[1], timeout=120) == 0
    status = instance.wait_status(lambda s: s["workers"][0]["state"] == "READY", 60,
                                  "the replacement worker")
    assert status["workers"][0]["pid"] != worker["pid"]
    assert status["queue"]["cancelled"] == 2 and status["queue"]["done"] == 1
    job = json.loads(instance.ctl("job", long_id).stdout)
    assert job["state"] == "cancelled" and job["runs"] == 1  # not run again
    listed = json.loads(instance.ctl("jobs", "--state", "cancelled", "--json").stdout)["jobs"]
    assert {row["id"] for row in listed} == {long_id, queued[0]}


def test_cancel_refuses_unknown_and_ended_jobs_and_changes_nothing(instance: Instance) -> None:
    start_naps(instance, 1)
    with Client(str(instance.config_path)) as client:
        done_id = client.submit("nap", 0)
        assert client.result(done_id, timeout=60) == 0
        long_id = client.submit("nap", 300)
        _running(instance, long_id)
        pending = client.submit("nap", 0)
        result = instance.ctl("cancel", pending, done_id, "nonesuch")
        assert result.returncode == 2
        line = result.stderr.strip()
        assert len(line.splitlines()) == 1
        assert f"{done_id} is done already" in line and "nonesuch: no such job" in line
        assert "nothing was cancelled" in line
        with pytest.raises(CancelRefused, match="no such job"):
            client.cancel("nonesuch")
        assert client.cancel([pending]) == [pending]  # it was left pending
        with pytest.raises(JobCancelled):
            client.result(pending, timeout=30)
    result = instance.ctl("cancel")
    assert result.returncode == 2 and "Traceback" not in result.stderr
