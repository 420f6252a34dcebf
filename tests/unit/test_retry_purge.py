"""Retry of ended jobs and purge, in the broker and its SQLite store: same id and payload,
attempts reset, the old outcome kept in the job's history; all or none; purge counts first.
The CLI's side is in tests/system/test_retry_purge.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq

from supervisor.conf.config import load_config
from supervisor.jobs.broker import Broker
from supervisor.jobs.journal import CANCELLED, DEAD, DONE, FAILED, PENDING
from supervisor.jobs.sqlite import SqliteStore
from supervisor.proto.control import RequestError


def _broker(tmp_path: Path) -> Broker:
    config_path = tmp_path / "docbrain.toml"
    config_path.write_text(f'[supervisor]\nstate_dir = "{tmp_path}"\n[workers]\ncount = 1\n')
    return Broker(load_config(str(config_path)), zmq.Context.instance(),
                  f"ipc://{tmp_path}/q.sock", str(tmp_path / "journal.db"))


def _end(broker: Broker, job_id: str, task: str, state: str, now: float = 100.0) -> None:
    broker.store.submit(job_id, task, f'"{job_id}"'.encode(), 1.0, 3)
    (job,) = broker.store.lease(1)
    job.runs, job.attempts = 2, 1
    error = {"type": "E", "message": f"{job_id} broke"} if state == FAILED else \
        {"reason": "lost"}
    broker.store.finish(job, state, now, b"1" if state == DONE else None,
                        None if state == DONE else error)


def test_a_retried_job_keeps_its_id_payload_and_history(tmp_path: Path) -> None:
    broker = _broker(tmp_path)
    try:
        _end(broker, "f", "t", FAILED)
        assert broker.retry_jobs(["f"], None, None) == ["f"]
        stored = broker.store.get("f")
        assert stored is not None and stored.state == PENDING
        assert (stored.attempts, stored.runs, stored.error, stored.priority) == (0, 0, None, 3)
        assert stored.payload == b'"f"'
        assert stored.history == [{"state": FAILED, "attempts": 1, "runs": 2, "finished": 100.0,
                                   "error": {"type": "E", "message": "f broke"}}]
        assert broker.store.waiting_ids() == ["f"]
        assert broker.status()["failed"] == 0 and broker.status()["pending"] == 1
    finally:
        broker.close()
    store = SqliteStore(str(tmp_path / "journal.db"))  # pending after a restart, too
    try:
        assert store.waiting_ids() == ["f"]
        stored = store.get("f")
        assert stored is not None and stored.info()["history"][0]["state"] == FAILED
    finally:
        store.close()


def test_retry_by_state_and_task(tmp_path: Path) -> None:
    broker = _broker(tmp_path)
    try:
        _end(broker, "d1", "a", DEAD)
        _end(broker, "d2", "b", DEAD)
        _end(broker, "f1", "a", FAILED)
        assert broker.retry_jobs([], DEAD, "a") == ["d1"]
        assert sorted(broker.retry_jobs([], DEAD, None)) == ["d2"]
        assert broker.retry_jobs([], DEAD, None) == []  # none left: nothing to do
    finally:
        broker.close()


def test_retry_is_all_or_none_and_names_each_problem(tmp_path: Path) -> None:
    broker = _broker(tmp_path)
    try:
        _end(broker, "f", "t", FAILED)
        _end(broker, "ok", "t", DONE)
        broker.store.submit("p", "t", b"null", 1.0)
        with pytest.raises(RequestError) as refused:
            broker.retry_jobs(["f", "ok", "p", "nope"], None, None)
        text = str(refused.value)
        assert "ok is done" in text and "p is pending" in text and "nope: no such job" in text
        stored = broker.store.get("f")
        assert stored is not None and stored.state == FAILED  # nothing changed
        with pytest.raises(RequestError, match="state must be one of"):
            broker.retry_jobs([], DONE, None)
        with pytest.raises(RequestError, match="ids or a state"):
            broker.retry_jobs([], None, None)
    finally:
        broker.close()


def test_purge_counts_first_then_removes(tmp_path: Path) -> None:
    broker = _broker(tmp_path)
    try:
        _end(broker, "old", "a", DONE, now=100.0)
        _end(broker, "new", "a", DONE, now=1000.0)
        _end(broker, "other", "b", DONE, now=100.0)
        _end(broker, "c", "a", CANCELLED, now=100.0)
        assert broker.purge_jobs(DONE, "a", 500.0, apply=False) == 1
        assert broker.store.get("old") is not None  # a dry run changes nothing
        assert broker.purge_jobs(DONE, "a", 500.0, apply=True) == 1
        assert broker.store.get("old") is None and broker.store.get("new") is not None
        assert broker.purge_jobs(DONE, None, None, apply=True) == 2
        assert broker.status()["done"] == 0 and broker.status()["cancelled"] == 1
    finally:
        broker.close()


def test_purge_of_pending_jobs_takes_them_out_of_the_queue(tmp_path: Path) -> None:
    broker = _broker(tmp_path)
    try:
        for i in range(4):
            broker.store.submit(f"p{i}", "t", b"null", 1.0)
        broker.dispatch([(0, b"w0")], 0.0, lambda r, m: None)  # a worker holds them: running
        broker.worker_lost(0, "gone", count_attempt=False)  # back to the queue
        (held,) = broker.store.lease(1)
        broker.held.hold(0, [held])
        assert broker.purge_jobs(PENDING, None, None, apply=True) == 3  # not the held one
        assert broker.store.waiting() == 0 and broker.status()["pending"] == 0
        assert broker.store.get(held.id) is not None
        with pytest.raises(RequestError, match="state must be one of"):
            broker.purge_jobs("running", None, None, apply=True)
    finally:
        broker.close()


def test_jobs_are_listed_by_task_and_age(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "journal.db"))
    try:
        for job_id, task, submitted in (("a", "x", 10.0), ("b", "y", 20.0), ("c", "x", 30.0)):
            store.submit(job_id, task, b"null", submitted)
        assert [j.id for j in store.recent(None, 10, task="x")] == ["c", "a"]
        assert [j.id for j in store.recent(None, 10, since=15.0)] == ["c", "b"]
        assert [j.id for j in store.recent(PENDING, 10, "x", 15.0)] == ["c"]
        assert store.recent(DONE, 10, "x") == []
    finally:
        store.close()
