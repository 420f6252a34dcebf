"""No job waits behind a long one while another worker could run it (issue: prefetch).

Unit tests of the pieces (the queue's revoke and take-back, the broker's dispatch, the
worker's mailbox) and integration tests against a real daemon with two real workers.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import zmq

from conftest import Instance, wait_for
from supervisor import wire
from supervisor.broker import BUSY_AFTER, Broker
from supervisor.client import Client
from supervisor.jobqueue import JobQueue, QueuedJob
from supervisor.config import load_config
from workers.channel import Mailbox, PendingJob


def _queue(n: int) -> JobQueue:
    queue = JobQueue(max_attempts=3)
    for i in range(n):
        queue.push(QueuedJob(f"j{i}", "t", b"null"))
    return queue


def test_take_back_returns_unstarted_jobs_to_the_front_in_order() -> None:
    queue = _queue(5)
    for _ in range(4):
        queue.assign(0, 0.0)
    queue.start(0, ["j0"], 0.0)
    assert queue.revoke(0) == ["j1", "j2", "j3"]
    assert queue.revoke(0) == []  # one outstanding revoke per slot
    # The worker had started j1 by the time the revoke came: it gives back j2 and j3 only.
    taken = queue.take_back(0, ["j2", "j3"])
    assert [j.id for j in taken] == ["j2", "j3"]
    assert [j.id for j in queue.pending] == ["j2", "j3", "j4"]
    assert queue.held(0) == 2 and "j2" in queue and queue.running.keys() == {"j0", "j1"}
    assert queue.revoke(0) == ["j1"]  # answered: a new revoke may go (j1 not known started)
    # A started job is never taken back, whatever the answer names.
    queue.start(0, ["j1"], 1.0)
    assert queue.take_back(0, ["j0", "j1", "nonesuch"]) == []
    assert queue.held(0) == 2


def test_a_dead_slot_has_no_revoke_outstanding() -> None:
    queue = _queue(3)
    for _ in range(3):
        queue.assign(1, 0.0)
    queue.start(1, ["j0"], 0.0)
    assert queue.revoke(1) == ["j1", "j2"]
    loss = queue.lose(1, count_attempt=True)
    assert [j.id for j in loss.requeued] == ["j0", "j1", "j2"]
    assert 1 not in queue.revoking
    assert queue.take_back(1, ["j1"]) == []  # a late answer of the dead worker changes nothing
    assert [j.id for j in queue.pending] == ["j0", "j1", "j2"]


def _broker(tmp_path: Path, n: int, credit: int = 4) -> Broker:
    config_path = tmp_path / "docbrain.toml"
    config_path.write_text(f'[supervisor]\nstate_dir = "{tmp_path}"\n'
                           f'[workers]\ncount = 2\ncredit = {credit}\n')
    broker = Broker(load_config(str(config_path)), zmq.Context.instance(),
                    f"ipc://{tmp_path}/q.sock", str(tmp_path / "journal.db"))
    for i in range(n):
        broker.queue.push(QueuedJob(f"j{i}", "echo", b"null"))
    return broker


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
        assert broker.queue.held(0) == 4 and broker.queue.held(1) == 4
        # Once j0 has run past BUSY_AFTER, slot 0 gets nothing more and is asked for the
        # three jobs it holds behind j0, because slot 1 is not busy.
        broker.queue.complete(1, "j4", later)
        sent.clear()
        fed = broker.dispatch(slots, BUSY_AFTER + 0.01, lambda r, m: sent.append((r, m)))
        assert fed == [1]
        assert (b"w0", wire.Revoke(ids=["j1", "j2", "j3"])) in sent
        assert all(r == b"w1" for r, m in sent if isinstance(m, wire.Job))
        assert broker.on_revoked(0, wire.Revoked(ids=["j2", "j3"])) is False  # j0, j1 held
        assert [j.id for j in broker.queue.pending][:2] == ["j2", "j3"]
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
        assert sent == [] and broker.queue.held(0) == 4 and len(broker.queue.pending) == 2
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
        assert [broker.queue.held(s) for s, _ in slots] == [4, 6, 6]
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


TASKS = '''\
import time
from workers import task


@task("nap")
def nap(seconds):
    time.sleep(seconds)
    return seconds
'''


def _start(instance: Instance) -> None:
    instance.write_task_module("naps", TASKS)
    instance.write_config('tasks = ["naps"]\n', workers=2)
    result = instance.ctl("start")
    assert result.returncode == 0, result.stderr


def test_new_job_goes_to_the_idle_worker_not_behind_a_long_one(instance: Instance) -> None:
    _start(instance)
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
    _start(instance)
    with Client(str(instance.config_path)) as client:
        ids = client.submit_many_nowait("nap", [120] + [0.01] * 31)
        results = [client.result(i, timeout=90) for i in ids[1:]]
        status = instance.status()
    assert results == [0.01] * 31
    assert status is not None
    assert [w["current_job"] for w in status["workers"]].count(ids[0]) == 1, \
        "the long job still runs: the others did not wait for it"
