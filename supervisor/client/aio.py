"""The client for asyncio applications (FastAPI, aiohttp): `AsyncClient`, with Client's
methods as coroutines, on zmq.asyncio.

    async with AsyncClient() as client:
        job_id = await client.submit("embed", {"text": question}, priority=9)
        vectors = await client.result(job_id, timeout=10)
        async for value in client.map("echo", payloads):
            ...

One DEALER socket to the daemon's queue.sock, as Client's; a reader task hands each answer
to the coroutine that waits for it, so that any number of coroutines submit and wait at
once without blocking the event loop. Submits carry ids chosen here and are sent again
when unanswered (a resent submit is not a second job); results are pushed by the daemon,
and asked for again after a silence (a daemon restarted meanwhile). With the NATS backend
and no daemon here, `AsyncClient(config)` talks to NATS itself: it is an AsyncSharedClient
(supervisor.client.aioshared).
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any

import zmq
import zmq.asyncio

from supervisor.client.checks import check_priority, new_jobs, shared_here, start_time
from supervisor.client.errors import (DaemonNotRunning, JobError, NotAcknowledged, PayloadError,
                                      encode_payload, outcome, rejection)
from supervisor.client.local import ACK_TIMEOUT, RESEND_AFTER, SUBMIT_CHUNK
from supervisor.client.operations import cancel
from supervisor.conf.config import load_config
from supervisor.conf.settings import Config
from supervisor.proto import wire
from supervisor.proto.paths import StatePaths
from supervisor.proto.pidfile import running_pid

End = tuple[str, dict[str, Any] | None, bytes]  # state, error, result


# The client that talks to the shared queue directly (supervisor.client.aioshared sets it).
SHARED: type[AsyncClient] | None = None


class AsyncClient:
    def __new__(cls, config: Config | str | None = None, **_kwargs: Any) -> AsyncClient:
        if cls is AsyncClient and SHARED is not None and shared_here(config):
            return object.__new__(SHARED)
        return object.__new__(cls)

    def __init__(self, config: Config | str | None = None, *, window: int = 1000,
                 ack_timeout: float = ACK_TIMEOUT) -> None:
        if not isinstance(config, Config):
            config = load_config(config)
        self.config = config
        self._paths = StatePaths.for_state_dir(config.supervisor.state_dir)
        if running_pid(self._paths.pidfile) is None:
            raise DaemonNotRunning(f"docbrain is not running (state_dir "
                                   f"{self._paths.state_dir})")
        self.window = window
        self.ack_timeout = ack_timeout
        self.payload_limit = wire.payload_limit(config.queue.max_payload_bytes)
        self.sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(self._paths.endpoint("queue"))
        self._acks: dict[str, asyncio.Future[None]] = {}  # submits not answered yet
        self._ends: dict[str, asyncio.Future[End]] = {}   # jobs whose end is awaited
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self.sock.close()

    # -- the API -------------------------------------------------------------------------

    async def submit(self, task: str, payload: Any = None, timeout: float | None = None, *,
                     priority: int = wire.DEFAULT_PRIORITY, delay: float | None = None,
                     eta: datetime | float | None = None) -> str:
        """As Client.submit: the id once the daemon has committed the job."""
        (job_id,) = await self.submit_many(task, [payload], timeout, priority=priority,
                                           delay=delay, eta=eta)
        return job_id

    async def submit_many(self, task: str, payloads: list[Any], timeout: float | None = None,
                          *, priority: int = wire.DEFAULT_PRIORITY,
                          delay: float | None = None,
                          eta: datetime | float | None = None) -> list[str]:
        """Submit jobs of one task; their ids once all are committed. Every payload is
        checked first (PayloadError, nothing sent); JobRejected for the first the daemon
        refused, NotAcknowledged without an answer within `timeout` (ack_timeout)."""
        check_priority(priority)
        not_before = start_time(delay, eta)
        jobs = new_jobs(payloads, self.payload_limit)
        problems = await self._submit(task, jobs, priority, not_before,
                                      self.ack_timeout if timeout is None else timeout)
        for job_id, _ in jobs:  # the first refusal, as Client.submit raises it
            if job_id in problems:
                for other, _ in jobs:
                    self._ends.pop(other, None)
                raise problems[job_id]
        return [job_id for job_id, _ in jobs]

    async def result(self, job_id: str, timeout: float | None = None) -> Any:
        """As Client.result: the job's value, or its JobError; TimeoutError after
        `timeout` seconds (default: no limit)."""
        end = self._ends.get(job_id)
        if end is None:
            end = self._ends[job_id] = asyncio.get_running_loop().create_future()
            self._send(wire.encode(wire.Wait(ids=[job_id])))
        deadline = None if timeout is None else time.monotonic() + timeout
        while not end.done():
            left = RESEND_AFTER if deadline is None else \
                min(RESEND_AFTER, deadline - time.monotonic())
            if left <= 0:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for the result "
                                   f"of {job_id}")
            await asyncio.wait([end], timeout=left)
            if not end.done():  # the daemon may have been restarted: ask again
                self._send(wire.encode(wire.Wait(ids=[job_id])))
        self._ends.pop(job_id, None)
        return outcome(job_id, *end.result())

    async def map(self, task: str, payloads: Iterable[Any], timeout: float | None = None,
                  return_exceptions: bool = False, *,
                  priority: int = wire.DEFAULT_PRIORITY) -> AsyncIterator[Any]:
        """As Client.map: submitted in groups, at most `window` jobs outstanding, the
        results in input order; with return_exceptions a failed job yields its error."""
        check_priority(priority)
        outstanding: collections.deque[tuple[str, Exception | None]] = collections.deque()
        source = iter(payloads)
        exhausted = False
        while outstanding or not exhausted:
            room = self.window - len(outstanding)
            if not exhausted and room >= min(SUBMIT_CHUNK, self.window) // 2:
                chunk = [p for _, p in zip(range(min(room, SUBMIT_CHUNK)), source)]
                exhausted = len(chunk) < min(room, SUBMIT_CHUNK)
                outstanding.extend(await self._submit_chunk(task, chunk, priority))
                continue
            head, problem = outstanding.popleft()
            try:
                if problem is not None:
                    raise problem
                value = await self.result(head, timeout)
            except JobError as exc:
                if not return_exceptions:
                    raise
                value = exc
            yield value

    async def cancel(self, job_ids: str | list[str], terminate: bool = False) -> list[str]:
        """As Client.cancel, on a thread (its request waits for the daemon's answer)."""
        return await asyncio.to_thread(cancel, self.config, self._paths, job_ids, terminate)

    # -- plumbing ------------------------------------------------------------------------

    def _send(self, frames: list[bytes]) -> None:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())
        self.sock.send_multipart(frames)

    async def _submit_chunk(self, task: str, payloads: list[Any],
                            priority: int) -> list[tuple[str, Exception | None]]:
        """Per payload its job id and, if it was not accepted, why (a map yields it)."""
        ids = [uuid.uuid4().hex for _ in payloads]
        problems: dict[str, Exception] = {}
        jobs = []
        for job_id, payload in zip(ids, payloads):
            try:
                jobs.append((job_id, encode_payload(payload, self.payload_limit)))
            except ValueError as exc:
                problems[job_id] = PayloadError(job_id, str(exc))
        if jobs:
            problems.update(await self._submit(task, jobs, priority, None, self.ack_timeout))
        return [(job_id, problems.get(job_id)) for job_id in ids]

    async def _submit(self, task: str, jobs: list[tuple[str, bytes]], priority: int,
                      not_before: float | None, limit: float) -> dict[str, Exception]:
        """Send the jobs, again while unanswered, until all are answered; the refused ones
        with why. NotAcknowledged if one is still unanswered after `limit` seconds."""
        loop = asyncio.get_running_loop()
        for job_id, _ in jobs:
            self._acks[job_id] = loop.create_future()
            self._ends.setdefault(job_id, loop.create_future())  # pushed: the submit waits
        deadline = time.monotonic() + limit
        try:
            while True:
                unanswered = [(j, d) for j, d in jobs if not self._acks[j].done()]
                if not unanswered:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NotAcknowledged(unanswered[0][0], f"no answer from the daemon to "
                                          f"the submit of job {unanswered[0][0]} in "
                                          f"{limit:g} s")

                def build(part: list[tuple[str, bytes]]) -> wire.Submit:
                    return wire.Submit(ids=[j for j, _ in part], task=task, wait=True,
                                       priority=priority, not_before=not_before,
                                       data=[d for _, d in part])
                for frames in wire.encode_many(build, unanswered):
                    self._send(frames)
                await asyncio.wait([self._acks[j] for j, _ in unanswered],
                                   timeout=min(RESEND_AFTER, left))
            problems = {j: exc for j, _ in jobs
                        if isinstance(exc := self._acks[j].exception(), Exception)}
            for job_id in problems:
                self._ends.pop(job_id, None)
            return problems
        except BaseException:
            for job_id, _ in jobs:
                self._ends.pop(job_id, None)
            raise
        finally:
            for job_id, _ in jobs:
                self._acks.pop(job_id, None)

    async def _read(self) -> None:
        """The reader task: every answer to the future that waits for it."""
        while True:
            frames = await self.sock.recv_multipart()
            try:
                message = wire.decode(frames)
            except wire.ProtocolError:
                continue
            if isinstance(message, wire.Accepted):
                for job_id in message.ids:
                    _settle(self._acks.get(job_id), None)
            elif isinstance(message, wire.Rejected):
                ack = self._acks.get(message.id)
                if ack is not None and not ack.done():
                    ack.set_exception(rejection(message.id, message.error))
            elif isinstance(message, wire.JobResult):
                for job_id, state, error, data in zip(message.ids, message.states,
                                                      message.errors, message.data):
                    _settle(self._acks.get(job_id), None)  # an end answers a submit too
                    _settle(self._ends.get(job_id), (state, error, data))


def _settle(future: asyncio.Future[Any] | None, value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)
