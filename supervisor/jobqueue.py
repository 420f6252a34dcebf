"""Where every unfinished job is, in memory: pending, or held by a worker slot.

No I/O and no clock (time is passed in). A worker runs the jobs it holds one after another,
in the order they were handed to it, so the first job a slot holds is the one it is running:
when the worker dies, that job lost a run (an attempt); the others behind it lost nothing and
go back to the front of the queue, in order.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass
class QueuedJob:
    id: str
    task: str
    payload: bytes
    attempts: int = 0     # runs lost to a dying, hung or timed-out worker
    runs: int = 0         # times handed to a worker
    slot: int | None = None


@dataclass
class Loss:
    requeued: list[QueuedJob]
    dead: list[QueuedJob]


class JobQueue:
    def __init__(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts
        self.pending: deque[QueuedJob] = deque()
        self.running: dict[str, QueuedJob] = {}
        self._held: dict[int, deque[QueuedJob]] = {}
        self._head_since: dict[int, float] = {}  # when the slot's first held job started
        self._unheld: dict[str, QueuedJob] = {}  # pending, by id

    def push(self, job: QueuedJob) -> None:
        self.pending.append(job)
        self._unheld[job.id] = job

    def __contains__(self, job_id: str) -> bool:
        """Is the job unfinished (pending or held)?"""
        return job_id in self._unheld or job_id in self.running

    def held(self, slot: int) -> int:
        return len(self._held.get(slot, ()))

    def current(self, slot: int) -> QueuedJob | None:
        jobs = self._held.get(slot)
        return jobs[0] if jobs else None

    def assign(self, slot: int, now: float) -> QueuedJob | None:
        """Hand the oldest pending job to `slot`."""
        if not self.pending:
            return None
        job = self.pending.popleft()
        del self._unheld[job.id]
        job.slot = slot
        job.runs += 1
        jobs = self._held.setdefault(slot, deque())
        if not jobs:
            self._head_since[slot] = now
        jobs.append(job)
        self.running[job.id] = job
        return job

    def complete(self, slot: int, job_id: str, now: float) -> QueuedJob | None:
        """The slot reported the job's end; None if the slot did not hold it."""
        job = self.running.get(job_id)
        jobs = self._held.get(slot)
        if job is None or job.slot != slot or not jobs:
            return None
        was_head = jobs[0] is job
        jobs.remove(job)
        del self.running[job_id]
        if was_head:
            self._head_since[slot] = now  # the next one starts now
        return job

    def requeue(self, job: QueuedJob) -> None:
        """Put a job that is no longer held back at the front (a retryable failure)."""
        job.slot = None
        self.pending.appendleft(job)
        self._unheld[job.id] = job

    def lose(self, slot: int, count_attempt: bool) -> Loss:
        """The slot's worker is gone: its running job lost an attempt, the rest go back."""
        jobs = list(self._held.pop(slot, ()))
        self._head_since.pop(slot, None)
        dead = []
        for i, job in enumerate(jobs):
            del self.running[job.id]
            job.slot = None
            if i == 0 and count_attempt:
                job.attempts += 1
                if job.attempts >= self.max_attempts:
                    dead.append(job)
        requeued = [j for j in jobs if j not in dead]
        self.pending.extendleft(reversed(requeued))
        self._unheld.update((j.id, j) for j in requeued)
        return Loss(requeued, dead)

    def overdue(self, now: float, timeout_of: dict[str, float],
                default: float) -> list[tuple[int, QueuedJob, float]]:
        """(slot, job, limit) for each slot whose running job passed its time limit."""
        late = []
        for slot, jobs in self._held.items():
            if jobs:
                limit = timeout_of.get(jobs[0].task) or default
                if now - self._head_since[slot] > limit:
                    late.append((slot, jobs[0], limit))
        return late
