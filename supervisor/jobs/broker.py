"""The job broker: clients submit on ``queue.sock``; jobs go to workers; results come back.

Each pass of the daemon's loop: read what clients sent (`drain`), apply workers' results
and losses, then `flush` -- one commit of the store, and only then the acknowledgements and
results -- then `dispatch` pending jobs to workers with credit left. So a job is accepted
(acknowledged) only once it is committed, and a result is handed out only once stored.
The broker keeps jobs only through its store (supervisor.jobs.store: the SQLite journal
here), and which worker slot holds which job in memory (supervisor.jobs.held).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from supervisor.conf.settings import Config
from supervisor.jobs import upkeep
from supervisor.jobs.cancel import HELD, RUNNING, WAITING, Cancels
from supervisor.jobs.checks import priority_problem, retry_delay, submit_problem
from supervisor.jobs.dispatch import dispatch
from supervisor.jobs.held import HeldJobs, QueuedJob
from supervisor.jobs.journal import (CANCELLED, DEAD, DONE, FAILED, FINAL_STATES, PENDING,
                                     StoredJob)
from supervisor.jobs.replies import Replies
from supervisor.jobs.sqlite import SqliteStore
from supervisor.jobs.store import Commit, JobStore
from supervisor.proto import wire

log = logging.getLogger("supervisor.jobs")
PURGE_EVERY = 3600.0  # seconds between purges of expired results
BUILTIN_TASKS = ("noop", "echo")


def _seconds(info: Any, key: str) -> float | None:
    """A task's own number of seconds from a worker's Ready, if it is a sane one."""
    value = info.get(key) if isinstance(info, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        return None
    return float(value)


def open_store(config: Config, journal_path: str, held: HeldJobs) -> JobStore:
    """The store that `[queue] backend` names (NATS's client is imported only for it)."""
    if config.queue.backend == "nats":
        from supervisor.jobs.natsstore import NatsStore
        return NatsStore(config, held.started_slot)
    return SqliteStore(journal_path, config.queue.synchronous)


class Broker:
    def __init__(self, config: Config, ctx: zmq.Context, endpoint: str, journal_path: str) -> None:
        self.config = config
        q = config.queue
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # ZeroMQ silently disconnects a peer that sends a frame (not a message: each frame)
        # over MAXMSGSIZE, and its client then hears nothing. So the bound is the protocol's
        # own frame limit, over any body and any payload a client may send, not
        # max_payload_bytes: a payload over that limit arrives, and gets a Rejected (checks).
        self.sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_DATA)
        # A ROUTER drops what does not fit a client's queue: room for a big pipelined map.
        self.sock.setsockopt(zmq.SNDHWM, 200_000)
        self.sock.bind(endpoint)
        self.held = HeldJobs(q.max_attempts)
        self.store = open_store(config, journal_path, self.held)
        self.catalog: dict[str, dict[str, Any]] = {}
        self.deferred: list[tuple[bytes, str, str, bool, bytes, int, float | None]] = []
        self.waiters: dict[str, set[bytes]] = {}
        self.replies = Replies()  # what to tell clients after this pass's commit
        # Passes whose commit a shared store has not settled yet, with what to tell then;
        # told in the order of the passes.
        self._unsent: deque[tuple[Commit, Replies]] = deque()
        # Told of every job that ends: task, state, seconds it ran (None when unknown).
        self.on_finished: Callable[[str, str, float | None], None] | None = None
        self.jobs_done: dict[int, int] = {}
        self.cancels = Cancels()  # jobs workers hold that were cancelled: to ask back
        self.dropped = 0
        self._next_purge = 0.0

    # -- clients -------------------------------------------------------------------------

    def drain(self) -> None:
        for frames in wire.waiting(self.sock):
            try:
                # Payload size is checked by submit_problem, to answer with a rejection;
                # ZeroMQ's own limit (MAXMSGSIZE) already keeps each frame that arrives bounded.
                message = wire.decode(frames[1:])
            except wire.ProtocolError as exc:
                self.dropped += 1
                log.debug("queue: dropped a malformed message: %s", exc)
                continue
            client = frames[0]
            if isinstance(message, wire.Submit):
                refused = priority_problem(message.priority, message.not_before)
                for job_id, data in zip(message.ids, message.data):
                    if refused:
                        self.replies.rejected.append(
                            (client, wire.Rejected(id=job_id, error=refused)))
                    else:
                        self._submit(client, job_id, message.task, message.wait, data,
                                     message.priority, message.not_before)
            elif isinstance(message, wire.Wait):
                for job_id in message.ids:
                    self._wait(client, job_id)
            else:
                self.dropped += 1

    def _submit(self, client: bytes, job_id: str, task: str, wait: bool, data: bytes,
                priority: int, not_before: float | None) -> None:
        if not self.catalog:
            # No worker has told us its tasks yet: decide when one has.
            self.deferred.append((client, job_id, task, wait, data, priority, not_before))
            return
        problem = submit_problem(self.config, self.catalog, job_id, task, data)
        if problem:
            self.replies.rejected.append((client, wire.Rejected(id=job_id, error=problem)))
            return
        if wait:
            self.waiters.setdefault(job_id, set()).add(client)
        if not self.store.submit(job_id, task, data, time.time(), priority, not_before) and wait:
            self._wait(client, job_id)  # a resent Submit: the job exists; maybe it ended
        self.replies.acks.setdefault(client, []).append(job_id)

    def _wait(self, client: bytes, job_id: str) -> None:
        self.waiters.setdefault(job_id, set()).add(client)
        if job_id not in self.held.running and not self.store.unfinished(job_id):
            self.store.look(job_id)  # ended, pending elsewhere, or unknown: `_answered`

    def _answered(self, job_id: str, stored: StoredJob | None) -> None:
        """What the store found (`look`) of a job clients wait on or a worker here holds."""
        if job_id in self.held.running and stored is not None and stored.state == CANCELLED:
            self.cancels.ended_elsewhere(self.store, self.held, job_id, stored)
        if stored is None:
            for client in self.waiters.pop(job_id, ()):
                self._tell(client, job_id, "unknown", {"reason": "no such job"}, b"null")
        elif stored.state in FINAL_STATES:
            for client in self.waiters.pop(job_id, ()):
                self._tell(client, job_id, stored.state, stored.error,
                           stored.result or b"null")

    def _tell(self, client: bytes, job_id: str, state: str, error: dict[str, Any] | None,
              data: bytes) -> None:
        self.replies.ends.setdefault(client, []).append((job_id, state, error, data))

    # -- workers -------------------------------------------------------------------------

    def worker_ready(self, tasks: dict[str, Any]) -> None:
        for name, info in tasks.items():
            timeout = _seconds(info, "timeout") or None  # 0: no limit of its own
            retryable = isinstance(info, dict) and info.get("retryable") is True
            self.catalog[name] = {"timeout": timeout, "retryable": retryable,
                                  **{key: _seconds(info, key)
                                     for key in ("retry_backoff", "retry_backoff_max")}}
        deferred, self.deferred = self.deferred, []
        for item in deferred:
            self._submit(*item)

    def on_results(self, slot: int, msg: wire.Result, now: float) -> bool:
        """Apply a worker's results; True if the slot holds no job any more."""
        for job_id, ok, error, seconds, data in zip(msg.ids, msg.oks, msg.errors, msg.seconds,
                                                     msg.data):
            self._on_result(slot, job_id, ok, error, seconds, data, now)
        return self.held.held(slot) == 0

    def _on_result(self, slot: int, job_id: str, ok: bool, error: dict[str, Any] | None,
                   seconds: float, data: bytes, now: float) -> None:
        job = self.held.complete(slot, job_id, now)
        if job is None:
            self.dropped += 1  # not a job this slot holds: a late or foreign result
            return
        self.jobs_done[slot] = self.jobs_done.get(slot, 0) + 1
        if ok:
            self._finish(job, DONE, result=data, seconds=seconds)
        elif self.catalog.get(job.task, {}).get("retryable") and \
                job.runs < self.config.queue.max_attempts:  # runs: times really started
            self._retry(job, error)
        else:
            self._finish(job, FAILED, error=error, seconds=seconds)

    def _retry(self, job: QueuedJob, error: dict[str, Any] | None) -> None:
        """Run the job again after the backoff: `retry_backoff` seconds after its first
        failure, doubling after each, at most `retry_backoff_max` (the task's, else
        [queue]'s). The delay and the error are stored: a daemon restarted meanwhile waits
        as long, and `job ID` shows why it waits."""
        failures = max(1, job.runs - job.attempts)  # runs that ended with the task raising
        delay = retry_delay(self.catalog.get(job.task, {}), self.config.queue, failures)
        self.store.retry(job, time.time() + delay, error)

    def next_due(self) -> float | None:
        """When (wall clock) the soonest retry waiting for its backoff is due."""
        return self.store.next_due()

    def jobs_started(self, slot: int, job_ids: list[str], now: float) -> None:
        self.held.start(slot, job_ids, now)

    def worker_lost(self, slot: int, detail: str, count_attempt: bool) -> None:
        loss = self.held.lose(slot, count_attempt)
        for job in loss.dead:
            reason = f"worker {detail} on {job.attempts} attempts"
            log.error("job %s (%s) dead: %s", job.id, job.task, reason)
            self._finish(job, DEAD, error={"reason": reason})
        if loss.requeued:
            self.store.lose(loss.requeued)
            log.warning("slot %d: worker %s; %d job(s) back in the queue", slot, detail,
                        len(loss.requeued))

    def overdue(self, now: float) -> list[tuple[int, str]]:
        timeouts = {name: info.get("timeout") for name, info in self.catalog.items()}
        return self.cancels.take_stops() + [  # cancelled elsewhere, with terminate
            (slot, f"job {job.id} ({job.task}) passed its time limit of {limit:g} s")
            for slot, job, limit in self.held.overdue(
                now, timeouts, self.config.queue.job_timeout)]  # type: ignore[arg-type]

    def dispatch(self, slots: list[tuple[int, bytes]], now: float,
                 send: Callable[[bytes, wire.Message], None]) -> list[int]:
        """Hand pending jobs to serving slots (supervisor.jobs.dispatch); the slots fed."""
        self.store.release(time.time())  # retries whose backoff is over
        self.cancels.send(slots, send)
        return dispatch(self.store, self.held, self.config.workers, slots, now, send)

    def cancel(self, job_ids: list[str], terminate: bool) -> list[tuple[str, int | None]]:
        """Cancel jobs, all or none (supervisor.jobs.cancel); per job, the slot whose
        worker is to be stopped (it runs the job) or None."""
        plan = self.cancels.plan(self.store, self.held, self.config.queue.backend, job_ids,
                                 terminate)
        stop = []
        for job_id, how in plan.items():
            job = self.held.remove(job_id) if how != WAITING else self.store.take(job_id)
            if job is None:
                continue
            if how == HELD:
                self.cancels.ask_back(job)
            running = how == RUNNING
            self._finish(job, CANCELLED, error={
                "reason": "cancelled; its worker was stopped" if running else "cancelled"})
            stop.append((job_id, job.slot if running else None))
        return stop

    def retry_jobs(self, job_ids: list[str], state: str | None, task: str | None) -> list[str]:
        """Run ended jobs again, all or none (supervisor.jobs.upkeep); their ids."""
        return upkeep.retry(self.store, self.held, self.config.queue.backend, job_ids, state,
                            task)

    def purge_jobs(self, state: str, task: str | None, before: float | None,
                   apply: bool) -> int:
        """How many jobs a purge takes; with `apply`, forget them (clients that wait on a
        pending one are told it is unknown now)."""
        ids = upkeep.to_purge(self.store, self.held, self.config.queue.backend, state, task,
                              before)
        if apply and ids:
            self.store.remove(ids)
            for job_id in ids:
                for client in self.waiters.pop(job_id, ()):
                    self._tell(client, job_id, "unknown", {"reason": "purged"}, b"null")
        return len(ids)

    def on_revoked(self, slot: int, msg: wire.Revoked) -> bool:
        """A worker gave back jobs it had not started; True if the slot holds no job now."""
        taken = self.held.take_back(slot, msg.ids)
        if taken:
            self.store.requeue(taken)
            log.debug("slot %d: %d job(s) taken back from behind a busy job", slot, len(taken))
        return self.held.held(slot) == 0

    def _finish(self, job: QueuedJob, state: str, result: bytes | None = None,
                error: dict[str, Any] | None = None, seconds: float | None = None) -> None:
        self.store.finish(job, state, time.time(), result, error)
        if self.on_finished is not None:
            self.on_finished(job.task, state, seconds)
        for client in self.waiters.pop(job.id, ()):
            self._tell(client, job.id, state, error, result or b"null")

    # -- each pass -----------------------------------------------------------------------

    def flush(self) -> None:
        """Commit, then tell clients: nothing is acknowledged before it is durable. A shared
        store settles a commit later (the daemon's loop never waits on the network): what
        a pass has to tell waits for its commit, and passes are told in order."""
        now = time.time()
        if now >= self._next_purge:
            self._next_purge = now + PURGE_EVERY
            purged = self.store.purge(now - self.config.queue.result_ttl)
            if purged:
                log.info("journal: purged %d finished job(s) past result_ttl", purged)
        for job_id in self.store.finished_elsewhere():
            if job_id in self.waiters or job_id in self.held.running:
                self.store.look(job_id)
        for job_id, stored in self.store.answers():
            self._answered(job_id, stored)
        self._unsent.append((self.store.commit(), self.replies))
        self.replies = Replies()
        while self._unsent and self._unsent[0][0].settled:
            commit, replies = self._unsent.popleft()
            replies.settle(commit)
            for job_id in commit.refused:
                self.waiters.pop(job_id, None)
            for job_id in commit.duplicates:  # the job exists: its waiters wait on it
                if job_id in self.waiters:
                    self.store.look(job_id)
            replies.send(self.sock)

    def reconfigure(self, config: Config) -> None:
        """A reload: limits apply to what comes next (the journal and socket stay)."""
        self.config = config
        self.held.max_attempts = config.queue.max_attempts

    def status(self) -> dict[str, int]:
        running, counts = len(self.held.running), self.store.counts()
        delayed, scheduled = self.store.delayed(), self.store.scheduled()
        return {"pending": max(0, counts[PENDING] - running), "retrying": delayed - scheduled,
                "scheduled": scheduled,
                "running": running,
                "done": counts[DONE], "failed": counts[FAILED],
                "dead": counts[DEAD], "cancelled": counts.get(CANCELLED, 0),
                "duplicate_runs": self.held.duplicate_runs}

    def close(self) -> None:
        self.store.close()
        self.sock.close(linger=0)
