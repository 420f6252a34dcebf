"""Submit jobs to a running daemon and get their results.

    from supervisor.client import Client
    client = Client()                        # finds the daemon like docbrainctl does
    job_id = client.submit("echo", {"x": 1})
    client.result(job_id, timeout=10)        # -> {"x": 1}
    list(client.map("echo", [1, 2, 3]))      # pipelined, results in order

Jobs are at-least-once: a job whose worker dies is run again, so tasks should be
idempotent. Submits carry an id chosen here, so the client can resend them safely (it does,
when the daemon is restarted under it) without creating a second job.

Payloads are checked here before anything is sent, as the daemon checks them: strict JSON
(no NaN or Infinity) of at most `queue.max_payload_bytes`. A submit that the daemon neither
accepts nor rejects within `ack_timeout` seconds (resends included) is an error, never an
endless wait; the wait for the result of an accepted job has no limit unless given one.
"""

from __future__ import annotations

import collections
import itertools
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import zmq

from supervisor.client.checks import check_priority, new_jobs, shared_here, start_time
from supervisor.client.errors import (DaemonNotRunning, JobError, JobRejected, NotAcknowledged,
                                      PayloadError, encode_payload, outcome, rejection)
from supervisor.client.operations import Operations
from supervisor.conf.config import load_config
from supervisor.conf.settings import Config
from supervisor.proto import wire
from supervisor.proto.paths import StatePaths
from supervisor.proto.pidfile import running_pid

RESEND_AFTER = 2.0   # seconds without an answer before a request is sent again
# Seconds a submit may go unanswered, resends included. Long enough for a daemon restarted
# under a map (kill -9, then start: workers READY in about 10 s with the default model).
ACK_TIMEOUT = 60.0
SUBMIT_CHUNK = 256   # jobs in one Submit message at most
STOP_POLL = 0.1      # seconds between calls of map_with_ids' stop() while it waits


class _Stopped(Exception):
    """map_with_ids' stop() returned true: the map ends there."""


@dataclass
class _Sent:
    """A submit not answered yet."""
    task: str
    data: bytes
    first: float  # when first sent: its answer is due ack_timeout later
    last: float   # when last sent
    priority: int = wire.DEFAULT_PRIORITY
    not_before: float | None = None
    sends: int = 1


# The client that talks to the shared queue directly (supervisor.client.shared sets it):
# `Client(config)` is one when `[queue] backend = "nats"` and no daemon runs here.
SHARED: type[Client] | None = None


class Client(Operations):
    def __new__(cls, config: Config | str | None = None, **_kwargs: Any) -> Client:
        if cls is Client and SHARED is not None and shared_here(config):
            return object.__new__(SHARED)
        return object.__new__(cls)

    def __init__(self, config: Config | str | None = None, *, window: int = 1000,
                 ack_timeout: float = ACK_TIMEOUT) -> None:
        if not isinstance(config, Config):
            config = load_config(config)
        self.config = config
        paths = StatePaths.for_state_dir(config.supervisor.state_dir)
        self._paths = paths
        if running_pid(paths.pidfile) is None:
            raise DaemonNotRunning(f"docbrain is not running (state_dir {paths.state_dir})")
        self.window = window
        self.ack_timeout = ack_timeout
        # What the daemon accepts if it runs with this configuration: it checks again.
        self.payload_limit = wire.payload_limit(config.queue.max_payload_bytes)
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(paths.endpoint("queue"))
        self._unacked: dict[str, _Sent] = {}               # submits not answered yet
        self._waiting: dict[str, float] = {}               # id -> result last asked at
        self._acks: dict[str, JobRejected | None] = {}     # None: accepted
        self._results: dict[str, tuple[str, dict[str, Any] | None, bytes]] = {}
        self._next_resend = 0.0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the API -------------------------------------------------------------------------

    def submit(self, task: str, payload: Any = None, timeout: float | None = None, *,
               priority: int = wire.DEFAULT_PRIORITY, delay: float | None = None,
               eta: datetime | float | None = None) -> str:
        """Submit one job; returns its id once the daemon has committed it. `priority`:
        0-9, higher runs first; `delay` (seconds) or `eta` (a datetime, or seconds since
        the epoch): not started before then (ValueError for a bad one). Raises PayloadError
        (nothing sent), JobRejected, or NotAcknowledged after `timeout` seconds (default:
        ack_timeout) without an answer."""
        job_id = self.submit_many_nowait(task, [payload], priority=priority, delay=delay,
                                         eta=eta)[0]
        limit = self.ack_timeout if timeout is None else timeout
        try:
            self._wait_for(lambda: job_id in self._acks, limit, "")
        except TimeoutError:
            raise self._not_acknowledged(job_id) from None
        self._check_ack(job_id)
        return job_id

    def submit_nowait(self, task: str, payload: Any = None, *,
                      priority: int = wire.DEFAULT_PRIORITY) -> str:
        """Send a submit without waiting for its acknowledgement (for pipelining)."""
        return self.submit_many_nowait(task, [payload], priority=priority)[0]

    def submit_many_nowait(self, task: str, payloads: list[Any], *,
                           priority: int = wire.DEFAULT_PRIORITY, delay: float | None = None,
                           eta: datetime | float | None = None) -> list[str]:
        """Send jobs of one task, without waiting for their acknowledgement. Every payload
        is checked first: PayloadError or TypeError, and nothing is sent."""
        check_priority(priority)
        not_before = start_time(delay, eta)
        jobs = new_jobs(payloads, self.payload_limit)
        self._send_submit(task, jobs, priority, not_before)
        return [job_id for job_id, _ in jobs]

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        """The job's return value; raises JobFailed, JobDead, TimeoutError after `timeout`
        (default: none), or NotAcknowledged if the job was never accepted or rejected."""
        if job_id not in self._results and job_id not in self._unacked and \
                job_id not in self._waiting:  # ours are pushed: submits ask for that
            self._send_wait([job_id])
        self._wait_for(lambda: job_id in self._results, timeout, f"the result of {job_id}",
                       ack_of=job_id)
        return outcome(job_id, *self._results.pop(job_id))

    def map(self, task: str, payloads: Iterable[Any], timeout: float | None = None,
            return_exceptions: bool = False, *,
            priority: int = wire.DEFAULT_PRIORITY) -> Iterator[Any]:
        """Submit a job per payload, pipelined, and yield the results in input order.

        With return_exceptions, a failed, dead or rejected job yields its exception
        instead of raising it; a payload refused here (PayloadError) is such a rejected job,
        and is not sent. NotAcknowledged and TimeoutError are raised. `priority` is every
        job's (0-9; ValueError else).
        """
        for _job_id, value in self.map_with_ids(task, payloads, timeout, return_exceptions,
                                                priority=priority):
            yield value

    def map_with_ids(self, task: str, payloads: Iterable[Any], timeout: float | None = None,
                     return_exceptions: bool = False,
                     stop: Callable[[], bool] | None = None, *,
                     priority: int = wire.DEFAULT_PRIORITY) -> Iterator[tuple[str, Any]]:
        """As `map`, yielding (job id, result) pairs. `stop()`, if given, is called before
        each group of submits and every STOP_POLL seconds while a result is awaited; once
        true, the map ends: nothing more is submitted (payloads are taken only as they are
        submitted), those submitted run on in the daemon (see `settle`)."""
        check_priority(priority)
        outstanding: collections.deque[str] = collections.deque()
        source = iter(payloads)
        exhausted = False
        while outstanding or not exhausted:
            room = self.window - len(outstanding)
            if not exhausted and room >= min(SUBMIT_CHUNK, self.window) // 2:
                if stop is not None and stop():
                    return
                chunk = list(itertools.islice(source, min(room, SUBMIT_CHUNK)))
                exhausted = len(chunk) < min(room, SUBMIT_CHUNK)
                if chunk:
                    outstanding.extend(self._submit_chunk(task, chunk, priority))
                continue
            if not outstanding:
                return
            head = outstanding.popleft()
            try:
                self._wait_for(lambda: head in self._results or
                               self._acks.get(head) is not None,
                               timeout, f"the result of {head}", ack_of=head, stop=stop)
                self._check_ack(head)
                value = outcome(head, *self._results.pop(head))
            except _Stopped:
                return
            except JobError as exc:
                if not return_exceptions:
                    raise
                value = exc
            yield head, value

    def settle(self, timeout: float) -> int:
        """After a map stopped early: wait up to `timeout` seconds for answers to the
        submits sent (resent if need be; nothing new); how many are still unanswered."""
        try:
            self._wait_for(lambda: not self._unacked, timeout, "answers to submits")
        except TimeoutError:
            pass
        return len(self._unacked)

    # -- plumbing ------------------------------------------------------------------------

    def _submit_chunk(self, task: str, payloads: list[Any], priority: int) -> list[str]:
        """Send what passes the checks; the others are rejected here, in their place."""
        ids = [uuid.uuid4().hex for _ in payloads]
        jobs = []
        for job_id, payload in zip(ids, payloads):
            try:
                jobs.append((job_id, encode_payload(payload, self.payload_limit)))
            except ValueError as exc:
                self._acks[job_id] = PayloadError(job_id, str(exc))
        self._send_submit(task, jobs, priority)
        return ids

    def _send_submit(self, task: str, jobs: list[tuple[str, bytes]], priority: int,
                     not_before: float | None = None) -> None:
        def build(part: list[tuple[str, bytes]]) -> wire.Submit:
            return wire.Submit(ids=[j for j, _ in part], task=task, wait=True,
                               priority=priority, not_before=not_before,
                               data=[d for _, d in part])
        # Several messages where one body would be over MAX_BODY (a big resend).
        for frames in wire.encode_many(build, jobs):
            self.sock.send_multipart(frames)
        now = time.monotonic()
        for job_id, item in jobs:
            sent = self._unacked.get(job_id)
            if sent is None:
                self._unacked[job_id] = _Sent(task, item, now, now, priority, not_before)
            else:
                sent.last, sent.sends = now, sent.sends + 1

    def _send_wait(self, ids: list[str]) -> None:
        self.sock.send_multipart(wire.encode(wire.Wait(ids=ids)))
        now = time.monotonic()
        for job_id in ids:
            self._waiting[job_id] = now

    def _check_ack(self, job_id: str) -> None:
        ack = self._acks.pop(job_id, None)
        if ack is not None:
            raise ack

    def _not_acknowledged(self, job_id: str) -> NotAcknowledged:
        sent = self._unacked.pop(job_id, None)  # given up: no more resends
        return _not_acknowledged(self._paths, job_id, sent, self.ack_timeout)

    def _wait_for(self, done: Any, timeout: float | None, what: str,
                  ack_of: str | None = None, stop: Callable[[], bool] | None = None) -> None:
        """Poll until done(); TimeoutError after `timeout`, NotAcknowledged if the
        submit of `ack_of` is still unanswered after ack_timeout, _Stopped once stop()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            wait = RESEND_AFTER if deadline is None else min(RESEND_AFTER, deadline - now)
            sent = self._unacked.get(ack_of) if ack_of is not None else None
            if ack_of is not None and sent is not None:
                if now - sent.first >= self.ack_timeout:
                    raise self._not_acknowledged(ack_of)
                wait = min(wait, sent.first + self.ack_timeout - now)
            if _poll(self.sock, wait, stop):
                self._receive()
                # Answers to others keep coming: a dropped submit must still go again.
                if now >= self._next_resend:
                    self._resend(waits=False)
            else:
                self._resend()

    def _receive(self) -> None:
        for frames in wire.waiting(self.sock):
            try:
                message = wire.decode(frames)
            except wire.ProtocolError:
                continue
            if isinstance(message, wire.Accepted):
                now = time.monotonic()
                for job_id in message.ids:
                    self._acks[job_id] = None
                    if self._unacked.pop(job_id, None) is not None and \
                            job_id not in self._results:
                        self._waiting[job_id] = now  # now it is its result we wait for
            elif isinstance(message, wire.Rejected):
                self._acks[message.id] = rejection(message.id, message.error)
                self._unacked.pop(message.id, None)
            elif isinstance(message, wire.JobResult):
                for end in zip(message.ids, message.states, message.errors, message.data):
                    self._results[end[0]] = end[1:]
                    self._unacked.pop(end[0], None)
                    self._waiting.pop(end[0], None)

    def _resend(self, waits: bool = True) -> None:
        """Unanswered for a while: the daemon may have been restarted, or have dropped the
        message; ask again. Waits only after a silence: results may just be slow."""
        now = time.monotonic()
        self._next_resend = now + RESEND_AFTER
        by_kind: dict[tuple[str, int, float | None], list[tuple[str, bytes]]] = {}
        for job_id, sent in self._unacked.items():
            if now - sent.last >= RESEND_AFTER:
                kind = (sent.task, sent.priority, sent.not_before)
                by_kind.setdefault(kind, []).append((job_id, sent.data))
        for (task, priority, not_before), jobs in by_kind.items():
            self._send_submit(task, jobs, priority, not_before)
        if not waits:
            return
        stale = [job_id for job_id, asked in self._waiting.items() if now - asked >= RESEND_AFTER]
        if stale:
            self._send_wait(stale)


def _poll(sock: zmq.Socket, wait: float, stop: Callable[[], bool] | None) -> bool:
    """Whether a message came within `wait` seconds; stop() asked every STOP_POLL."""
    end = time.monotonic() + wait
    while True:
        if stop is not None and stop():
            raise _Stopped
        left = max(0.0, end - time.monotonic())
        step = left if stop is None else min(left, STOP_POLL)
        if sock.poll(int(step * 1000) + 1):
            return True
        if stop is None or left <= STOP_POLL:
            return False


def _not_acknowledged(paths: StatePaths, job_id: str, sent: _Sent | None,
                      ack_timeout: float) -> NotAcknowledged:
    """The error of a submit given up on, with what may be the cause."""
    waited = time.monotonic() - sent.first if sent else ack_timeout
    if running_pid(paths.pidfile) is None:
        cause = f"the daemon is not running (state_dir {paths.state_dir})"
    else:
        cause = ("the daemon runs but did not answer: no worker has become READY (see "
                 "docbrainctl status), it is stuck, or it dropped the message unread (an "
                 "older daemon does so with a payload over its ZeroMQ MAXMSGSIZE)")
    sends = sent.sends if sent else 1
    return NotAcknowledged(job_id, f"no answer from the daemon to the submit of job "
                           f"{job_id} in {waited:.0f} s ({sends} sends): {cause}")
