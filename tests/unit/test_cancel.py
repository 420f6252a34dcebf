"""Cancel in the broker: waiting, delayed, held and running jobs; all or none. The real
daemon's side (its worker stopped with --terminate, the CLI's exit codes) is in
tests/system/test_cancel.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import pytest
from helpers_queue import make_broker, numbered

from supervisor.jobs.broker import Broker
from supervisor.jobs.cancel import Cancels
from supervisor.jobs.held import HeldJobs, QueuedJob
from supervisor.jobs.journal import CANCELLED, DONE, StoredJob
from supervisor.jobs.sqlite import SqliteStore
from supervisor.jobs.store import JobStore
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


def test_the_daemon_leaves_a_nats_cancel_to_the_canceller(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "j.db"))
    try:
        with pytest.raises(RequestError, match="made by the canceller itself"):
            Cancels().plan(store, HeldJobs(3), "nats", ["x"], terminate=False)
    finally:
        store.close()


class _Dropped:
    """The part of a shared store that a cancel elsewhere touches."""

    def __init__(self) -> None:
        self.dropped: list[str] = []

    def drop(self, job: QueuedJob) -> None:
        self.dropped.append(job.id)


def _cancelled(terminate: bool) -> StoredJob:
    return StoredJob(id="x", task="t", payload=b"", state=CANCELLED, attempts=0, runs=0,
                     submitted=0.0, finished=1.0, result=None,
                     error={"reason": "cancelled", "terminate": terminate})


def test_a_job_cancelled_elsewhere_is_asked_back_or_its_worker_stopped() -> None:
    held, cancels, store = HeldJobs(3), Cancels(), _Dropped()
    held.hold(0, [QueuedJob("run", "t", b"null"), QueuedJob("wait", "t", b"null")])
    held.hold(1, [QueuedJob("other", "t", b"null")])
    held.start(0, ["run"], 1.0)
    held.start(1, ["other"], 1.0)
    assert held.started_slot("run") == 0 and held.started_slot("wait") is None
    sent: Sent = []
    # Not started: held no more, asked back from its worker at the next pass.
    cancels.ended_elsewhere(cast(JobStore, store), held, "wait", _cancelled(False))
    cancels.send([(0, b"w0"), (1, b"w1")], lambda r, m: sent.append((r, m)))
    assert sent == [(b"w0", wire.Revoke(ids=["wait"]))] and "wait" not in held.running
    # Running, and the cancel said terminate: its worker is to be stopped.
    cancels.ended_elsewhere(cast(JobStore, store), held, "run", _cancelled(True))
    assert cancels.take_stops() == [(0, "job run cancelled with terminate")]
    # Running, without terminate (its host did not answer the canceller): it runs on,
    # held no more, so that its result is dropped.
    cancels.ended_elsewhere(cast(JobStore, store), held, "other", _cancelled(False))
    assert store.dropped == ["wait", "run", "other"] and not held.running
    cancels.ended_elsewhere(cast(JobStore, store), held, "gone", _cancelled(True))
    assert cancels.take_stops() == [] and store.dropped == ["wait", "run", "other"]
