"""No job waits behind a long one while another worker could run it (issue: prefetch).

Integration tests against a real daemon with two real workers. The unit tests of the
pieces (the queue's revoke and take-back, the broker's dispatch, the worker's mailbox) are
in tests/unit/test_dispatch.py.
"""

from __future__ import annotations

import time

from conftest import Instance, wait_for
from helpers_queue import start_naps

from supervisor.client import Client


def test_new_job_goes_to_the_idle_worker_not_behind_a_long_one(instance: Instance) -> None:
    start_naps(instance, 2)
    with Client(str(instance.config_path)) as client:
        long_id = client.submit("nap", 120)
        wait_for(lambda: any(w["current_job"] == long_id
                             for w in (instance.status() or {}).get("workers", [])),
                 60, "the long job to start")
        began = time.monotonic()
        results = [client.result(client.submit("nap", 0), timeout=60) for _ in range(5)]
        took = time.monotonic() - began
    assert results == [0] * 5
    status = instance.status()
    assert status is not None
    assert [w["current_job"] for w in status["workers"]].count(long_id) == 1, \
        "the long job still runs: the short ones did not wait for it"
    assert took < 60


def test_jobs_held_behind_a_long_job_move_to_the_idle_worker(instance: Instance) -> None:
    """One submit of 32 jobs: a worker takes the first 16 (its credit), the first of them
    a long one; the 15 behind it are taken back and run by the other worker."""
    start_naps(instance, 2)
    with Client(str(instance.config_path)) as client:
        ids = client.submit_many_nowait("nap", [120] + [0.01] * 31)
        results = [client.result(i, timeout=90) for i in ids[1:]]
        status = instance.status()
    assert results == [0.01] * 31
    assert status is not None
    assert [w["current_job"] for w in status["workers"]].count(ids[0]) == 1, \
        "the long job still runs: the others did not wait for it"
