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
order of waiting jobs in memory). The store shared by several hosts
(supervisor.jobs.natsstore: NATS JetStream) implements the same methods: `lease` hands out
what was pulled from the shared queue, `want` says how much more this host's workers have
credit for, `requeue` and `lose` hand a job back to any host at once, `commit` is where
what was written this pass becomes durable before anyone is told (and where a submit can
be found to be a resent one, or refused), and `finished_elsewhere` names the jobs another
host ended, for the clients here that wait on them. A shared store never makes the daemon's
loop wait on the network: its `commit` settles later (the loop is woken then), and `look`
answers later too (`answers`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from supervisor.jobs.held import QueuedJob
from supervisor.jobs.journal import StoredJob
from supervisor.proto.wire import DEFAULT_PRIORITY


class StoreError(Exception):
    """The store cannot be opened as configured: one line for the user."""


@dataclass
class Commit:
    """What a commit found: submits that were resent ones (the job exists); submits the
    store could not keep, with why (their submitters are told; nothing was stored); and
    submits it may or may not have kept (a timeout): they are left unanswered, so that
    their clients send them again, and a resent submit is not a second job."""
    duplicates: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    unanswered: list[str] = field(default_factory=list)
    # False until the store knows the above: a shared store fills them in on its own
    # thread, then sets this, then wakes the daemon's loop (`wakeup_fd`).
    settled: bool = True


class JobStore(Protocol):
    def submit(self, job_id: str, task: str, payload: bytes, now: float,
               priority: int = DEFAULT_PRIORITY, not_before: float | None = None) -> bool:
        """Keep a new pending job, to start not before `not_before` (wall clock) if given;
        False if a job with this id exists already (a resent submit is not a second
        job)."""

    def top_priority(self) -> int | None:
        """The highest priority of the jobs ready to be leased; None if there are none."""

    def lease(self, count: int) -> list[QueuedJob]:
        """Up to `count` waiting jobs of the highest priority waiting (`top_priority`),
        oldest first, for one worker; they are this host's until finished, requeued or
        lost."""

    def release(self, now: float) -> int:
        """Delayed jobs whose time has come (`now`: the wall clock) start waiting again, at
        the front; how many."""

    def requeue(self, jobs: list[QueuedJob]) -> None:
        """Leased jobs that were never started (a revoke answered): back to the front of the
        queue, in order, as they were."""

    def take(self, job_id: str) -> QueuedJob | None:
        """Take a job that waits here (ready or delayed) out of the queue, to end it
        otherwise (a cancel); None if none waits here. A shared store raises StoreError:
        it cannot take one job out of the shared queue."""

    def resubmit(self, stored: StoredJob) -> None:
        """An ended job runs again (`docbrainctl retry`): the same id, payload and priority,
        pending at the end of its priority's queue, its attempts reset and its outcome kept
        in its history. A shared store raises StoreError (not yet)."""

    def select(self, state: str, task: str | None, before: float | None) -> list[str]:
        """The ids of the jobs in `state` (of `task`; ended, or if pending submitted, before
        `before` (wall clock)), oldest first. A shared store raises StoreError (not yet)."""

    def remove(self, job_ids: list[str]) -> None:
        """Forget these jobs, ended or waiting here (`docbrainctl purge`). A shared store
        raises StoreError (not yet)."""

    def lose(self, jobs: list[QueuedJob]) -> None:
        """Jobs a gone worker held: back to the front, in order; the runs and attempts they
        lost (already counted on each job) are kept."""

    def drop(self, job: QueuedJob) -> None:
        """A leased job that ended elsewhere (cancelled by another process): forget it,
        with no end of this host's. One host's journal never has one."""

    def retry(self, job: QueuedJob, not_before: float, error: dict[str, Any] | None) -> None:
        """The job's task raised and it runs again, not before `not_before` (wall clock);
        the error is kept for `docbrainctl job` to show why it waits."""

    def finish(self, job: QueuedJob, state: str, now: float, result: bytes | None = None,
               error: dict[str, Any] | None = None) -> None:
        """The job ended (done, failed or dead) with this result or error."""

    def want(self, count: int) -> None:
        """This host's serving workers have credit for `count` more jobs than it holds:
        a shared store pulls up to that many (for the next `lease`)."""

    def commit(self) -> Commit:
        """Make durable what this pass wrote: clients are told only after it."""

    def finished_elsewhere(self) -> list[str]:
        """Jobs whose end another host stored since the last call (a shared store)."""

    def look(self, job_id: str) -> None:
        """Find the job for clients that wait on it: its answer comes from `answers`, at
        the next call (one host's journal) or later (a shared store)."""

    def answers(self) -> list[tuple[str, StoredJob | None]]:
        """What `look` found since the last call: each job as stored, or None if unknown."""

    def unfinished(self, job_id: str) -> bool:
        """Is the job accepted and not finished (waiting, delayed or leased)? Cheaper than
        `get`: asked for every job a client waits on."""

    def get(self, job_id: str) -> StoredJob | None:
        """The job as stored (leased jobs read as pending), or None if unknown."""

    def recent(self, state: str | None, limit: int, task: str | None = None,
               since: float | None = None) -> list[StoredJob]:
        """The newest jobs, of one state, of one task, submitted since a time (wall clock),
        where given. A shared store takes the newest `limit` ended jobs, then filters."""

    def counts(self) -> dict[str, int]:
        """Jobs by state; pending counts the leased ones too."""

    def waiting(self) -> int:
        """Jobs ready to be leased now."""

    def delayed(self) -> int:
        """Jobs waiting for their time: a retry's backoff, or a delayed submit."""

    def scheduled(self) -> int:
        """Of the delayed jobs, those submitted with a delay that have not run yet."""

    def next_due(self) -> float | None:
        """When (wall clock) the soonest delayed job is due, if any."""

    def purge(self, finished_before: float) -> int:
        """Forget finished jobs that ended before then (result_ttl); how many."""

    def wakeup_fd(self) -> int | None:
        """A file descriptor the daemon's loop polls: readable when jobs came (then call
        `woken`); None for a store that never wakes it."""

    def woken(self) -> None: ...

    def status(self) -> dict[str, Any]:
        """The backend and its own figures, for `docbrainctl status`."""

    def close(self) -> None: ...

