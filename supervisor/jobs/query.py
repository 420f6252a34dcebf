"""What `docbrainctl jobs` and `job ID` are told: the store's jobs, with those a worker
holds now shown as running (which slot holds a job is known only in memory)."""

from __future__ import annotations

from typing import Any

from supervisor.jobs.held import HeldJobs
from supervisor.jobs.journal import PENDING, RUNNING
from supervisor.jobs.store import JobStore
from supervisor.proto.control import RequestError


def recent(store: JobStore, held: HeldJobs, state: str | None, limit: int,
           task: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
    """The newest jobs (of one state, of one task, submitted since then, if given), newest
    first."""
    query = PENDING if state == RUNNING else state
    rows = []
    for stored in store.recent(query, limit if state != RUNNING else 1 << 30, task, since):
        info = stored.summary()
        job = held.running.get(stored.id)
        if job is not None:
            info.update(state=RUNNING, slot=job.slot, runs=job.runs)
        if state in (None, info["state"]):
            rows.append(info)
    return rows[:limit]


def job_info(store: JobStore, held: HeldJobs, job_id: str) -> dict[str, Any] | None:
    """One job with its result or error; None if unknown."""
    stored = store.get(job_id)
    if stored is None:
        return None
    try:
        info = stored.info()
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    running = held.running.get(job_id)
    if running is not None:
        info.update(state=RUNNING, slot=running.slot, runs=running.runs)
    return info
