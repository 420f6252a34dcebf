"""The job store of one host: the journal (SQLite in state_dir) keeps every job; the jobs
waiting to run are also kept in memory, a queue per priority, each in the order it runs,
so that leasing one costs no query. After a restart the journal's pending jobs are read
back in submission order (a retry still in its backoff waits on, as it would have)."""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import deque
from typing import Any

from supervisor.jobs.held import QueuedJob
from supervisor.jobs.journal import PENDING, Journal, StoredJob
from supervisor.jobs.store import Commit
from supervisor.proto.wire import DEFAULT_PRIORITY, MAX_PRIORITY

NOTHING_FOUND = Commit()  # a journal refuses nothing, and finds resent submits at `submit`

log = logging.getLogger("supervisor.jobs")


class SqliteStore:
    """A `JobStore` (supervisor.jobs.store) on the journal."""

    def __init__(self, path: str, synchronous: str = "normal") -> None:
        self.journal = Journal(path, synchronous)
        # Per priority (the index), the jobs ready to run, in their order; and how many.
        self._levels: list[deque[QueuedJob]] = [deque() for _ in range(MAX_PRIORITY + 1)]
        self._waiting = 0
        # Jobs to retry later: (not before, order, job), the soonest first. Wall-clock
        # times: they are stored, and outlive the daemon.
        self._delayed: list[tuple[float, int, QueuedJob]] = []
        self._scheduled = 0  # of those, submitted with a delay and never run (status)
        self._order = itertools.count()
        self._unfinished: set[str] = set()  # every pending job's id, leased ones too
        self._answers: list[tuple[str, StoredJob | None]] = []
        now = time.time()
        for stored in self.journal.pending():
            job = QueuedJob(stored.id, stored.task, stored.payload, stored.attempts, stored.runs,
                            priority=stored.priority)
            self._unfinished.add(job.id)
            if stored.not_before is not None and stored.not_before > now:
                self._defer(job, stored.not_before)
            else:
                self._add([job])
        self._counts = self.journal.counts()
        if self._counts[PENDING]:
            log.info("journal: %d job(s) to run from before", self._counts[PENDING])

    def submit(self, job_id: str, task: str, payload: bytes, now: float,
               priority: int = DEFAULT_PRIORITY, not_before: float | None = None) -> bool:
        if not self.journal.add(job_id, task, payload, now, priority, not_before):
            return False
        job = QueuedJob(job_id, task, payload, priority=priority)
        if not_before is not None and not_before > now:
            self._defer(job, not_before)
        else:
            self._levels[priority].append(job)
            self._waiting += 1
        self._unfinished.add(job_id)
        self._counts[PENDING] += 1
        return True

    def top_priority(self) -> int | None:
        if not self._waiting:
            return None
        return next(p for p in range(MAX_PRIORITY, -1, -1) if self._levels[p])

    def lease(self, count: int) -> list[QueuedJob]:
        top = self.top_priority()
        if top is None:
            return []
        waiting = self._levels[top]
        jobs = [waiting.popleft() for _ in range(min(count, len(waiting)))]
        self._waiting -= len(jobs)
        return jobs

    def requeue(self, jobs: list[QueuedJob]) -> None:
        self._add(jobs, front=True)

    def take(self, job_id: str) -> QueuedJob | None:
        """Take a job that waits (ready or delayed) out of the queue, to end it otherwise
        (a cancel); None if it does not wait here."""
        for level in self._levels:
            for job in level:
                if job.id == job_id:
                    level.remove(job)
                    self._waiting -= 1
                    return job
        for index, (_due, _order, job) in enumerate(self._delayed):
            if job.id == job_id:
                self._delayed.pop(index)
                heapq.heapify(self._delayed)
                self._scheduled -= not job.runs
                return job
        return None

    def resubmit(self, stored: StoredJob) -> None:
        self.journal.resubmit(stored)
        self._add([QueuedJob(stored.id, stored.task, stored.payload, priority=stored.priority)])
        self._unfinished.add(stored.id)
        self._counts[stored.state] -= 1
        self._counts[PENDING] += 1

    def select(self, state: str, task: str | None, before: float | None) -> list[str]:
        return self.journal.select(state, task, before)

    def remove(self, job_ids: list[str]) -> None:
        gone = self._unfinished.intersection(job_ids)
        if gone:  # pending ones: out of the queue, in one pass over it
            for level in self._levels:
                kept = [job for job in level if job.id not in gone]
                level.clear()
                level.extend(kept)
            self._waiting = sum(len(level) for level in self._levels)
            self._delayed = [item for item in self._delayed if item[2].id not in gone]
            heapq.heapify(self._delayed)
            self._scheduled = sum(1 for _due, _order, job in self._delayed if not job.runs)
            self._unfinished -= gone
        self.journal.delete(job_ids)
        self._counts = self.journal.counts()

    def _add(self, jobs: list[QueuedJob], front: bool = False) -> None:
        """To the queues of their priorities, in their order: at the end, or the front."""
        for job in reversed(jobs) if front else jobs:
            level = self._levels[job.priority]
            if front:
                level.appendleft(job)
            else:
                level.append(job)
        self._waiting += len(jobs)

    def lose(self, jobs: list[QueuedJob]) -> None:
        for job in jobs:
            if job.runs:
                self.journal.lost(job.id, job.attempts, job.runs)
        self.requeue(jobs)

    def drop(self, job: QueuedJob) -> None:
        """Never called: no other process ends this journal's jobs."""

    def retry(self, job: QueuedJob, not_before: float, error: dict[str, Any] | None) -> None:
        self.journal.retry(job.id, job.attempts, job.runs, not_before, error)
        if not_before > time.time():
            self._defer(job, not_before)
        else:
            self._add([job], front=True)

    def finish(self, job: QueuedJob, state: str, now: float, result: bytes | None = None,
               error: dict[str, Any] | None = None) -> None:
        self.journal.finish(job.id, state, job.attempts, job.runs, now, result, error)
        self._unfinished.discard(job.id)
        self._counts[PENDING] -= 1
        self._counts[state] += 1

    def want(self, count: int) -> None:
        pass  # every waiting job is in memory already

    def commit(self) -> Commit:
        self.journal.commit()
        return NOTHING_FOUND

    def finished_elsewhere(self) -> list[str]:
        return []

    def look(self, job_id: str) -> None:
        self._answers.append((job_id, self.journal.get(job_id)))

    def answers(self) -> list[tuple[str, StoredJob | None]]:
        found, self._answers = self._answers, []
        return found

    def unfinished(self, job_id: str) -> bool:
        return job_id in self._unfinished

    def get(self, job_id: str) -> StoredJob | None:
        return self.journal.get(job_id)

    def recent(self, state: str | None, limit: int, task: str | None = None,
               since: float | None = None) -> list[StoredJob]:
        return self.journal.recent(state, limit, task, since)

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def waiting(self) -> int:
        return self._waiting

    def waiting_ids(self) -> list[str]:
        """The ids of the jobs ready to be leased, in the order they would be."""
        return [job.id for level in reversed(self._levels) for job in level]

    def delayed(self) -> int:
        return len(self._delayed)

    def scheduled(self) -> int:
        return self._scheduled

    def next_due(self) -> float | None:
        return self._delayed[0][0] if self._delayed else None

    def release(self, now: float) -> int:
        """Delayed jobs that are due go to the front of their priority's queue, soonest
        first."""
        due = []
        while self._delayed and self._delayed[0][0] <= now:
            due.append(heapq.heappop(self._delayed)[2])
            self._scheduled -= not due[-1].runs
        self._add(due, front=True)
        return len(due)

    def purge(self, finished_before: float) -> int:
        purged = self.journal.purge(finished_before)
        if purged:
            self.journal.commit()
            self._counts = self.journal.counts()
        return purged

    def wakeup_fd(self) -> int | None:
        return None

    def woken(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"backend": "sqlite"}

    def close(self) -> None:
        self.journal.close()

    def _defer(self, job: QueuedJob, not_before: float) -> None:
        heapq.heappush(self._delayed, (not_before, next(self._order), job))
        self._scheduled += not job.runs
