"""The queue's seam (supervisor.jobs.store.JobStore) as the SQLite journal implements it:
what the broker can count on from any store."""

from __future__ import annotations

import time
from pathlib import Path

from supervisor.jobs.journal import DONE, FAILED, PENDING
from supervisor.jobs.sqlite import SqliteStore


def _store(tmp_path: Path, *ids: str) -> SqliteStore:
    store = SqliteStore(str(tmp_path / "journal.sqlite3"))
    for job_id in ids:
        assert store.submit(job_id, "t", b'"payload"', 1.0)
    return store


def test_a_resent_submit_is_not_a_second_job(tmp_path: Path) -> None:
    store = _store(tmp_path, "a")
    try:
        assert not store.submit("a", "t", b"null", 2.0)
        assert store.waiting() == 1 and store.counts()[PENDING] == 1
    finally:
        store.close()


def test_leases_are_oldest_first_and_come_back_to_the_front_in_order(tmp_path: Path) -> None:
    store = _store(tmp_path, "a", "b", "c", "d")
    try:
        first = store.lease(3)
        assert [j.id for j in first] == ["a", "b", "c"] and store.waiting() == 1
        assert store.lease(0) == [] and store.lease(-1) == []
        store.requeue(first[1:])  # b and c were never started
        assert store.waiting_ids() == ["b", "c", "d"]
        got = store.get("a")
        assert got is not None and got.state == PENDING  # leased reads as pending
        assert store.counts()[PENDING] == 4
    finally:
        store.close()


def test_a_lost_run_is_kept_and_survives_a_restart(tmp_path: Path) -> None:
    store = _store(tmp_path, "a", "b")
    (a, b) = store.lease(2)
    assert store.unfinished("a") and store.unfinished("b")  # leased: still unfinished
    a.runs, a.attempts = 1, 1  # a ran when its worker died; b was only held
    store.lose([a, b])
    assert store.waiting_ids() == ["a", "b"]
    store.commit()
    store.close()
    again = SqliteStore(str(tmp_path / "journal.sqlite3"))
    try:
        assert again.waiting_ids() == ["a", "b"] and again.unfinished("a")
        (a2, b2) = again.lease(2)
        assert (a2.attempts, a2.runs) == (1, 1) and (b2.attempts, b2.runs) == (0, 0)
    finally:
        again.close()


def test_a_retry_waits_for_its_time_across_a_restart(tmp_path: Path) -> None:
    store = _store(tmp_path, "a", "b")
    (a,) = store.lease(1)
    a.runs = 1
    later = time.time() + 3600
    store.retry(a, later, {"type": "RuntimeError", "message": "no", "traceback": ""})
    assert store.delayed() == 1 and store.next_due() == later
    assert store.waiting_ids() == ["b"]
    store.commit()
    store.close()
    again = SqliteStore(str(tmp_path / "journal.sqlite3"))
    try:
        assert again.delayed() == 1 and again.next_due() == later
        assert again.waiting_ids() == ["b"]
        stored = again.get("a")
        assert stored is not None and stored.error and stored.error["message"] == "no"
        assert again.release(later) == 1 and again.waiting_ids() == ["a", "b"]
    finally:
        again.close()


def test_a_retry_that_is_due_goes_first(tmp_path: Path) -> None:
    store = _store(tmp_path, "a", "b")
    try:
        (a,) = store.lease(1)
        store.retry(a, time.time() - 1, None)
        assert store.delayed() == 0 and store.waiting_ids() == ["a", "b"]
    finally:
        store.close()


def test_finished_jobs_are_counted_and_purged(tmp_path: Path) -> None:
    store = _store(tmp_path, "a", "b", "c")
    try:
        a, b, c = store.lease(3)
        store.finish(a, DONE, 10.0, result=b"1")
        store.finish(b, FAILED, 20.0, error={"reason": "x"})
        counts = store.counts()
        assert (counts[PENDING], counts[DONE], counts[FAILED]) == (1, 1, 1)
        store.commit()
        done = store.get("a")
        assert done is not None and done.state == DONE and done.result == b"1"
        assert [j.id for j in store.recent(None, 10)] == ["c", "b", "a"]
        assert [j.id for j in store.recent(FAILED, 10)] == ["b"]
        assert store.unfinished("c") and not store.unfinished("a")
        assert not store.unfinished("nonesuch")
        assert store.purge(15.0) == 1  # a finished before then; b after
        assert store.get("a") is None and store.counts()[DONE] == 0
        assert store.counts()[FAILED] == 1
    finally:
        store.close()
