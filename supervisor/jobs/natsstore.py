"""The job store shared by many hosts: NATS JetStream (`[queue] backend = "nats"`).

The same `JobStore` as one host's journal (supervisor.jobs.store), over the stream, the
consumer and the buckets that supervisor.jobs.jetstream describes. The daemon's thread
only queues work here: what a pass wrote (submits, ends, jobs given back) goes to NATS
together at `commit`, which the NATS thread settles once JetStream acknowledged them, so a
submitter is told "accepted" only once the job is stored with the stream's replicas, and a
result is handed out only once it is stored; the daemon's loop goes on meanwhile (its
workers' heartbeats must not wait on the network). Jobs are pulled on the NATS thread, as
many as this host's workers have credit for (`want`), and wake the daemon's loop through a
pipe it polls.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from supervisor.conf.settings import Config
from supervisor.jobs.cancel import NATS_CANCEL
from supervisor.jobs.held import QueuedJob
from supervisor.jobs.jetstream import (REPLY_HEADER, RETRY_OF_HEADER, Layout, decode_record,
                                       job_key, key_job)
from supervisor.jobs.natslink import Link, NatsError, NatsUnreachable, describe_servers, transient
from supervisor.jobs.journal import DEAD, DONE, FAILED, PENDING, RUNNING, StoredJob
from supervisor.jobs.natsfeed import Feed
from supervisor.jobs.natsquery import Lookups
from supervisor.jobs.store import Commit, StoreError
from supervisor.jobs.upkeep import NATS_UPKEEP
from supervisor.proto.wire import DEFAULT_PRIORITY

log = logging.getLogger("supervisor.jobs")
COMMIT_TIMEOUT = 10.0  # seconds a commit waits for JetStream's acknowledgements
WRITE_TRIES = 4  # a write that failed for a passing reason (a leader election) is sent again
Write = Callable[[], Coroutine[Any, Any, None]]
Submit = tuple[str, str, bytes, int, float | None]  # id, task, payload, priority, not_before


def _log_failed_write(write: asyncio.Future[None]) -> None:
    """A write other than a submit failed: the job it was about comes back after ack_wait
    (an end not stored, a job not given back), and runs again."""
    if not write.cancelled() and write.exception() is not None:
        log.warning("NATS: a write failed: %s", write.exception())


async def _settle(report: Commit, submits: list[str],
                  publishes: list[Coroutine[Any, Any, bool]],
                  ops: list[Coroutine[Any, Any, None]],
                  stored: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Wait (COMMIT_TIMEOUT at most) for a commit's writes; fill in what it found. Once
    the submits are stored, `stored` tells the hosts (before the ends of the same pass
    are: a question is pulled at once, not after the bulk's writes)."""
    writes = [asyncio.ensure_future(p) for p in publishes]
    others = [asyncio.ensure_future(op) for op in ops]
    deadline = asyncio.get_running_loop().time() + COMMIT_TIMEOUT
    if writes:
        await asyncio.wait(writes, timeout=COMMIT_TIMEOUT)
        try:
            await stored()
        except Exception as exc:  # an announcement lost: the hosts' scan finds the jobs
            log.debug("NATS: announce: %s", exc)
    if others:
        await asyncio.wait(others, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
    for job_id, write in zip(submits, writes):
        outcome = write.exception() if write.done() and not write.cancelled() \
            else TimeoutError()
        if outcome is None:
            if write.result():
                report.duplicates.append(job_id)
        elif transient(outcome):
            report.unanswered.append(job_id)  # it may be stored: the resend will say
        else:
            report.refused[job_id] = f"NATS did not store the job: {outcome}"
    late = sum(not write.done() for write in writes)
    if late:
        log.warning("NATS: no acknowledgement within %g s; %d submit(s) left "
                    "unanswered (their clients send them again)", COMMIT_TIMEOUT, late)
    for op in others:
        op.add_done_callback(_log_failed_write)


async def _write(op: Write, feed: Feed) -> None:
    """An end, an ack, a job given back: again, with backoff, while it fails for a
    passing reason (else the job it is about comes back after ack_wait, and runs again).
    A submit is not sent again here: its client resends it."""
    delay = 0.5
    for attempt in range(WRITE_TRIES):
        try:
            await op()
            return
        except Exception as exc:
            if not transient(exc) or attempt == WRITE_TRIES - 1 or feed.closing:
                raise
            log.debug("NATS: a write failed (%s); again in %g s", exc, delay)
            await asyncio.sleep(delay)
            delay *= 2


class _NotShared:
    """What a JobStore does that the shared queue leaves to other processes: a cancel is
    made by the canceller (supervisor.jobs.natscancel), a retry or a purge by docbrainctl
    (supervisor.jobs.natsupkeep), not by a daemon; refused here (the broker refuses these
    requests first, with the same line)."""

    def take(self, job_id: str) -> QueuedJob | None:
        raise StoreError(NATS_CANCEL)

    def resubmit(self, stored: StoredJob) -> None:
        raise StoreError(NATS_UPKEEP)

    def select(self, state: str, task: str | None, before: float | None) -> list[str]:
        raise StoreError(NATS_UPKEEP)

    def remove(self, job_ids: list[str]) -> None:
        raise StoreError(NATS_UPKEEP)


class NatsStore(_NotShared, Lookups):
    """A `JobStore` (supervisor.jobs.store) on NATS JetStream."""

    def __init__(self, config: Config,
                 started: Callable[[str], int | None] = lambda job_id: None) -> None:
        s = config.queue.nats
        self.started = started  # the slot running a job here now (read on the NATS thread)
        self.settings = s
        self.host = socket.gethostname()
        self.link = Link(s, f"docbrain {self.host} pid {os.getpid()}")
        self.layout = Layout(self.link, s, config.queue.result_ttl)
        self.feed = Feed(self.link, self.layout, s)
        self._submits: list[Submit] = []
        self._ops: list[Write] = []  # this pass's other writes
        self._ended: deque[str] = deque()  # ids whose end was stored (by any host)
        self._answers: deque[tuple[str, StoredJob | None]] = deque()  # what `look` found
        self._gone: set[str] = set()  # pulled, not leased, and ended elsewhere: dropped
        self._delayed: list[float] = []    # when the retries this host gave back are due
        self._counts = {DONE: 0, FAILED: 0, DEAD: 0}  # ended here since start
        self.late_results = 0  # ends of jobs whose first end another run had stored
        self.problem: str | None = None  # why NATS cannot be used now, if it cannot
        try:
            self.link.call(self._open(), s.connect_timeout + 30)
        except NatsUnreachable as exc:
            self.problem = str(exc)
            log.warning("%s; submits are refused until it is reachable", exc)
            self.link.run(self._reopen())

    # -- the NATS thread ------------------------------------------------------------------

    async def _open(self) -> None:
        await self.link.connect()
        await self.layout.ensure()
        await self.layout.watch_ends(self._on_end)
        await self.link.nc.subscribe(self.layout.cancels, cb=self._on_cancel)
        self.problem = None
        await self.feed.start()
        log.info("NATS: connected to %s; stream %s (%d replica%s)", self.link.server,
                 self.settings.stream, self.settings.replicas,
                 "" if self.settings.replicas == 1 else "s")

    async def _reopen(self) -> None:
        """The servers were unreachable at start: try again, with backoff, until they are."""
        delay = 1.0
        while not self.feed.closing:
            await asyncio.sleep(delay)
            try:
                await self._open()
                return
            except NatsError as exc:
                self.problem = str(exc)
                delay = min(delay * 2, 30.0)
                log.debug("%s (next try in %g s)", exc, delay)

    async def _on_cancel(self, msg: Any) -> None:
        """A canceller asks which of its jobs run here (supervisor.jobs.natscancel)."""
        try:
            ids = json.loads(msg.data)["ids"]
            running = {i: slot for i in ids if (slot := self.started(str(i))) is not None}
        except (ValueError, TypeError, KeyError):
            return
        if running and msg.reply:
            await self.link.nc.publish(msg.reply, json.dumps(
                {"host": self.host, "running": running}).encode())

    async def _on_end(self, msg: Any) -> None:
        self._ended.append(key_job(msg.subject.rsplit(".", 1)[-1]))
        self.feed.wake()

    # -- the daemon's thread: JobStore ----------------------------------------------------

    def submit(self, job_id: str, task: str, payload: bytes, now: float,
               priority: int = DEFAULT_PRIORITY, not_before: float | None = None) -> bool:
        self._submits.append((job_id, task, payload, priority, not_before))
        return True  # a duplicate is known only at commit (`Commit.duplicates`)

    def top_priority(self) -> int | None:
        return self.feed.top()

    def lease(self, count: int) -> list[QueuedJob]:
        jobs: list[QueuedJob] = []
        top = self.feed.top()
        arrived = self.feed.arrived[top] if top is not None else deque()
        while arrived and len(jobs) < count:
            job, msg = arrived.popleft()
            self.feed.arrived_ids.discard(job.id)
            if job.id in self._gone:  # cancelled elsewhere after it was pulled
                self._gone.discard(job.id)
                self._ops.append(msg.ack)
                continue
            self.feed.leased[job.id] = msg
            jobs.append(job)
        # What a worker was handed is credit used: the pull loop must not take the jobs
        # leased now for room to fill before this pass tells it the credit left (`want`).
        self.feed.want = max(0, self.feed.want - len(jobs))
        return jobs

    def want(self, count: int) -> None:
        self.feed.set_want(count)

    def release(self, now: float) -> int:
        due = 0
        while self._delayed and self._delayed[0] <= now:
            heapq.heappop(self._delayed)
            due += 1
        return due

    def drop(self, job: QueuedJob) -> None:
        msg = self.feed.leased.pop(job.id, None)
        if msg is not None:
            self._ops.append(msg.ack)  # its end is stored (its message deleted, likely)

    def requeue(self, jobs: list[QueuedJob]) -> None:
        for job in jobs:
            msg = self.feed.leased.pop(job.id, None)
            if msg is not None:
                self._ops.append(msg.nak)

    def lose(self, jobs: list[QueuedJob]) -> None:
        for job in jobs:
            msg = self.feed.leased.pop(job.id, None)
            if msg is not None:
                self._ops.append(partial(self._give_back, job, msg, None, None))

    def retry(self, job: QueuedJob, not_before: float, error: dict[str, Any] | None) -> None:
        msg = self.feed.leased.pop(job.id, None)
        heapq.heappush(self._delayed, not_before)
        if msg is not None:
            self._ops.append(partial(self._give_back, job, msg, not_before, error))

    async def _give_back(self, job: QueuedJob, msg: Any, not_before: float | None,
                         error: dict[str, Any] | None) -> None:
        if job.runs:
            await self.layout.keep_runs(job_key(job.id), job.attempts, job.runs, not_before,
                                        error)
        delay = None if not_before is None else max(0.0, not_before - time.time())
        await msg.nak(delay=delay or None)

    def finish(self, job: QueuedJob, state: str, now: float, result: bytes | None = None,
               error: dict[str, Any] | None = None) -> None:
        msg = self.feed.leased.pop(job.id, None)
        self._counts[state] += 1
        submitted = msg.metadata.timestamp.timestamp() if msg is not None else None
        record = {"id": job.id, "task": job.task, "state": state, "attempts": job.attempts,
                  "runs": job.runs, "submitted": submitted, "finished": now, "error": error,
                  "host": self.host, "priority": job.priority}
        if state != DONE:  # kept, so that `docbrainctl retry` can run it again
            record["payload"] = job.payload.decode()
        self._ops.append(partial(self._end, job, msg, record, result, set()))

    async def _end(self, job: QueuedJob, msg: Any, record: dict[str, Any],
                   result: bytes | None, done: set[str]) -> None:
        """Store the end, then ack the job; `done`: the steps of an earlier try that
        went through (an end stored by this very run is not a late one)."""
        key = job_key(job.id)
        if "end" not in done:
            retry_of = (msg.headers or {}).get(RETRY_OF_HEADER) if msg is not None else None
            value = await self.layout.store_end(key, record, result, retry_of)
            if value is None:  # a try that timed out may have stored it: then it is this run's
                stored = await self.layout.end(key)
                mine = stored is not None and decode_record(stored)[0].get("finished") == \
                    record["finished"] and decode_record(stored)[0].get("host") == self.host
                value = stored if mine else None
            first = value is not None
            if not first:
                self.late_results += 1
                log.info("job %s: a run elsewhere stored its end first; this one is dropped",
                         job.id)
            done.add("end")
            reply = (msg.headers or {}).get(REPLY_HEADER) if msg is not None else None
            if value is not None and reply:
                await self.link.nc.publish(reply, value)  # no ack: the bucket has it
        if msg is not None:
            await msg.ack()
        if job.runs > 1 or job.attempts or (msg is not None and msg.metadata.num_delivered > 1):
            await self.layout.forget_runs(key)

    def commit(self) -> Commit:
        """Hand this pass's writes to the NATS thread; the Commit is settled there once
        JetStream acknowledged them (or COMMIT_TIMEOUT passed), and the loop woken."""
        self.feed.touched = time.monotonic()
        submits, self._submits = self._submits, []
        ops, self._ops = self._ops, []
        if not submits and not ops:
            return Commit()
        ids = [job_id for job_id, *_ in submits]
        if self.problem is not None or not self.link.up.is_set():
            self._ops = ops  # given back, acknowledged and stored once it is back
            if self.problem is None and \
                    time.monotonic() - self.link.down_since < self.settings.connect_timeout:
                return Commit(unanswered=ids)  # a reconnect to another server, likely
            reason = self.problem or f"NATS servers unreachable " \
                                     f"({describe_servers(self.settings)}): reconnecting"
            return Commit(refused=dict.fromkeys(ids, reason))
        report = Commit(settled=False)
        self.link.run(self._commit(submits, ops, report))
        return report

    async def _commit(self, submits: list[Submit], ops: list[Write],
                      report: Commit) -> Commit:
        async def stored() -> None:
            levels = {s[3] for s in submits}
            for level in levels:
                self.feed.note(level)  # this host pulls them at once
            await self.layout.announce(levels)  # and so do the others

        try:
            await _settle(report, [s[0] for s in submits],
                          [self.layout.publish(job_id, task, payload, None, priority, later)
                           for job_id, task, payload, priority, later in submits],
                          [_write(op, self.feed) for op in ops], stored)
        finally:
            report.settled = True
            self.feed.wake()
        return report

    def counts(self) -> dict[str, int]:
        return {PENDING: self.feed.stream_pending + self.feed.stream_running, RUNNING: 0,
                **self._counts}

    def waiting(self) -> int:
        return self.feed.count()

    def delayed(self) -> int:
        return len(self._delayed) + len(self.feed.deferred)

    def scheduled(self) -> int:
        """The delayed jobs this host gave back until their time (each host counts its
        own: the stream does not tell a delayed job from a leased one)."""
        return len(self.feed.deferred)

    def next_due(self) -> float | None:
        return None  # JetStream redelivers a retry when its delay is over

    def purge(self, finished_before: float) -> int:
        return 0  # the results bucket's TTL does it

    def wakeup_fd(self) -> int | None:
        return self.feed.wake_r

    def woken(self) -> None:
        self.feed.woken()

    def status(self) -> dict[str, Any]:
        return {"backend": "nats", "server": self.link.server if self.link.up.is_set() else None,
                "problem": self.problem, "stream": self.settings.stream,
                "stream_pending": self.feed.stream_pending,
                "stream_running": self.feed.stream_running,
                "late_results": self.late_results, "dropped": self.feed.dropped}

    def close(self) -> None:
        """Give back at once what this host holds (other hosts take it now, not after
        ack_wait), then close the connection."""
        self.feed.closing = True
        held = self.feed.held()
        self.feed.leased.clear()
        for jobs in self.feed.arrived.values():
            jobs.clear()
        if held and self.link.up.is_set():
            try:
                self.link.call(self._commit([], [m.nak for m in held], Commit()),
                               COMMIT_TIMEOUT + 1)
            except TimeoutError as exc:
                log.warning("NATS: jobs held here not given back (%s): they return after "
                            "ack_wait", exc)
        self.link.close()
        self.feed.close()
