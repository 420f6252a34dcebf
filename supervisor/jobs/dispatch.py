"""Which slot gets which jobs: the broker's dispatch policy (supervisor.jobs.broker).

Pure of I/O: it leases from the store, records in `HeldJobs`, and sends through the
callable it is given. Each pass: the least loaded serving slots first, none to a busy one
(its unstarted jobs are asked back while another is free: no job waits behind a long one),
the highest priority first, and jobs below the default priority in small batches that leave
room for a higher one (supervisor.conf.settings: `workers.low_priority_batch`).
"""

from __future__ import annotations

from collections.abc import Callable

from supervisor.conf.settings import WorkersSettings
from supervisor.jobs.held import HeldJobs
from supervisor.jobs.store import JobStore
from supervisor.proto import wire

Send = Callable[[bytes, wire.Message], None]

# A worker whose current job has run this long is busy: it is handed no more jobs, and the
# jobs it holds unstarted are taken back while another serving worker is not busy, so no
# job waits behind a long one (Celery's prefetch problem). Prefetching behind a job this
# long saves nothing worth having: one round trip of well under a millisecond.
BUSY_AFTER = 0.1  # seconds


def dispatch(store: JobStore, held: HeldJobs, settings: WorkersSettings,
             slots: list[tuple[int, bytes]], now: float, send: Send) -> list[int]:
    """Hand pending jobs to serving slots with credit left, the least loaded first, and
    none to a busy one (BUSY_AFTER); returns the slots fed. A busy slot's unstarted jobs
    are asked back while another slot is not busy (`on_revoked` requeues them)."""
    credit = settings.credit
    free = []
    for slot, routing_id in slots:
        if held.busy_for(slot, now) < BUSY_AFTER:
            free.append((slot, routing_id))
    if free and len(free) < len(slots):
        for slot, routing_id in slots:
            if (slot, routing_id) not in free and (ids := held.revoke(slot)):
                send(routing_id, wire.Revoke(ids=ids))
    if free:  # the credit of busy workers is lent to the free ones: as many in flight
        credit = credit * len(slots) // len(free)
    fed, wanted = [], 0
    for slot, routing_id in sorted(free, key=lambda s: held.held(s[0])):
        room = credit - held.held(slot)
        given = _feed(store, held, settings, routing_id, slot, room, send) if room > 0 else 0
        wanted += max(0, room - given)
        if given:
            fed.append(slot)
    store.want(wanted)  # a shared store pulls that many for the next pass
    _make_way(store, held, free, send)
    return fed


def _feed(store: JobStore, held: HeldJobs, settings: WorkersSettings, routing_id: bytes,
          slot: int, room: int, send: Send) -> int:
    """Lease up to `room` jobs to the slot, highest priority first, a Job message per
    priority (a worker batches only the jobs of one message). Jobs below the default
    priority go `low_priority_batch` at a time and leave one place of the credit free,
    so that a job of a higher priority submitted now is sent at once, and the worker
    runs it after the batch it is running (it runs higher priorities first)."""
    given = 0
    keep = 1 if settings.credit > 1 else 0
    while given < room and (top := store.top_priority()) is not None:
        count = room - given
        if top < wire.DEFAULT_PRIORITY:
            count = min(count - keep, settings.low_priority_batch)
            if count <= 0:
                break
        jobs = store.lease(count)
        held.hold(slot, jobs)
        send(routing_id, wire.Job(ids=[j.id for j in jobs], tasks=[j.task for j in jobs],
                                  priority=top, data=[j.payload for j in jobs]))
        given += len(jobs)
    return given


def _make_way(store: JobStore, held: HeldJobs, free: list[tuple[int, bytes]],
              send: Send) -> None:
    """A job waits, with no room for it, while workers hold unstarted jobs of a lower
    priority: ask those back (`on_revoked` requeues them), so that it runs after the
    batches running now."""
    top = store.top_priority()
    lowest = held.lowest_unstarted()
    if top is None or lowest is None or lowest >= top:
        return
    for slot, routing_id in free:
        if ids := held.revoke(slot, below=top):
            send(routing_id, wire.Revoke(ids=ids))
