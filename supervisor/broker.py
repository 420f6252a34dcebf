"""The job broker: clients submit on ``queue.sock``; jobs go to workers; results come back.

Each pass of the daemon's loop: read what clients sent (`drain`), apply workers' results
and losses, then `flush` -- one journal commit, and only then the acknowledgements and
results -- then `dispatch` pending jobs to workers with credit left. So a job is accepted
(acknowledged) only once it is committed, and a result is handed out only once stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from supervisor import wire
from supervisor.control import RequestError
from supervisor.journal import DEAD, DONE, FAILED, PENDING, RUNNING, Journal
from supervisor.jobqueue import JobQueue, QueuedJob
from supervisor.settings import Config
from workers.builtin import embed_request

log = logging.getLogger(__name__)
PURGE_EVERY = 3600.0  # seconds between purges of expired results
# A worker whose current job has run this long is busy: it is handed no more jobs, and the
# jobs it holds unstarted are taken back while another serving worker is not busy, so no
# job waits behind a long one (Celery's prefetch problem). Prefetching behind a job this
# long saves nothing worth having: one round trip of well under a millisecond.
BUSY_AFTER = 0.1  # seconds
BUILTIN_TASKS = ("noop", "echo")


End = tuple[str, str, "dict[str, Any] | None", bytes]  # job id, state, error, result


def _seconds(info: Any, key: str) -> float | None:
    """A task's own number of seconds from a worker's Ready, if it is a sane one."""
    value = info.get(key) if isinstance(info, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        return None
    return float(value)


def _job_results(ends: list[End]) -> wire.JobResult:
    return wire.JobResult(ids=[e[0] for e in ends], states=[e[1] for e in ends],
                          errors=[e[2] for e in ends], data=[e[3] for e in ends])


class Broker:
    def __init__(self, config: Config, ctx: zmq.Context, endpoint: str, journal_path: str) -> None:
        self.config = config
        q = config.queue
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # ZeroMQ silently disconnects a peer that sends a frame (not a message: each frame)
        # over MAXMSGSIZE, and its client then hears nothing. So the bound is the protocol's
        # own frame limit, over any body and any payload a client may send, not
        # max_payload_bytes: a payload over that limit arrives, and gets a Rejected (_check).
        self.sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_DATA)
        # A ROUTER drops what does not fit a client's queue: room for a big pipelined map.
        self.sock.setsockopt(zmq.SNDHWM, 200_000)
        self.sock.bind(endpoint)
        self.journal = Journal(journal_path, q.synchronous)
        self.queue = JobQueue(q.max_attempts)
        now = time.time()
        for stored in self.journal.pending():
            job = QueuedJob(stored.id, stored.task, stored.payload, stored.attempts, stored.runs)
            if stored.not_before is not None and stored.not_before > now:
                self.queue.defer(job, stored.not_before)  # a retry waits on, as it would have
            else:
                self.queue.push(job)
        self.counts = self.journal.counts()
        self.catalog: dict[str, dict[str, Any]] = {}
        self.deferred: list[tuple[bytes, str, str, bool, bytes]] = []
        self.waiters: dict[str, set[bytes]] = {}
        # What to tell clients after this pass's commit, gathered into one message each.
        self.acks: dict[bytes, list[str]] = {}
        self.ends: dict[bytes, list[End]] = {}
        self.rejected: list[tuple[bytes, wire.Rejected]] = []
        # Told of every job that ends: task, state, seconds it ran (None when unknown).
        self.on_finished: Callable[[str, str, float | None], None] | None = None
        self.jobs_done: dict[int, int] = {}
        self.dropped = 0
        self._next_purge = 0.0
        if self.queue.pending:
            log.info("journal: %d job(s) to run from before", len(self.queue.pending))

    # -- clients -------------------------------------------------------------------------

    def drain(self) -> None:
        for frames in wire.waiting(self.sock):
            try:
                # Payload size is checked in _check, to answer with a rejection; ZeroMQ's own
                # limit (MAXMSGSIZE) already keeps each frame that arrives bounded.
                message = wire.decode(frames[1:])
            except wire.ProtocolError as exc:
                self.dropped += 1
                log.debug("queue: dropped a malformed message: %s", exc)
                continue
            client = frames[0]
            if isinstance(message, wire.Submit):
                for job_id, data in zip(message.ids, message.data):
                    self._submit(client, job_id, message.task, message.wait, data)
            elif isinstance(message, wire.Wait):
                for job_id in message.ids:
                    self._wait(client, job_id)
            else:
                self.dropped += 1

    def _submit(self, client: bytes, job_id: str, task: str, wait: bool, data: bytes) -> None:
        if not self.catalog:
            # No worker has told us its tasks yet: decide when one has.
            self.deferred.append((client, job_id, task, wait, data))
            return
        problem = self._check(job_id, task, data)
        if problem:
            self.rejected.append((client, wire.Rejected(id=job_id, error=problem)))
            return
        if wait:
            self.waiters.setdefault(job_id, set()).add(client)
        if self.journal.add(job_id, task, data, time.time()):
            self.queue.push(QueuedJob(job_id, task, data))
            self.counts[PENDING] += 1
        elif wait:
            self._wait(client, job_id)  # a resent Submit: the job exists; maybe it ended
        self.acks.setdefault(client, []).append(job_id)

    def _check(self, job_id: str, task: str, data: bytes) -> str | None:
        if not job_id or len(job_id) > 128:
            return "job id must be 1 to 128 characters"
        if task not in self.catalog:
            return f"unknown task {task!r} (known: {', '.join(sorted(self.catalog))})"
        limit = wire.payload_limit(self.config.queue.max_payload_bytes)
        if len(data) > limit:
            return f"payload is {len(data)} bytes (limit {limit})"
        try:
            payload = wire.loads(data)  # strict: NaN and Infinity are refused too
        except (ValueError, RecursionError) as exc:
            return f"payload is not JSON: {exc}"
        if task == "embed":
            return self._embed_problem(payload)
        return None

    def _embed_problem(self, payload: Any) -> str | None:
        """What the built-in embed task would fail on, found before it is queued."""
        try:
            name, texts = embed_request(payload)
        except ValueError as exc:
            return f"embed: {exc}"
        models = self.config.models
        if not models:
            return "embed: no model is configured (the [models] table is empty)"
        if name is None and len(models) != 1:
            return (f"embed: \"model\" is required: configured models are "
                    f"{', '.join(sorted(models))}")
        settings = models.get(name) if name is not None else next(iter(models.values()))
        if settings is None:
            return f"embed: unknown model {name!r} (configured: {', '.join(sorted(models))})"
        if len(texts) > settings.max_texts:
            model = name or next(iter(models))
            return (f"embed: {len(texts)} texts in one job; the limit is {settings.max_texts} "
                    f"(models.{model}.max_texts): submit them as several jobs")
        return None

    def _wait(self, client: bytes, job_id: str) -> None:
        if job_id in self.queue:
            self.waiters.setdefault(job_id, set()).add(client)
            return
        stored = self.journal.get(job_id)
        if stored is None:
            self._tell(client, job_id, "unknown", {"reason": "no such job"}, b"null")
        elif stored.state == PENDING:
            self.waiters.setdefault(job_id, set()).add(client)
        else:
            self._tell(client, job_id, stored.state, stored.error, stored.result or b"null")

    def _tell(self, client: bytes, job_id: str, state: str, error: dict[str, Any] | None,
              data: bytes) -> None:
        self.ends.setdefault(client, []).append((job_id, state, error, data))

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
        return self.queue.held(slot) == 0

    def _on_result(self, slot: int, job_id: str, ok: bool, error: dict[str, Any] | None,
                   seconds: float, data: bytes, now: float) -> None:
        job = self.queue.complete(slot, job_id, now)
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
        info, q = self.catalog.get(job.task, {}), self.config.queue
        start = info.get("retry_backoff")
        start = q.retry_backoff if start is None else start
        cap = info.get("retry_backoff_max")
        cap = q.retry_backoff_max if cap is None else cap
        failures = max(1, job.runs - job.attempts)  # runs that ended with the task raising
        delay = min(start * 2.0 ** min(failures - 1, 60), cap)
        not_before = time.time() + delay
        self.journal.retry(job.id, job.attempts, job.runs, not_before, error)
        if delay > 0:
            self.queue.defer(job, not_before)
        else:
            self.queue.requeue(job)

    def next_due(self) -> float | None:
        """When (wall clock) the soonest retry waiting for its backoff is due."""
        return self.queue.next_due()

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
        """Hand pending jobs to serving slots with credit left, the least loaded first, and
        none to a busy one (BUSY_AFTER); returns the slots fed. A busy slot's unstarted jobs
        are asked back while another slot is not busy (`on_revoked` requeues them)."""
        self.queue.release(time.time())  # retries whose backoff is over
        credit = self.config.workers.credit
        free = []
        for slot, routing_id in slots:
            if self.queue.busy_for(slot, now) < BUSY_AFTER:
                free.append((slot, routing_id))
        if free and len(free) < len(slots):
            for slot, routing_id in slots:
                if (slot, routing_id) not in free and (ids := self.queue.revoke(slot)):
                    send(routing_id, wire.Revoke(ids=ids))
        if free:  # the credit of busy workers is lent to the free ones: as many in flight
            credit = credit * len(slots) // len(free)
        fed = []
        for slot, routing_id in sorted(free, key=lambda s: self.queue.held(s[0])):
            jobs = []
            while self.queue.pending and self.queue.held(slot) < credit:
                job = self.queue.assign(slot, now)
                assert job is not None
                jobs.append(job)
            if jobs:
                send(routing_id, wire.Job(ids=[j.id for j in jobs], tasks=[j.task for j in jobs],
                                          data=[j.payload for j in jobs]))
                fed.append(slot)
        return fed

    def on_revoked(self, slot: int, msg: wire.Revoked) -> bool:
        """A worker gave back jobs it had not started; True if the slot holds no job now."""
        taken = self.queue.take_back(slot, msg.ids)
        if taken:
            log.debug("slot %d: %d job(s) taken back from behind a busy job", slot, len(taken))
        return self.queue.held(slot) == 0

    def _finish(self, job: QueuedJob, state: str, result: bytes | None = None,
                error: dict[str, Any] | None = None, seconds: float | None = None) -> None:
        self.journal.finish(job.id, state, job.attempts, job.runs, time.time(), result, error)
        if self.on_finished is not None:
            self.on_finished(job.task, state, seconds)
        self.counts[PENDING] -= 1
        self.counts[state] += 1
        for client in self.waiters.pop(job.id, ()):
            self._tell(client, job.id, state, error, result or b"null")

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
        out: list[tuple[bytes, list[bytes]]] = [(c, wire.encode(m)) for c, m in self.rejected]
        for client, ids in self.acks.items():
            out += [(client, f) for f in wire.encode_many(lambda i: wire.Accepted(ids=i), ids)]
        for client, ends in self.ends.items():
            out += [(client, f) for f in wire.encode_many(_job_results, ends)]
        self.rejected, self.acks, self.ends = [], {}, {}
        for client, frames in out:
            try:
                self.sock.send_multipart([client, *frames], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                log.debug("queue: reply to a gone client dropped: %s", exc)

    def reconfigure(self, config: Config) -> None:
        """A reload: limits apply to what comes next (the journal and socket stay)."""
        self.config = config
        self.queue.max_attempts = config.queue.max_attempts

    def status(self) -> dict[str, int]:
        running = len(self.queue.running)
        return {"pending": self.counts[PENDING] - running, "retrying": len(self.queue.delayed),
                "running": running,
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
        try:
            info = stored.info()
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        running = self.queue.running.get(job_id)
        if running is not None:
            info.update(state=RUNNING, slot=running.slot, runs=running.runs)
        return info

    def close(self) -> None:
        self.journal.close()
        self.sock.close(linger=0)
