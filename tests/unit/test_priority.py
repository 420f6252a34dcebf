"""Priorities: the store's order, the broker's dispatch, the worker's mailbox, the checks.

The integration test, a priority job submitted behind a backlog on a real daemon, is in
tests/system/test_priority.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
from helpers_queue import make_broker, numbered

from supervisor.client.checks import check_priority
from supervisor.jobs.checks import priority_problem
from supervisor.conf.settings import NatsSettings
from supervisor.jobs.held import HeldJobs, QueuedJob
from supervisor.jobs.jetstream import LEVELS, Layout, job_key, level_of
from supervisor.jobs.natsfeed import Feed
from supervisor.jobs.natslink import Link
from supervisor.jobs.sqlite import SqliteStore
from supervisor.proto import wire
from workers.channel import Mailbox, PendingJob

Sent = list[tuple[bytes, wire.Message]]


def _store(tmp_path: Path, jobs: list[tuple[str, int]]) -> SqliteStore:
    store = SqliteStore(str(tmp_path / "journal.sqlite3"))
    for job_id, priority in jobs:
        assert store.submit(job_id, "t", b"null", 1.0, priority)
    store.commit()
    return store


def test_higher_priorities_lease_first_and_each_level_in_order(tmp_path: Path) -> None:
    store = _store(tmp_path, [("a1", 1), ("b5", 5), ("c1", 1), ("d9", 9), ("e5", 5)])
    try:
        assert store.top_priority() == 9
        assert store.waiting_ids() == ["d9", "b5", "e5", "a1", "c1"]
        # One level per lease: a batch never mixes priorities.
        assert [j.id for j in store.lease(10)] == ["d9"]
        fives = store.lease(10)
        assert [(j.id, j.priority) for j in fives] == [("b5", 5), ("e5", 5)]
        store.requeue(fives[1:])  # back to the front of its own level
        assert store.waiting_ids() == ["e5", "a1", "c1"] and store.waiting() == 3
        assert store.top_priority() == 5
    finally:
        store.close()


def test_the_order_survives_a_restart(tmp_path: Path) -> None:
    store = _store(tmp_path, [("a1", 1), ("b9", 9), ("c1", 1), ("d9", 9)])
    store.close()
    store = SqliteStore(str(tmp_path / "journal.sqlite3"))
    try:
        assert store.waiting_ids() == ["b9", "d9", "a1", "c1"]
        stored = store.get("b9")
        assert stored is not None and stored.priority == 9
        assert stored.summary()["priority"] == 9
    finally:
        store.close()


def test_a_retry_comes_back_at_the_front_of_its_own_level(tmp_path: Path) -> None:
    store = _store(tmp_path, [("a1", 1), ("b1", 1), ("c5", 5)])
    try:
        store.lease(1)  # c5
        (first,) = store.lease(1)
        store.retry(first, 0.0, {"type": "E", "message": "m"})  # due at once
        assert store.waiting_ids() == ["a1", "b1"]
    finally:
        store.close()


def test_held_jobs_know_the_lowest_unstarted_priority() -> None:
    held = HeldJobs(max_attempts=3)
    assert held.lowest_unstarted() is None
    held.hold(0, [QueuedJob("x", "t", b"null", priority=2), QueuedJob("y", "t", b"null",
                                                                      priority=2)])
    held.hold(1, [QueuedJob("z", "t", b"null", priority=7)])
    assert held.lowest_unstarted() == 2
    held.start(0, ["x"], 0.0)
    assert held.lowest_unstarted() == 2  # y is not started
    assert held.revoke(0, below=2) == []  # nothing below 2
    assert held.revoke(0, below=7) == ["y"]
    held.take_back(0, ["y"])
    assert held.lowest_unstarted() == 7
    held.lose(1, count_attempt=True)
    assert held.lowest_unstarted() is None


def _jobs(sent: Sent) -> list[tuple[bytes, list[str], int]]:
    return [(r, m.ids, m.priority) for r, m in sent if isinstance(m, wire.Job)]


def test_low_priorities_go_in_small_batches_and_leave_room(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, [(f"b{i}", 1) for i in range(20)], credit=6,
                         workers="low_priority_batch = 2\n")
    sent: Sent = []
    try:
        broker.dispatch([(0, b"w0")], 0.0, lambda r, m: sent.append((r, m)))
        # 5 of the credit of 6, two at a time: one place stays free.
        assert _jobs(sent) == [(b"w0", ["b0", "b1"], 1), (b"w0", ["b2", "b3"], 1),
                               (b"w0", ["b4"], 1)]
        broker.jobs_started(0, ["b0", "b1"], 0.0)
        broker.store.submit("q", "echo", b"null", 0.0, 9)
        sent.clear()
        broker.dispatch([(0, b"w0")], 0.01, lambda r, m: sent.append((r, m)))
        # The question is sent at once, in its own message, with its priority.
        assert _jobs(sent) == [(b"w0", ["q"], 9)]
        assert not any(isinstance(m, wire.Revoke) for _, m in sent)
    finally:
        broker.close()


def test_a_waiting_higher_job_takes_back_lower_ones_held(tmp_path: Path) -> None:
    broker = make_broker(tmp_path, numbered(12))
    sent: Sent = []
    slots = [(0, b"w0"), (1, b"w1")]
    try:
        broker.dispatch(slots, 0.0, lambda r, m: sent.append((r, m)))
        broker.jobs_started(0, ["j0"], 0.0)
        broker.jobs_started(1, ["j4"], 0.0)
        broker.store.submit("q", "echo", b"null", 0.0, 9)
        sent.clear()
        # Every credit is held: the jobs of priority 5 not started are asked back.
        assert broker.dispatch(slots, 0.01, lambda r, m: sent.append((r, m))) == []
        assert sent == [(b"w0", wire.Revoke(ids=["j1", "j2", "j3"])),
                        (b"w1", wire.Revoke(ids=["j5", "j6", "j7"]))]
        broker.on_revoked(0, wire.Revoked(ids=["j2", "j3"]))  # j1 had started
        sent.clear()
        broker.dispatch(slots, 0.02, lambda r, m: sent.append((r, m)))
        assert _jobs(sent)[0] == (b"w0", ["q"], 9)
        assert _jobs(sent)[1] == (b"w0", ["j2"], 5)  # then the front of its own level
    finally:
        broker.close()


def test_the_mailbox_runs_higher_priorities_first_and_batches_one_message() -> None:
    box = Mailbox()
    box.add([PendingJob("a", "e", b"null", 1, 1), PendingJob("b", "e", b"null", 1, 1)])
    box.add([PendingJob("c", "e", b"null", 1, 2)])
    box.add([PendingJob("q", "e", b"null", 9, 3)])
    box.add([PendingJob("d", "e", b"null", 5, 4)])
    assert [j.id for j in box.jobs] == ["q", "d", "a", "b", "c"]
    assert [j.id for j in box.take({"e"})] == ["q"]
    assert [j.id for j in box.take({"e"})] == ["d"]
    assert [j.id for j in box.take({"e"})] == ["a", "b"]  # not c: another message
    assert [j.id for j in box.take({"e"})] == ["c"]


@pytest.mark.parametrize("bad", [-1, 10, True, "5", 5.0, None])
def test_a_priority_that_is_not_one_is_refused_with_its_reason(bad: object,
                                                               tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="priority must be an integer 0-9"):
        check_priority(bad)
    assert priority_problem(bad) == wire.priority_problem(bad)
    assert priority_problem(9) is None and priority_problem(0) is None


def test_each_priority_has_its_subject_on_nats_and_the_default_keeps_the_old_one() -> None:
    settings = NatsSettings(servers=("nats://h:4222",), stream="DB")
    layout = Layout(cast(Link, None), settings, 60.0)
    assert layout.subject_of("abc") == "DB.job.abc"  # as before priorities: old jobs run
    for level in LEVELS:
        for key in ("abc", "9", "p9", job_key("a.b c")):
            subject = layout.subject_of(key, level)
            assert level_of(subject) == level, subject
            assert subject.rsplit(".", 1)[-1] == key
            assert subject.count(".") == (2 if level == wire.DEFAULT_PRIORITY else 3)
    assert LEVELS[0] == wire.MAX_PRIORITY and LEVELS[-1] == wire.MIN_PRIORITY


def test_a_host_pulls_a_higher_priority_though_lower_ones_fill_its_credit() -> None:
    settings = NatsSettings(servers=("nats://h:4222",), stream="DB")
    feed = Feed(cast(Link, None), Layout(cast(Link, None), settings, 60.0), settings)
    try:
        feed.want = 4
        feed.arrived[1].extend((QueuedJob(f"b{n}", "t", b"null", priority=1), None)
                               for n in range(4))
        assert feed._room(1) == 0 and feed._room(0) == 0  # no more bulk
        assert feed._room(9) == 4  # but a question is pulled
        feed.arrived[9].append((QueuedJob("q", "t", b"null", priority=9), None))
        assert feed.top() == 9 and feed._room(9) == 3 and feed._room(5) == 3
        assert feed.count() == 5
    finally:
        feed.close()

