"""Which worker slot holds which job, in memory: the jobs leased from the store
(supervisor.jobs.store) and handed to workers.

No I/O and no clock (time is passed in). A worker holds up to its credit of jobs and says
which ones it starts (a job, or a batch of jobs of one task) before it runs them. When the
worker dies, the jobs it had started and not finished lost a run (an attempt); the others
it held lost nothing; the broker gives both back to the store, in order.

The daemon may also ask a worker for the jobs it holds and has not started (`revoke`): the
worker answers with those it still had, which go back to the store (`take_back`); the
others it has started by then, and they run there.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from supervisor.proto.wire import DEFAULT_PRIORITY, MAX_PRIORITY


@dataclass
class QueuedJob:
    id: str
    task: str
    payload: bytes
    attempts: int = 0     # runs lost to a dying, hung or timed-out worker
    runs: int = 0         # times a worker started it
    slot: int | None = None
    started: bool = False  # started by the slot that holds it now
    priority: int = DEFAULT_PRIORITY


@dataclass
class Loss:
    requeued: list[QueuedJob]
    dead: list[QueuedJob]


class HeldJobs:
    def __init__(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts
        self.duplicate_runs = 0  # starts beyond a job's first: the price of at-least-once
        self.running: dict[str, QueuedJob] = {}  # held by a slot, by id
        self._held: dict[int, deque[QueuedJob]] = {}
        # Per slot: the jobs it started last and has not finished, and when it started them.
        self._started: dict[int, tuple[list[QueuedJob], float]] = {}
        # Per slot: the ids of the one revoke it has not answered yet.
        self.revoking: dict[int, list[str]] = {}
        # Jobs held and not started, of each priority (so that the lowest is known at once).
        self._unstarted = [0] * (MAX_PRIORITY + 1)

    def held(self, slot: int) -> int:
        return len(self._held.get(slot, ()))

    def current(self, slot: int) -> QueuedJob | None:
        """The job the slot runs now (the first of its batch), if any."""
        started = self._started.get(slot)
        return started[0][0] if started and started[0] else None

    def current_since(self, slot: int) -> float | None:
        """When the slot started the job (or batch) it runs now."""
        started = self._started.get(slot)
        return started[1] if started and started[0] else None

    def busy_for(self, slot: int, now: float) -> float:
        """Seconds the slot has been running its current job (or batch); 0 when none."""
        since = self.current_since(slot)
        return 0.0 if since is None else now - since

    def unstarted(self, slot: int) -> list[QueuedJob]:
        """The jobs the slot holds, waiting behind the one it runs."""
        return [job for job in self._held.get(slot, ()) if not job.started]

    def lowest_unstarted(self) -> int | None:
        """The lowest priority of the jobs held and not started by any slot, if any."""
        return next((p for p, n in enumerate(self._unstarted) if n), None)

    def revoke(self, slot: int, below: int | None = None) -> list[str]:
        """Ask for the slot's unstarted jobs back (of a priority below `below`, if given):
        their ids, unless a revoke is already outstanding or there is nothing to take."""
        if slot in self.revoking:
            return []
        ids = [job.id for job in self.unstarted(slot) if below is None or job.priority < below]
        if ids:
            self.revoking[slot] = ids
        return ids

    def take_back(self, slot: int, job_ids: list[str]) -> list[QueuedJob]:
        """The slot's worker gave these jobs back, unstarted: no longer held, in the order
        they were handed out. Ids it no longer holds are ignored."""
        self.revoking.pop(slot, None)
        wanted = set(job_ids)
        jobs = self._held.get(slot)
        if not jobs or not wanted:
            return []
        taken = [job for job in jobs if job.id in wanted and not job.started]
        for job in taken:
            jobs.remove(job)
            del self.running[job.id]
            job.slot = None
            self._unstarted[job.priority] -= 1
        return taken

    def started_slot(self, job_id: str) -> int | None:
        """The slot whose worker runs the job now, if one does (read from another thread
        too: a shared store answers a canceller with it)."""
        job = self.running.get(job_id)
        return job.slot if job is not None and job.started else None

    def remove(self, job_id: str) -> QueuedJob | None:
        """Hold the job no more (it is cancelled), started or not; None if no slot holds
        it. A result its worker sends for it later is no job of that slot's: dropped."""
        job = self.running.pop(job_id, None)
        if job is None or job.slot is None:
            return None
        self._held[job.slot].remove(job)
        if not job.started:
            self._unstarted[job.priority] -= 1
        started = self._started.get(job.slot)
        if started and job in started[0]:
            started[0].remove(job)
        return job

    def hold(self, slot: int, jobs: list[QueuedJob]) -> None:
        """`slot` is handed these jobs (leased from the store), to run in this order."""
        held = self._held.setdefault(slot, deque())
        for job in jobs:
            job.slot = slot
            job.started = False
            held.append(job)
            self.running[job.id] = job
            self._unstarted[job.priority] += 1

    def start(self, slot: int, job_ids: list[str], now: float) -> list[QueuedJob]:
        """The slot's worker says it starts these jobs (of those it holds)."""
        started = [job for job_id in job_ids
                   if (job := self.running.get(job_id)) is not None and job.slot == slot]
        for job in started:
            self._mark_started(job)
        self._started[slot] = (started, now)
        return started

    def _mark_started(self, job: QueuedJob) -> None:
        if not job.started:
            job.started = True
            self._unstarted[job.priority] -= 1
            job.runs += 1
            if job.runs > 1:
                self.duplicate_runs += 1

    def complete(self, slot: int, job_id: str, now: float) -> QueuedJob | None:
        """The slot reported the job's end; None if the slot did not hold it."""
        job = self.running.get(job_id)
        jobs = self._held.get(slot)
        if job is None or job.slot != slot or not jobs:
            return None
        # Its result can overtake the line that says it started (they travel apart).
        self._mark_started(job)
        jobs.remove(job)
        del self.running[job_id]
        started = self._started.get(slot)
        if started and job in started[0]:
            started[0].remove(job)
        return job

    def lose(self, slot: int, count_attempt: bool) -> Loss:
        """The slot's worker is gone: the jobs it was running lost an attempt, the rest lost
        nothing; those not dead of it are to go back, in the order they were held."""
        jobs = list(self._held.pop(slot, ()))
        self.revoking.pop(slot, None)
        running = self._started.pop(slot, ([], 0.0))[0] if count_attempt else []
        dead = []
        for job in jobs:
            del self.running[job.id]
            job.slot = None
            if not job.started:
                self._unstarted[job.priority] -= 1
            if job in running:
                job.attempts += 1
                if job.attempts >= self.max_attempts:
                    dead.append(job)
        return Loss([j for j in jobs if j not in dead], dead)

    def overdue(self, now: float, timeout_of: dict[str, float],
                default: float) -> list[tuple[int, QueuedJob, float]]:
        """(slot, job, limit) for each slot whose running job passed its time limit."""
        late = []
        for slot, (jobs, since) in self._started.items():
            if jobs:
                limit = timeout_of.get(jobs[0].task) or default
                if now - since > limit:
                    late.append((slot, jobs[0], limit))
        return late
