"""The client of a machine with no daemon, when the queue is NATS's (`[queue] backend =
"nats"`): it submits to the shared stream and reads results from the results bucket
itself (supervisor.jobs.jetstream), as a daemon's broker would. `Client(config)` is one of
these when the configuration says so and no daemon runs here.

The task name is not checked here (no worker told this machine its tasks): a job of a task
no worker has fails with "this worker has no task ...". The payload is checked as a daemon
would: strict JSON, at most `queue.max_payload_bytes`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from datetime import datetime
from typing import Any

from supervisor.client.errors import (JobError, NotAcknowledged, PayloadError,
                                      QueueRefused, QueueUnreachable, encode_payload, outcome)
from supervisor.client.checks import check_priority, new_jobs, start_time
from supervisor.client.sharedops import SharedQueries
from supervisor.client.local import ACK_TIMEOUT, RESEND_AFTER, SUBMIT_CHUNK, Client
from supervisor.conf.config import load_config
from supervisor.conf.settings import Config
from supervisor.jobs.jetstream import Layout, decode_record, job_key, key_job
from supervisor.jobs.natslink import Link, describe_servers, transient
from supervisor.jobs.store import StoreError
from supervisor.proto import wire

MAX_KEPT = 200_000  # ends of this client's jobs held for it (and keys it waits for)
INBOX_GRACE = 0.5  # seconds the inbox has, after a job's end is stored, to bring it
LOOK_AGAIN = 5.0  # seconds between reads of a job's end while no notice of it came
READY_BATCH = 256  # results of a map collected in one call to the NATS thread at most


class SharedClient(SharedQueries, Client):
    def __init__(self, config: Config | str | None = None, *, window: int = 1000,
                 ack_timeout: float = ACK_TIMEOUT) -> None:
        if not isinstance(config, Config):
            config = load_config(config)
        self.config = config
        s = config.queue.nats
        self.window = window
        self.ack_timeout = ack_timeout
        self.payload_limit = wire.payload_limit(config.queue.max_payload_bytes)
        self.link = Link(s, f"docbrain client {socket.gethostname()} pid {os.getpid()}")
        self.layout = Layout(self.link, s, config.queue.result_ttl)
        self._notices: dict[str, asyncio.Future[None]] = {}  # on the NATS thread only
        # The ends of this client's own jobs come to a subject of its own (REPLY_HEADER):
        # the keys submitted here and not yet collected, and the ends that came for them.
        self._inbox = f"_INBOX.docbrain.{uuid.uuid4().hex}"
        self._mine: dict[str, None] = {}
        self._ends: dict[str, bytes] = {}
        self._unreplied: set[str] = set()
        try:
            self.link.call(self._open(), s.connect_timeout + 15)
        except (StoreError, TimeoutError) as exc:
            self.link.close()
            raise QueueUnreachable(str(exc)) from None

    async def _open(self) -> None:
        await self.link.connect()
        await self.layout.ensure()
        await self.layout.watch_ends(self._on_end)
        await self.link.nc.subscribe(self._inbox, cb=self._on_reply)

    async def _on_end(self, msg: Any) -> None:
        key = msg.subject.rsplit(".", 1)[-1]
        if key in self._mine:  # its end comes to the inbox, with its value; if it does not
            asyncio.get_running_loop().call_later(INBOX_GRACE, self._no_reply, key)
            return
        self._no_reply(key)

    def _no_reply(self, key: str) -> None:
        """Wake who waits for the job: it reads the bucket, unless the inbox had it."""
        if key in self._mine and key not in self._ends:
            self._unreplied.add(key)  # stored, and no reply came: read the bucket for it
        notice = self._notices.pop(key, None)
        if notice is not None and not notice.done():
            notice.set_result(None)

    async def _on_reply(self, msg: Any) -> None:
        """The end of one of this client's jobs, as the host that ran it stored it."""
        try:
            key = job_key(str(decode_record(msg.data)[0].get("id")))
        except ValueError:
            return
        if key not in self._mine:
            return
        self._ends[key] = msg.data
        while len(self._ends) > MAX_KEPT:  # never collected: the bucket keeps them
            self._mine.pop(next(iter(self._ends)), None)
            del self._ends[next(iter(self._ends))]
        notice = self._notices.pop(key, None)
        if notice is not None and not notice.done():
            notice.set_result(None)

    def close(self) -> None:
        self.link.close()

    # -- the API (as Client's) -----------------------------------------------------------

    def submit(self, task: str, payload: Any = None, timeout: float | None = None, *,
               priority: int = wire.DEFAULT_PRIORITY, delay: float | None = None,
               eta: datetime | float | None = None) -> str:
        """Submit one job; returns its id once JetStream has stored it."""
        check_priority(priority)
        not_before = start_time(delay, eta)
        job_id = uuid.uuid4().hex
        try:
            data = encode_payload(payload, self.payload_limit)
        except ValueError as exc:
            raise PayloadError(job_id, str(exc)) from None
        problem = self._publish(task, [(job_id, data)], timeout, priority, not_before)[0]
        if problem is not None:
            raise problem
        return job_id

    def submit_many_nowait(self, task: str, payloads: list[Any], *,
                           priority: int = wire.DEFAULT_PRIORITY, delay: float | None = None,
                           eta: datetime | float | None = None) -> list[str]:
        check_priority(priority)
        not_before = start_time(delay, eta)
        jobs = new_jobs(payloads, self.payload_limit)
        for problem in self._publish(task, jobs, None, priority, not_before):
            if problem is not None:
                raise problem
        return [job_id for job_id, _ in jobs]

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        return _outcome(job_id, self._ends_of([job_id], timeout)[0])

    def result_future(self, job_id: str, timeout: float | None) -> Future[Any]:
        """The job's result (or JobError) as a future of the NATS thread: AsyncSharedClient
        awaits it, and no thread waits."""
        return self.link.run(self._result_of(job_id, timeout))

    async def _result_of(self, job_id: str, timeout: float | None) -> Any:
        return _outcome(job_id, (await self._ready_ends([job_key(job_id)], timeout))[0])

    def _ends_of(self, job_ids: list[str], timeout: float | None) -> list[bytes | None]:
        """The stored end of the first job (waited for), then of those after it whose
        ends came already: one call to the NATS thread for many results of a map."""
        return self.link.call(self._ready_ends([job_key(j) for j in job_ids], timeout),
                              1e9 if timeout is None else timeout + 10)

    async def _ready_ends(self, keys: list[str], timeout: float | None) -> list[bytes | None]:
        found = [await self._end_of(keys[0], timeout)]
        for key in keys[1:]:
            if key in self._unreplied or (value := self._ends.get(key)) is None:
                break
            self._forget(key)
            found.append(value)
        return found

    def map_with_ids(self, task: str, payloads: Iterable[Any], timeout: float | None = None,
                     return_exceptions: bool = False,
                     stop: Callable[[], bool] | None = None, *,
                     priority: int = wire.DEFAULT_PRIORITY) -> Iterator[tuple[str, Any]]:
        check_priority(priority)
        outstanding: collections.deque[tuple[str, Exception | None]] = collections.deque()
        ready: dict[str, bytes | None] = {}  # ends collected ahead of their turn
        source = iter(payloads)
        exhausted = False
        chunk_size = min(SUBMIT_CHUNK, self.window)
        while outstanding or not exhausted:
            if not exhausted and self.window - len(outstanding) >= chunk_size:
                if stop is not None and stop():
                    return
                chunk = list(itertools.islice(source, chunk_size))
                exhausted = len(chunk) < chunk_size
                jobs: list[tuple[str, bytes]] = []
                refused: dict[str, Exception] = {}
                for payload in chunk:
                    job_id = uuid.uuid4().hex
                    try:
                        jobs.append((job_id, encode_payload(payload, self.payload_limit)))
                    except ValueError as exc:
                        refused[job_id] = PayloadError(job_id, str(exc))
                    outstanding.append((job_id, refused.get(job_id)))
                problems = dict(zip((j for j, _ in jobs), self._publish(task, jobs, None,
                                                                        priority)))
                for index, (job_id, problem) in enumerate(outstanding):
                    if problems.get(job_id) is not None:
                        outstanding[index] = (job_id, problems[job_id])
                continue
            head, problem = outstanding[0]
            if problem is None and head not in ready:
                waited = list(itertools.takewhile(
                    lambda job: job[1] is None, itertools.islice(outstanding, READY_BATCH)))
                ready.update(zip((j for j, _ in waited),
                                 self._ends_of([j for j, _ in waited], timeout)))
            outstanding.popleft()
            try:
                if problem is not None:
                    raise problem
                value = _outcome(head, ready.pop(head))
            except JobError as exc:
                if not return_exceptions:
                    raise
                value = exc
            yield head, value

    def settle(self, timeout: float) -> int:
        return 0  # every submit here is answered before it returns

    # -- plumbing ------------------------------------------------------------------------

    def _publish(self, task: str, jobs: list[tuple[str, bytes]], timeout: float | None,
                 priority: int = wire.DEFAULT_PRIORITY,
                 not_before: float | None = None) -> list[Exception | None]:
        """Store the jobs; per job, None or why it was not stored."""
        if not self.link.up.wait(self.config.queue.nats.connect_timeout):
            raise QueueUnreachable(f"NATS servers unreachable "
                                   f"({describe_servers(self.config.queue.nats)}): "
                                   "reconnecting")
        limit = self.ack_timeout if timeout is None else timeout
        try:
            outcomes = self.link.call(self._publish_all(task, jobs, limit, priority,
                                                        not_before), limit + 5)
        except TimeoutError:
            return [NotAcknowledged(job_id, f"NATS did not acknowledge the submit of job "
                                    f"{job_id} within {limit:g} s") for job_id, _ in jobs]
        return [None if ok is True else QueueRefused(job_id, f"NATS did not store it: {ok}")
                for (job_id, _), ok in zip(jobs, outcomes)]

    async def _publish_all(self, task: str, jobs: list[tuple[str, bytes]], limit: float,
                           priority: int, not_before: float | None) -> list[Any]:
        """Store each job, sent again after a failure that may pass (a resent one is not
        a second job) until `limit` seconds; per job, True or the last failure. The hosts
        are told of their priority once they are stored."""
        deadline = asyncio.get_running_loop().time() + limit

        async def one(job_id: str, data: bytes) -> Any:
            self._mine[job_key(job_id)] = None
            while len(self._mine) > MAX_KEPT:
                self._mine.pop(next(iter(self._mine)))
            while True:
                try:
                    await self.layout.publish(job_id, task, data, self._inbox, priority,
                                              not_before)
                    return True
                except Exception as exc:
                    if not transient(exc) or asyncio.get_running_loop().time() >= deadline:
                        self._mine.pop(job_key(job_id), None)
                        return exc
                    await asyncio.sleep(RESEND_AFTER)

        outcomes = list(await asyncio.gather(*(one(job_id, data) for job_id, data in jobs)))
        if any(ok is True for ok in outcomes):
            with contextlib.suppress(Exception):  # lost: the hosts find them within 1 s
                await self.layout.announce({priority})
        return outcomes

    async def _end_of(self, key: str, timeout: float | None) -> bytes | None:
        """The job's stored end; None if the job is neither ended nor pending. One of this
        client's own jobs is waited for on the inbox first (no read of the bucket)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        inbox_first = key in self._mine and key not in self._unreplied
        while True:
            notice = self._notices.get(key)
            if notice is None or notice.done():
                notice = self._notices[key] = loop.create_future()
            value = self._ends.pop(key, None)
            try:
                if value is None and not inbox_first:
                    value = await self._read_end(key)
                    if value is None:
                        self._forget(key)
                        return None
            except Exception as exc:
                if not transient(exc):
                    raise
                value, notice = b"", loop.create_future()  # look again soon
                loop.call_later(RESEND_AFTER, _settle, notice)
            inbox_first = False  # after one wait, the bucket is read as well
            if value:
                self._forget(key)
                return value
            wait = LOOK_AGAIN if deadline is None else min(LOOK_AGAIN, deadline - loop.time())
            if wait <= 0:
                self._forget(key)
                raise TimeoutError(f"timed out after {timeout:g} s waiting for the result "
                                   f"of {key_job(key)}")
            try:
                await asyncio.wait_for(asyncio.shield(notice), wait)
            except asyncio.TimeoutError:
                pass  # look again: a notice missed (a reconnect) costs LOOK_AGAIN at most

    async def _read_end(self, key: str) -> bytes | None:
        """The end from the bucket: b"" while the job is pending, None if it is unknown."""
        value = await self.layout.end(key)
        if value is None and not await self.layout.pending(key):
            value = await self.layout.end(key)  # it may have ended between the reads
            if value is None:
                return None
        return value or b""

    def _forget(self, key: str) -> None:
        self._unreplied.discard(key)
        self._notices.pop(key, None)
        self._mine.pop(key, None)
        self._ends.pop(key, None)


def _outcome(job_id: str, value: bytes | None) -> Any:
    """The result of a job from its stored end (None: no such job), or its JobError."""
    if value is None:
        return outcome(job_id, "unknown", None, b"null")
    record, result = decode_record(value)
    return outcome(job_id, str(record.get("state")), record.get("error"), result or b"null")


def _settle(notice: asyncio.Future[None]) -> None:
    if not notice.done():
        notice.set_result(None)
