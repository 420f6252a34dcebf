"""The job broker: clients submit on ``queue.sock``; jobs go to workers; results come back.

Each pass of the daemon's loop: read what clients sent (`drain`), apply workers' results
and losses, then `flush` -- one journal commit, and only then the acknowledgements and
results -- then `dispatch` pending jobs to workers with credit left. So a job is accepted
(acknowledged) only once it is committed, and a result is handed out only once stored.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from supervisor import wire
from supervisor.journal import DEAD, DONE, FAILED, PENDING, RUNNING, Journal
from supervisor.jobqueue import JobQueue, QueuedJob
from supervisor.settings import Config

log = logging.getLogger(__name__)
PURGE_EVERY = 3600.0  # seconds between purges of expired results
BUILTIN_TASKS = ("noop", "echo")


class Broker:
    def __init__(self, config: Config, ctx: zmq.Context, endpoint: str, journal_path: str) -> None:
        self.config = config
        q = config.queue
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # A peer sending a bigger message is disconnected by ZeroMQ before we see it.
        self.sock.setsockopt(zmq.MAXMSGSIZE, q.max_payload_bytes + wire.MAX_BODY)
        # A ROUTER drops what does not fit a client's queue: room for a big pipelined map.
        self.sock.setsockopt(zmq.SNDHWM, 200_000)
        self.sock.bind(endpoint)
        self.journal = Journal(journal_path, q.synchronous)
        self.queue = JobQueue(q.max_attempts)
        for stored in self.journal.pending():
            self.queue.push(QueuedJob(stored.id, stored.task, stored.payload, stored.attempts,
                                      stored.runs))
        self.counts = self.journal.counts()
        self.catalog: dict[str, dict[str, Any]] = {}
        self.deferred: list[tuple[bytes, wire.Submit]] = []
        self.waiters: dict[str, set[bytes]] = {}
        self.outbox: list[tuple[bytes, wire.Message]] = []
        self.jobs_done: dict[int, int] = {}
        self.dropped = 0
        self._next_purge = 0.0
        if self.queue.pending:
            log.info("journal: %d job(s) to run from before", len(self.queue.pending))

    # -- clients -------------------------------------------------------------------------

    def drain(self) -> None:
        for frames in wire.waiting(self.sock):
            try:
                # Size is checked in _check, to answer with a rejection; ZeroMQ's own limit
                # (MAXMSGSIZE) already keeps what arrives bounded.
                message = wire.decode(frames[1:])
            except wire.ProtocolError as exc:
                self.dropped += 1
                log.debug("queue: dropped a malformed message: %s", exc)
                continue
            if isinstance(message, wire.Submit):
                self._submit(frames[0], message)
            elif isinstance(message, wire.Wait):
                self._wait(frames[0], message.id)
            else:
                self.dropped += 1

    def _submit(self, client: bytes, msg: wire.Submit) -> None:
        if not self.catalog:
            self.deferred.append((client, msg))  # no worker has told us its tasks yet
            return
        problem = self._check(msg)
        if problem:
            self.outbox.append((client, wire.Rejected(id=msg.id, error=problem)))
            return
        if msg.wait:
            self.waiters.setdefault(msg.id, set()).add(client)
        if self.journal.add(msg.id, msg.task, msg.data, time.time()):
            self.queue.push(QueuedJob(msg.id, msg.task, msg.data))
            self.counts[PENDING] += 1
        elif msg.wait:
            self._wait(client, msg.id)  # a resent Submit: the job exists; maybe it ended
        self.outbox.append((client, wire.Accepted(id=msg.id)))

    def _check(self, msg: wire.Submit) -> str | None:
        if not msg.id or len(msg.id) > 128:
            return "job id must be 1 to 128 characters"
        if msg.task not in self.catalog:
            return f"unknown task {msg.task!r} (known: {', '.join(sorted(self.catalog))})"
        limit = self.config.queue.max_payload_bytes
        if len(msg.data) > limit:
            return f"payload is {len(msg.data)} bytes (limit {limit})"
        try:
            json.loads(msg.data)
        except (ValueError, RecursionError) as exc:
            return f"payload is not JSON: {exc}"
        return None

    def _wait(self, client: bytes, job_id: str) -> None:
        if job_id in self.queue:
            self.waiters.setdefault(job_id, set()).add(client)
            return
        stored = self.journal.get(job_id)
        if stored is None:
            self.outbox.append((client, wire.JobResult(
                id=job_id, state="unknown", error={"reason": "no such job"})))
        elif stored.state == PENDING:
            self.waiters.setdefault(job_id, set()).add(client)
        else:
            self.outbox.append((client, wire.JobResult(
                id=job_id, state=stored.state, error=stored.error,
                data=stored.result or b"null")))

    # -- workers -------------------------------------------------------------------------

    def worker_ready(self, tasks: dict[str, Any]) -> None:
        for name, info in tasks.items():
            timeout = info.get("timeout") if isinstance(info, dict) else None
            if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
                timeout = None
            retryable = isinstance(info, dict) and info.get("retryable") is True
            self.catalog[name] = {"timeout": timeout, "retryable": retryable}
        deferred, self.deferred = self.deferred, []
        for client, msg in deferred:
            self._submit(client, msg)

    def on_result(self, slot: int, msg: wire.Result, now: float) -> bool:
        """Apply a worker's result; True if the slot holds no job any more."""
        job = self.queue.complete(slot, msg.id, now)
        if job is None:
            self.dropped += 1  # not a job this slot holds: a late or foreign result
            return False
        self.jobs_done[slot] = self.jobs_done.get(slot, 0) + 1
        if msg.ok:
            self._finish(job, DONE, result=msg.data)
        elif self.catalog.get(job.task, {}).get("retryable") and \
                job.runs < self.config.queue.max_attempts:  # runs: times really started
            self.queue.requeue(job)
        else:
            self._finish(job, FAILED, error=msg.error)
        return self.queue.held(slot) == 0

    def jobs_started(self, slot: int, job_ids: list[str], now: float) -> None:
        self.queue.start(slot, job_ids, now)

    def worker_lost(self, slot: int, detail: str, count_attempt: bool) -> None:
        loss = self.queue.lose(slot, count_attempt)
        for job in loss.dead:
            reason = f"worker {detail} on {job.attempts} attempts"
            log.error("job %s (%s) dead: %s", job.id, job.task, reason)
            self._finish(job, DEAD, error={"reason": reason})
        if loss.requeued:
            for job in loss.requeued:
                if job.runs:
                    self.journal.lost(job.id, job.attempts, job.runs)
            log.warning("slot %d: worker %s; %d job(s) back in the queue", slot, detail,
                        len(loss.requeued))

    def overdue(self, now: float) -> list[tuple[int, str]]:
        timeouts = {name: info.get("timeout") for name, info in self.catalog.items()}
        return [(slot, f"job {job.id} ({job.task}) passed its time limit of {limit:g} s")
                for slot, job, limit in self.queue.overdue(
                    now, timeouts, self.config.queue.job_timeout)]  # type: ignore[arg-type]

    def dispatch(self, slots: list[tuple[int, bytes]], now: float,
                 send: Callable[[bytes, wire.Message], None]) -> list[int]:
        """Hand pending jobs to serving slots with credit left; returns the slots fed."""
        credit = self.config.workers.credit
        fed = []
        for slot, routing_id in slots:
            while self.queue.pending and self.queue.held(slot) < credit:
                job = self.queue.assign(slot, now)
                assert job is not None
                send(routing_id, wire.Job(id=job.id, task=job.task, data=job.payload))
                if slot not in fed:
                    fed.append(slot)
        return fed

    def _finish(self, job: QueuedJob, state: str, result: bytes | None = None,
                error: dict[str, Any] | None = None) -> None:
        self.journal.finish(job.id, state, job.attempts, job.runs, time.time(), result, error)
        self.counts[PENDING] -= 1
        self.counts[state] += 1
        for client in self.waiters.pop(job.id, ()):
            self.outbox.append((client, wire.JobResult(id=job.id, state=state, error=error,
                                                        data=result or b"null")))

    # -- each pass -----------------------------------------------------------------------

    def flush(self) -> None:
        """Commit, then tell clients: nothing is acknowledged before it is durable."""
        now = time.time()
        if now >= self._next_purge:
            self._next_purge = now + PURGE_EVERY
            purged = self.journal.purge(now - self.config.queue.result_ttl)
            if purged:
                log.info("journal: purged %d finished job(s) past result_ttl", purged)
                self.journal.commit()
                self.counts = self.journal.counts()
        self.journal.commit()
        outbox, self.outbox = self.outbox, []
        for client, message in outbox:
            try:
                self.sock.send_multipart([client, *wire.encode(message)], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                log.debug("queue: reply to a gone client dropped: %s", exc)

    def status(self) -> dict[str, int]:
        running = len(self.queue.running)
        return {"pending": self.counts[PENDING] - running, "running": running,
                "done": self.counts[DONE], "failed": self.counts[FAILED],
                "dead": self.counts[DEAD], "duplicate_runs": self.queue.duplicate_runs}

    def recent(self, state: str | None, limit: int) -> list[dict[str, Any]]:
        """The newest jobs, with the running ones shown as such."""
        query = PENDING if state == RUNNING else state
        rows = []
        for stored in self.journal.recent(query, limit if state != RUNNING else 1 << 30):
            info = stored.summary()
            job = self.queue.running.get(stored.id)
            if job is not None:
                info.update(state=RUNNING, slot=job.slot, runs=job.runs)
            if state in (None, info["state"]):
                rows.append(info)
        return rows[:limit]

    def job_info(self, job_id: str) -> dict[str, Any] | None:
        stored = self.journal.get(job_id)
        if stored is None:
            return None
        info = stored.summary()
        running = self.queue.running.get(job_id)
        if running is not None:
            info.update(state=RUNNING, slot=running.slot, runs=running.runs)
        if stored.result is not None:
            info["result"] = json.loads(stored.result)
        return info

    def close(self) -> None:
        self.journal.close()
        self.sock.close(linger=0)
