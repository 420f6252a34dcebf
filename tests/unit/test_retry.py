"""Retries of a retryable task that raised: exponential backoff, stored, in the journal
and the broker alone. A real daemon's retries are in tests/system/test_retry.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import zmq

from supervisor.conf.config import ConfigError, load_config
from supervisor.jobs.broker import Broker
from supervisor.jobs.sqlite import SqliteStore
from supervisor.proto import wire
from workers.tasks import task


def test_delayed_jobs_come_back_when_due_soonest_first(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "journal.sqlite3"))
    try:
        for name in ("new", "late", "soon", "soon2"):
            assert store.submit(name, "t", b"null", 0.0)
        leased = {job.id: job for job in store.lease(4)}
        store.requeue([leased["new"]])
        far = time.time() + 3600  # wall clock: due long after this test
        for name, at in (("late", far + 30), ("soon", far + 10), ("soon2", far + 10)):
            store.retry(leased[name], at, None)
        assert store.next_due() == far + 10 and store.delayed() == 3
        assert store.get("late").state == "pending"  # type: ignore[union-attr]
        assert store.release(far + 9.9) == 0
        assert store.release(far + 10) == 2
        assert store.waiting_ids() == ["soon", "soon2", "new"]
        assert store.next_due() == far + 30
        assert store.release(far + 100) == 1 and store.next_due() is None
    finally:
        store.close()


def _fail(broker: Broker, job_id: str) -> None:
    jobs = broker.store.lease(1)
    assert [job.id for job in jobs] == [job_id]
    broker.held.hold(0, jobs)
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
            broker.store.submit(name, name, b"null", 0.0)
            delays[name] = []
            for _ in range(4):
                before = time.time()
                _fail(broker, name)
                at = broker.store.next_due()
                assert at is not None
                delays[name].append(round(at - before, 1))
                broker.store.release(at)
            _fail(broker, name)  # the fifth run: max_attempts reached, failed for good
        broker.store.commit()
        assert delays == {"own": [0.5, 1.0, 1.5, 1.5], "plain": [2.0, 4.0, 5.0, 5.0]}
        stored = broker.store.get("own")
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
