"""Cancelling jobs: which can be, and how (supervisor.jobs.broker applies it).

A job waiting in the store is taken out of it; one a worker holds and has not started is
held no more, and asked back from its worker (if the worker starts it anyway, it runs once
and its result is dropped); one running is cancelled only when asked to terminate it: its
worker is stopped and replaced, and the job is not run again. A request names any number
of jobs and is applied to all or to none: one that cannot be cancelled (unknown, ended,
running without terminate) refuses the whole request, naming each, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from supervisor.jobs.held import HeldJobs, QueuedJob
from supervisor.jobs.journal import StoredJob
from supervisor.jobs.store import JobStore
from supervisor.proto import wire
from supervisor.proto.control import RequestError

WAITING, HELD, RUNNING = "waiting", "held", "running"
NATS_CANCEL = ("cancel on the nats backend is made by the canceller itself, not by a daemon "
               "(supervisor.jobs.natscancel): use docbrainctl cancel or Client.cancel")


class Cancels:
    def __init__(self) -> None:
        self._ask_back: dict[int, list[str]] = {}  # per slot: cancelled jobs it holds
        self._stops: list[tuple[int, str]] = []  # workers to stop: (slot, why)

    def plan(self, store: JobStore, held: HeldJobs, backend: str, job_ids: list[str],
             terminate: bool) -> dict[str, str]:
        """Per job, how it is to be cancelled (WAITING, HELD or RUNNING), or RequestError
        naming every one that cannot be."""
        if backend == "nats":
            raise RequestError(NATS_CANCEL)
        if not job_ids:
            raise RequestError("cancel: name at least one job")
        plan, problems = {}, []
        for job_id in dict.fromkeys(job_ids):
            job = held.running.get(job_id)
            if job is not None and job.started and not terminate:
                problems.append(f"{job_id} is running (worker slot {job.slot}): cancel it "
                                "with --terminate, which stops its worker")
            elif job is not None:
                plan[job_id] = RUNNING if job.started else HELD
            elif store.unfinished(job_id):
                plan[job_id] = WAITING
            elif (stored := store.get(job_id)) is None:
                problems.append(f"{job_id}: no such job")
            else:
                problems.append(f"{job_id} is {stored.state} already")
        if problems:
            raise RequestError(f"cancel: {'; '.join(problems)} (nothing was cancelled)")
        return plan

    def ask_back(self, job: QueuedJob) -> None:
        """The job, cancelled, is held by its slot's worker: ask for it at the next pass."""
        if job.slot is not None:
            self._ask_back.setdefault(job.slot, []).append(job.id)

    def ended_elsewhere(self, store: JobStore, held: HeldJobs, job_id: str,
                        stored: StoredJob) -> None:
        """A job this host holds was cancelled elsewhere (a shared store: its end came from
        another process, supervisor.jobs.natscancel): held no more, asked back if its
        worker has not started it; its worker is to be stopped (`take_stops`) if it runs
        and the cancel said terminate."""
        job = held.remove(job_id)
        if job is None:
            return
        store.drop(job)
        if not job.started:
            self.ask_back(job)
        elif job.slot is not None and (stored.error or {}).get("terminate"):
            self._stops.append((job.slot, f"job {job_id} cancelled with terminate"))
        # else it runs on; its result is dropped (the cancel's end came first)

    def take_stops(self) -> list[tuple[int, str]]:
        """The workers to stop now, (slot, why): they run jobs cancelled with terminate."""
        stops, self._stops = self._stops, []
        return stops

    def send(self, slots: list[tuple[int, bytes]],
             send: Callable[[bytes, wire.Message], None]) -> None:
        for slot, routing_id in slots:
            if ids := self._ask_back.pop(slot, None):
                send(routing_id, wire.Revoke(ids=ids))
