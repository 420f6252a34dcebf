"""The seam between the broker and where accepted jobs are kept: `JobStore`.

The broker (supervisor.jobs.broker) talks to clients and workers; it tracks which worker
slot holds which job (supervisor.jobs.held). Everything that must outlive the daemon is
the store's: a job is accepted once the store has it (`submit`, then `commit`), it is handed
to workers by `lease`, and it leaves the store only by `finish`. A job a worker held goes
back with `requeue` (never started there: nothing changes) or `lose` (its run was lost to a
dying worker: the attempt is kept), and one whose task raised comes back after its backoff
with `retry`. `get`, `recent` and `counts` answer the queries of `docbrainctl jobs`/`job`
and `status`.

The first implementation is the journal of one host (supervisor.jobs.sqlite: SQLite, the
order of waiting jobs in memory). A store shared by several hosts implements the same
methods: `lease` pulls from the shared queue as much as this host's workers have credit for,
`requeue` and `lose` hand a job back to any host at once, and `commit` is where what was
written this pass becomes durable before anyone is told.
"""

from __future__ import annotations

from typing import Any, Protocol

from supervisor.jobs.held import QueuedJob
from supervisor.jobs.journal import StoredJob


class JobStore(Protocol):
    def submit(self, job_id: str, task: str, payload: bytes, now: float) -> bool:
        """Keep a new pending job; False if a job with this id exists already (a resent
        submit is not a second job)."""

    def lease(self, count: int) -> list[QueuedJob]:
        """Up to `count` waiting jobs, oldest first, for one worker; they are this host's
        until finished, requeued or lost."""

    def release(self, now: float) -> int:
        """Delayed jobs whose time has come (`now`: the wall clock) start waiting again, at
        the front; how many."""

    def requeue(self, jobs: list[QueuedJob]) -> None:
        """Leased jobs that were never started (a revoke answered): back to the front of the
        queue, in order, as they were."""

    def lose(self, jobs: list[QueuedJob]) -> None:
        """Jobs a gone worker held: back to the front, in order; the runs and attempts they
        lost (already counted on each job) are kept."""

    def retry(self, job: QueuedJob, not_before: float, error: dict[str, Any] | None) -> None:
        """The job's task raised and it runs again, not before `not_before` (wall clock);
        the error is kept for `docbrainctl job` to show why it waits."""

    def finish(self, job: QueuedJob, state: str, now: float, result: bytes | None = None,
               error: dict[str, Any] | None = None) -> None:
        """The job ended (done, failed or dead) with this result or error."""

    def commit(self) -> None:
        """Make durable what this pass wrote: clients are told only after it."""

    def unfinished(self, job_id: str) -> bool:
        """Is the job accepted and not finished (waiting, delayed or leased)? Cheaper than
        `get`: asked for every job a client waits on."""

    def get(self, job_id: str) -> StoredJob | None:
        """The job as stored (leased jobs read as pending), or None if unknown."""

    def recent(self, state: str | None, limit: int) -> list[StoredJob]:
        """The newest jobs, of one state if given."""

    def counts(self) -> dict[str, int]:
        """Jobs by state; pending counts the leased ones too."""

    def waiting(self) -> int:
        """Jobs ready to be leased now."""

    def delayed(self) -> int:
        """Jobs waiting for their retry's backoff."""

    def next_due(self) -> float | None:
        """When (wall clock) the soonest delayed job is due, if any."""

    def purge(self, finished_before: float) -> int:
        """Forget finished jobs that ended before then (result_ttl); how many."""

    def close(self) -> None: ...
