"""No job waits behind a long one while another worker could run it (issue: prefetch).

Unit tests of the pieces: the queue's revoke and take-back, the broker's dispatch, the
worker's mailbox. The integration tests, against a real daemon with two real workers, are
in tests/system/test_dispatch.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

from helpers_queue import make_broker, numbered

from supervisor.jobs.broker import Broker
from supervisor.jobs.dispatch import BUSY_AFTER
from supervisor.jobs.held import HeldJobs, QueuedJob
from supervisor.proto import wire
from workers.channel import Mailbox, PendingJob


def _held(slot: int, n: int) -> HeldJobs:
    held = HeldJobs(max_attempts=3)
    held.hold(slot, [QueuedJob(f"j{i}", "t", b"null") for i in range(n)])
    return held


def test_take_back_returns_unstarted_jobs_in_order() -> None:
    queue = _held(0, 4)
    queue.start(0, ["j0"], 0.0)
    assert queue.revoke(0) == ["j1", "j2", "j3"]
    assert queue.revoke(0) == []  # one outstanding revoke per slot
    # The worker had started j1 by the time the revoke came: it gives back j2 and j3 only.
    taken = queue.take_back(0, ["j2", "j3"])
    assert [j.id for j in taken] == ["j2", "j3"]
    assert all(j.slot is None for j in taken)
    assert queue.held(0) == 2 and queue.running.keys() == {"j0", "j1"}
    assert queue.revoke(0) == ["j1"]  # answered: a new revoke may go (j1 not known started)
    # A started job is never taken back, whatever the answer names.
    queue.start(0, ["j1"], 1.0)
    assert queue.take_back(0, ["j0", "j1", "nonesuch"]) == []
    assert queue.held(0) == 2


def test_a_dead_slot_has_no_revoke_outstanding() -> None:
    queue = _held(1, 3)
    queue.start(1, ["j0"], 0.0)
    assert queue.revoke(1) == ["j1", "j2"]
    loss = queue.lose(1, count_attempt=True)
    assert [j.id for j in loss.requeued] == ["j0", "j1", "j2"]
    assert 1 not in queue.revoking
    assert queue.take_back(1, ["j1"]) == []  # a late answer of the dead worker changes nothing
    assert queue.running == {} and queue.held(1) == 0


def _broker(tmp_path: Path, n: int) -> Broker:
    return make_broker(tmp_path, numbered(n))


def test_dispatch_feeds_idle_slots_first_and_never_a_busy_one(tmp_path: Path) -> None:
    broker = _broker(tmp_path, 10)
    sent: list[tuple[bytes, wire.Message]] = []
    try:
        slots = [(0, b"w0"), (1, b"w1")]
        assert broker.dispatch(slots[:1], 0.0, lambda r, m: sent.append((r, m))) == [0]
        broker.jobs_started(0, ["j0"], 0.0)  # slot 0 holds 4 and runs j0
        sent.clear()
        # Slot 1, idle, is fed first, though it comes second.
        later = BUSY_AFTER / 2
        assert broker.dispatch(list(reversed(slots)), later,
                               lambda r, m: sent.append((r, m))) == [1]
        assert broker.held.held(0) == 4 and broker.held.held(1) == 4
        # Once j0 has run past BUSY_AFTER, slot 0 gets nothing more and is asked for the
        # three jobs it holds behind j0, because slot 1 is not busy.
        broker.held.complete(1, "j4", later)
        sent.clear()
        fed = broker.dispatch(slots, BUSY_AFTER + 0.01, lambda r, m: sent.append((r, m)))
        assert fed == [1]
        assert (b"w0", wire.Revoke(ids=["j1", "j2", "j3"])) in sent
        assert all(r == b"w1" for r, m in sent if isinstance(m, wire.Job))
        assert broker.on_revoked(0, wire.Revoked(ids=["j2", "j3"])) is False  # j0, j1 held
        assert broker.store.waiting_ids()[:2] == ["j2", "j3"]
    finally:
        broker.close()


def test_a_lone_busy_slot_keeps_what_it_holds(tmp_path: Path) -> None:
    broker = _broker(tmp_path, 6)
    sent: list[tuple[bytes, wire.Message]] = []
    try:
        broker.dispatch([(0, b"w0")], 0.0, lambda r, m: sent.append((r, m)))
        broker.jobs_started(0, ["j0"], 0.0)
        sent.clear()
        # No other slot could run them sooner: no revoke, and no new jobs for slot 0.
        assert broker.dispatch([(0, b"w0")], 10.0, lambda r, m: sent.append((r, m))) == []
        assert sent == [] and broker.held.held(0) == 4 and broker.store.waiting() == 2
    finally:
        broker.close()


def test_a_busy_workers_credit_is_lent_to_the_free_ones(tmp_path: Path) -> None:
    """As many jobs in flight as with every worker free: one worker's pipeline is kept as
    full as two would be."""
    broker = _broker(tmp_path, 20)
    sent: list[tuple[bytes, wire.Message]] = []
    try:
        slots = [(0, b"w0"), (1, b"w1"), (2, b"w2")]
        broker.dispatch(slots[:1], 0.0, lambda r, m: sent.append((r, m)))
        broker.jobs_started(0, ["j0"], 0.0)
        broker.dispatch(slots, BUSY_AFTER + 1, lambda r, m: sent.append((r, m)))
        # credit 4 x 3 workers, over the 2 free ones: 6 each.
        assert [broker.held.held(s) for s, _ in slots] == [4, 6, 6]
    finally:
        broker.close()


def test_mailbox_gives_back_only_what_the_task_thread_has_not_taken() -> None:
    box = Mailbox()
    box.jobs.extend(PendingJob(f"j{i}", "t", b"null") for i in range(4))
    assert [j.id for j in box.take(set())] == ["j0"]
    assert box.give_back(["j0", "j1", "j3"]) == ["j1", "j3"]
    assert [j.id for j in box.jobs] == ["j2"]
    box.jobs.extend(PendingJob(f"b{i}", "batched", b"null") for i in range(3))
    assert [j.id for j in box.take({"batched"})] == ["j2"]
    assert [j.id for j in box.take({"batched"})] == ["b0", "b1", "b2"]
    assert box.take({"batched"}) == []


def test_mailbox_never_hands_a_job_to_both_sides() -> None:
    """The task thread takes while the io thread gives back: each job goes one way."""
    for _ in range(50):
        box = Mailbox()
        ids = [f"j{i}" for i in range(200)]
        box.jobs.extend(PendingJob(i, "t", b"null") for i in ids)
        taken: list[str] = []

        def take() -> None:
            while batch := box.take(set()):
                taken.extend(j.id for j in batch)

        thread = threading.Thread(target=take)
        thread.start()
        given = box.give_back(ids[::2]) + box.give_back(ids)
        thread.join()
        assert sorted(taken + given) == sorted(ids)
        assert not set(taken) & set(given)
