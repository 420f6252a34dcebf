"""Cancel in the broker: waiting, delayed, held and running jobs; all or none. The real
daemon's side (its worker stopped with --terminate, the CLI's exit codes) is in
tests/system/test_cancel.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers_queue import make_broker, numbered

from supervisor.jobs.broker import Broker
from supervisor.jobs.cancel import NATS_CANCEL, Cancels
from supervisor.jobs.held import HeldJobs
from supervisor.jobs.journal import CANCELLED, DONE
from supervisor.jobs.sqlite import SqliteStore
from supervisor.proto import wire
from supervisor.proto.control import RequestError

Sent = list[tuple[bytes, wire.Message]]


def _broker(tmp_path: Path, n: int) -> Broker:
    return make_broker(tmp_path, numbered(n), credit=3)


def test_a_waiting_job_ends_cancelled_and_its_waiter_is_told(tmp_path: Path) -> None:
    broker = _broker(tmp_path, 3)
    try:
        broker.waiters["j1"] = {b"client"}
        assert broker.cancel(["j1"], terminate=False) == [("j1", None)]
        assert broker.store.waiting_ids() == ["j0", "j2"]
        stored = broker.store.get("j1")
        assert stored is not None and stored.state == CANCELLED
        assert stored.error == {"reason": "cancelled"}
        assert broker.replies.ends[b"client"] == [("j1", CANCELLED, {"reason": "cancelled"},
                                                   b"null")]
        assert broker.status()["cancelled"] == 1 and broker.status()["pending"] == 2
    finally:
        broker.close()


def test_a_job_waiting_for_its_retry_can_be_cancelled(tmp_path: Path) -> None:
    broker = _broker(tmp_path, 1)
    try:
        (job,) = broker.store.lease(1)
        broker.store.retry(job, time.time() + 3600, {"type": "E", "message": "m"})
        assert broker.store.delayed() == 1
        broker.cancel(["j0"], terminate=False)
        assert broker.store.delayed() == 0 and broker.store.next_due() is None
        stored = broker.store.get("j0")
        assert stored is not None and stored.state == CANCELLED
    finally:
        broker.close()


def test_a_held_job_not_started_is_cancelled_and_asked_back(tmp_path: Path) -> None:
    broker = _broker(tmp_path, 3)
    sent: Sent = []
    try:
        broker.dispatch([(0, b"w0")], 0.0, lambda r, m: sent.append((r, m)))
        broker.jobs_started(0, ["j0"], 0.0)
        assert broker.cancel(["j2"], terminate=False) == [("j2", None)]
        assert "j2" not in broker.held.running and broker.held.held(0) == 2
        sent.clear()
        broker.dispatch([(0, b"w0")], 0.01, lambda r, m: sent.append((r, m)))
        assert (b"w0", wire.Revoke(ids=["j2"])) in sent
        # Had the worker started it anyway, its result is no job of the slot's: dropped.
        dropped = broker.dropped
        broker.on_results(0, wire.Result(ids=["j2"], oks=[True], errors=[None], seconds=[0.0],
                                         data=[b"1"]), 0.02)
        assert broker.dropped == dropped + 1
        stored = broker.store.get("j2")
        assert stored is not None and stored.state == CANCELLED
    finally:
        broker.close()


def test_a_running_job_needs_terminate_and_nothing_changes_without(tmp_path: Path) -> None:
    broker = _broker(tmp_path, 3)
    try:
        broker.dispatch([(0, b"w0")], 0.0, lambda r, m: None)
        broker.jobs_started(0, ["j0"], 0.0)
        with pytest.raises(RequestError, match=r"j0 is running \(worker slot 0\).*--terminate"
                                                r".*nothing was cancelled"):
            broker.cancel(["j1", "j0"], terminate=False)
        assert "j1" in broker.held.running  # all or none: j1 was not cancelled either
        assert broker.cancel(["j0"], terminate=True) == [("j0", 0)]
        stored = broker.store.get("j0")
        assert stored is not None and stored.state == CANCELLED
        assert "worker was stopped" in (stored.error or {})["reason"]
        # The worker is killed by the daemon; what else it held goes back, not j0.
        broker.worker_lost(0, "killed", count_attempt=True)
        assert broker.store.waiting_ids() == ["j1", "j2"]
    finally:
        broker.close()


def test_unknown_and_ended_jobs_are_refused_by_name(tmp_path: Path) -> None:
    broker = _broker(tmp_path, 2)
    try:
        (job,) = broker.store.lease(1)
        broker.store.finish(job, DONE, 1.0, b"1")
        with pytest.raises(RequestError) as refused:
            broker.cancel(["j0", "nope", "j1"], terminate=False)
        assert "j0 is done already" in str(refused.value)
        assert "nope: no such job" in str(refused.value)
        assert broker.store.waiting_ids() == ["j1"]  # j1 was not cancelled
        with pytest.raises(RequestError, match="name at least one job"):
            broker.cancel([], terminate=False)
    finally:
        broker.close()


def test_the_nats_backend_refuses_a_cancel_with_why(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "j.db"))
    try:
        with pytest.raises(RequestError, match="nats backend cannot"):
            Cancels().plan(store, HeldJobs(3), "nats", ["x"], terminate=False)
        assert "sqlite" in NATS_CANCEL
    finally:
        store.close()
