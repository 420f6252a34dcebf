"""Submit jobs to a running daemon and get their results.

    from supervisor.client import Client
    client = Client()                        # finds the daemon like docbrainctl does
    job_id = client.submit("echo", {"x": 1})
    client.result(job_id, timeout=10)        # -> {"x": 1}
    list(client.map("echo", [1, 2, 3]))      # pipelined, results in order

Jobs are at-least-once: a job whose worker dies is run again, so tasks should be
idempotent. Submits carry an id chosen here, so the client can resend them safely (it does,
when the daemon is restarted under it) without creating a second job.
"""

from __future__ import annotations

import collections
import itertools
import json
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import zmq

from supervisor import wire
from supervisor.config import load_config
from supervisor.paths import StatePaths
from supervisor.pidfile import running_pid
from supervisor.settings import Config

RESEND_AFTER = 2.0   # seconds without an answer before a request is sent again
SUBMIT_CHUNK = 256   # jobs in one Submit message at most


class JobError(Exception):
    """Base of the errors a job's outcome raises."""

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobRejected(JobError):
    """The daemon refused the submit (unknown task, payload not JSON or too big)."""


class JobFailed(JobError):
    """The task raised. `type`, `message` and `traceback` describe the exception."""

    def __init__(self, job_id: str, error: dict[str, Any]) -> None:
        self.type = str(error.get("type", "Exception"))
        self.message = str(error.get("message", ""))
        self.traceback = str(error.get("traceback", ""))
        super().__init__(job_id, f"job {job_id} failed: {self.type}: {self.message}")


class JobDead(JobError):
    """The job was dead-lettered: its runs kept being lost. `reason` says how."""

    def __init__(self, job_id: str, reason: str) -> None:
        self.reason = reason
        super().__init__(job_id, f"job {job_id} is dead: {reason}")


class DaemonNotRunning(ConnectionError):
    pass


def _outcome(job_id: str, state: str, error: dict[str, Any] | None, data: bytes) -> Any:
    if state == "done":
        return json.loads(data)
    error = error or {}
    if state == "failed":
        raise JobFailed(job_id, error)
    if state == "dead":
        raise JobDead(job_id, str(error.get("reason", "unknown")))
    raise KeyError(f"no such job: {job_id}")


class Client:
    def __init__(self, config: Config | str | None = None, *, window: int = 1000) -> None:
        if not isinstance(config, Config):
            config = load_config(config)
        self.config = config
        paths = StatePaths.for_state_dir(config.supervisor.state_dir)
        if running_pid(paths.pidfile) is None:
            raise DaemonNotRunning(f"docbrain is not running (state_dir {paths.state_dir})")
        self.window = window
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(paths.endpoint("queue"))
        # Unanswered requests: job id -> (the Submit's frames, or None for a Wait; sent at).
        self._unacked: dict[str, tuple[str, bytes, float]] = {}  # id -> task, payload, sent at
        self._waiting: dict[str, float] = {}                     # id -> result last asked at
        self._acks: dict[str, wire.Rejected | None] = {}         # None: accepted
        self._results: dict[str, tuple[str, dict[str, Any] | None, bytes]] = {}

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the API -------------------------------------------------------------------------

    def submit(self, task: str, payload: Any = None, timeout: float = 30.0) -> str:
        """Submit one job; returns its id once the daemon has committed it."""
        job_id = self.submit_nowait(task, payload)
        self._wait_for(lambda: job_id in self._acks, timeout, f"the daemon to accept {job_id}")
        self._check_ack(job_id)
        return job_id

    def submit_nowait(self, task: str, payload: Any = None) -> str:
        """Send a submit without waiting for its acknowledgement (for pipelining)."""
        return self.submit_many_nowait(task, [payload])[0]

    def submit_many_nowait(self, task: str, payloads: list[Any]) -> list[str]:
        """Send jobs of one task in one message, without waiting for their acknowledgement."""
        # Not JSON-serialisable: TypeError here, and nothing is sent.
        data = [json.dumps(p).encode() for p in payloads]
        ids = [uuid.uuid4().hex for _ in payloads]
        self._send_submit(task, ids, data)
        return ids

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        """The job's return value; raises JobFailed, JobDead, or TimeoutError."""
        if job_id not in self._results and job_id not in self._unacked and \
                job_id not in self._waiting:  # ours are pushed: submits ask for that
            self._send_wait([job_id])
        self._wait_for(lambda: job_id in self._results, timeout, f"the result of {job_id}")
        return _outcome(job_id, *self._results.pop(job_id))

    def map(self, task: str, payloads: Iterable[Any], timeout: float | None = None,
            return_exceptions: bool = False) -> Iterator[Any]:
        """Submit a job per payload, pipelined, and yield the results in input order.

        With return_exceptions, a failed, dead or rejected job yields its exception
        instead of raising it.
        """
        for _job_id, value in self.map_with_ids(task, payloads, timeout, return_exceptions):
            yield value

    def map_with_ids(self, task: str, payloads: Iterable[Any], timeout: float | None = None,
                     return_exceptions: bool = False) -> Iterator[tuple[str, Any]]:
        """As `map`, yielding (job id, result) pairs."""
        outstanding: collections.deque[str] = collections.deque()
        source = iter(payloads)
        exhausted = False
        while outstanding or not exhausted:
            room = self.window - len(outstanding)
            if not exhausted and room >= min(SUBMIT_CHUNK, self.window) // 2:
                chunk = list(itertools.islice(source, min(room, SUBMIT_CHUNK)))
                exhausted = len(chunk) < min(room, SUBMIT_CHUNK)
                if chunk:
                    outstanding.extend(self.submit_many_nowait(task, chunk))
                continue
            if not outstanding:
                return
            head = outstanding.popleft()
            try:
                self._wait_for(lambda: head in self._results or
                               isinstance(self._acks.get(head), wire.Rejected),
                               timeout, f"the result of {head}")
                self._check_ack(head)
                value = _outcome(head, *self._results.pop(head))
            except JobError as exc:
                if not return_exceptions:
                    raise
                value = exc
            yield head, value

    # -- plumbing ------------------------------------------------------------------------

    def _send_submit(self, task: str, ids: list[str], data: list[bytes]) -> None:
        self.sock.send_multipart(wire.encode(wire.Submit(ids=ids, task=task, wait=True,
                                                         data=data)))
        now = time.monotonic()
        for job_id, item in zip(ids, data):
            self._unacked[job_id] = (task, item, now)

    def _send_wait(self, ids: list[str]) -> None:
        self.sock.send_multipart(wire.encode(wire.Wait(ids=ids)))
        now = time.monotonic()
        for job_id in ids:
            self._waiting[job_id] = now

    def _check_ack(self, job_id: str) -> None:
        ack = self._acks.pop(job_id, None)
        if isinstance(ack, wire.Rejected):
            raise JobRejected(job_id, ack.error)

    def _wait_for(self, done: Any, timeout: float | None, what: str) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            wait = RESEND_AFTER if deadline is None else min(RESEND_AFTER, deadline - now)
            if self.sock.poll(int(wait * 1000) + 1):
                self._receive()
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
                self._acks[message.id] = message
                self._unacked.pop(message.id, None)
            elif isinstance(message, wire.JobResult):
                for end in zip(message.ids, message.states, message.errors, message.data):
                    self._results[end[0]] = end[1:]
                    self._unacked.pop(end[0], None)
                    self._waiting.pop(end[0], None)

    def _resend(self) -> None:
        """Nothing heard for a while: the daemon may have been restarted; ask again."""
        now = time.monotonic()
        by_task: dict[str, tuple[list[str], list[bytes]]] = {}
        for job_id, (task, data, sent_at) in self._unacked.items():
            if now - sent_at >= RESEND_AFTER:
                ids, items = by_task.setdefault(task, ([], []))
                ids.append(job_id)
                items.append(data)
        for task, (ids, items) in by_task.items():
            self._send_submit(task, ids, items)
        stale = [job_id for job_id, asked in self._waiting.items() if now - asked >= RESEND_AFTER]
        if stale:
            self._send_wait(stale)
