"""What an operator does with jobs that ended or wait (supervisor.jobs.broker applies it):
run ended ones again (`docbrainctl retry`), and forget jobs (`docbrainctl purge`).

A retry keeps the job's id, payload and priority; it is pending again at the end of its
priority's queue, its attempts reset, and what it came to (state, attempts, runs, error)
stays in its history. Only failed, dead or cancelled jobs run again; a request naming any
other (or an unknown id) is refused whole, naming each, and changes nothing. A purge takes
jobs of one state; pending ones a worker holds (running) are not taken.
"""

from __future__ import annotations

from supervisor.jobs.held import HeldJobs
from supervisor.jobs.journal import CANCELLED, DEAD, FAILED, FINAL_STATES, PENDING, StoredJob
from supervisor.jobs.store import JobStore
from supervisor.proto.control import RequestError

RETRYABLE = (FAILED, DEAD, CANCELLED)
PURGEABLE = (PENDING, *FINAL_STATES)
NATS_UPKEEP = ("retry and purge on the nats backend are made by docbrainctl itself, not by a "
               "daemon: run docbrainctl retry / purge")


def to_retry(store: JobStore, held: HeldJobs, backend: str, job_ids: list[str],
             state: str | None, task: str | None) -> list[StoredJob]:
    """The jobs to run again: those named, or every one in `state` (of `task`)."""
    if backend == "nats":
        raise RequestError(NATS_UPKEEP)
    if state is not None:
        if state not in RETRYABLE:
            raise RequestError(f"retry: state must be one of {', '.join(RETRYABLE)}, "
                               f"got {state!r}")
        job_ids = store.select(state, task, None)
    elif task is not None:
        raise RequestError("retry: a task selects jobs of a state: give the state too")
    elif not job_ids:
        raise RequestError("retry: name jobs by their ids or a state")
    found, problems = [], []
    for job_id in dict.fromkeys(job_ids):
        stored = store.get(job_id)
        if stored is None:
            problems.append(f"{job_id}: no such job")
        elif job_id in held.running or stored.state not in RETRYABLE:
            problems.append(f"{job_id} is {'running' if job_id in held.running else stored.state}")
        else:
            found.append(stored)
    if problems:
        raise RequestError(f"retry: {'; '.join(problems)} (only failed, dead or cancelled "
                           "jobs run again; nothing was retried)")
    return found


def retry(store: JobStore, held: HeldJobs, backend: str, job_ids: list[str],
          state: str | None, task: str | None) -> list[str]:
    """Run the jobs again (`to_retry`); their ids."""
    found = to_retry(store, held, backend, job_ids, state, task)
    for stored in found:
        store.resubmit(stored)
    return [stored.id for stored in found]


def to_purge(store: JobStore, held: HeldJobs, backend: str, state: str, task: str | None,
             before: float | None) -> list[str]:
    """The ids of the jobs a purge takes."""
    if backend == "nats":
        raise RequestError(NATS_UPKEEP)
    if state not in PURGEABLE:
        raise RequestError(f"purge: state must be one of {', '.join(PURGEABLE)}, got {state!r}")
    ids = store.select(state, task, before)
    return [job_id for job_id in ids if job_id not in held.running]
