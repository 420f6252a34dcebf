"""Delayed submits in the SQLite store and the client's checks of a start time. The real
daemon's side (a job not started before its time, across a restart) is in
tests/system/test_delay.py."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers_queue import make_broker

from supervisor.client.checks import start_time
from supervisor.jobs.checks import priority_problem
from supervisor.jobs.jetstream import NOT_BEFORE_HEADER, not_before_of
from supervisor.jobs.sqlite import SqliteStore


def test_a_delayed_job_waits_for_its_time_across_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "journal.sqlite3")
    store = SqliteStore(path)
    now = time.time()
    assert store.submit("later", "t", b"null", now, 5, now + 3600)
    assert store.submit("now", "t", b"null", now, 5, now - 1)  # in the past: runs now
    store.commit()
    assert store.waiting_ids() == ["now"] and store.scheduled() == 1
    stored = store.get("later")
    assert stored is not None and stored.summary()["scheduled_at"] == now + 3600
    assert stored.summary()["retry_at"] is None
    store.close()
    store = SqliteStore(path)
    try:
        assert store.waiting_ids() == ["now"] and store.delayed() == 1
        assert store.next_due() == now + 3600
        assert store.release(now + 3601) == 1
        assert store.waiting_ids() == ["later", "now"] and store.scheduled() == 0
    finally:
        store.close()


def test_status_tells_scheduled_jobs_from_retries(tmp_path: Path) -> None:
    broker = make_broker(tmp_path)
    try:
        now = time.time()
        broker.store.submit("a", "echo", b"null", now, 5, now + 60)
        broker.store.submit("b", "echo", b"null", now, 5)
        (job,) = broker.store.lease(1)
        job.runs = 1
        broker.store.retry(job, now + 60, {"type": "E", "message": "m"})
        status = broker.status()
        assert (status["pending"], status["scheduled"], status["retrying"]) == (2, 1, 1)
    finally:
        broker.close()


def test_start_times_and_their_refusals() -> None:
    assert start_time(None, None) is None and start_time(0, None) is None
    assert abs((start_time(10, None) or 0) - time.time() - 10) < 1
    when = datetime.now(timezone.utc) + timedelta(hours=1)
    assert start_time(None, when) == when.timestamp()
    assert start_time(None, 1234.5) == 1234.5  # in the past: it runs now
    for delay, eta, problem in [(-1, None, "delay must be"), (float("inf"), None, "delay"),
                                (True, None, "delay"), ("5", None, "delay"),
                                (None, "tomorrow", "eta must be"),
                                (None, float("nan"), "eta"), (1, 2, "not both")]:
        with pytest.raises(ValueError, match=problem):
            start_time(delay, eta)


def test_a_start_time_must_be_finite_and_travels_in_a_header_on_nats() -> None:
    assert priority_problem(5, None) is None
    assert priority_problem(5, time.time() + 5) is None
    assert "finite" in (priority_problem(5, float("inf")) or "")

    class Msg:
        def __init__(self, headers: dict[str, str] | None) -> None:
            self.headers = headers

    later = time.time() + 3600.25
    assert not_before_of(Msg({NOT_BEFORE_HEADER: repr(later)})) == later
    assert not_before_of(Msg(None)) is None and not_before_of(Msg({})) is None
    assert not_before_of(Msg({NOT_BEFORE_HEADER: "soon"})) is None  # not ours: runs now
