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

RESEND_AFTER = 2.0  # seconds without an answer before a request is sent again


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


def _outcome(result: wire.JobResult) -> Any:
    if result.state == "done":
        return json.loads(result.data)
    error = result.error or {}
    if result.state == "failed":
        raise JobFailed(result.id, error)
    if result.state == "dead":
        raise JobDead(result.id, str(error.get("reason", "unknown")))
    raise KeyError(f"no such job: {result.id}")


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
        self._sent: dict[str, tuple[list[bytes] | None, float]] = {}
        self._acks: dict[str, wire.Accepted | wire.Rejected] = {}
        self._results: dict[str, wire.JobResult] = {}

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
        data = json.dumps(payload).encode()  # not JSON-serialisable: TypeError, nothing sent
        job_id = uuid.uuid4().hex
        self._send(job_id, wire.Submit(id=job_id, task=task, wait=True, data=data))
        return job_id

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        """The job's return value; raises JobFailed, JobDead, or TimeoutError."""
        if job_id not in self._results and job_id not in self._sent:
            self._send(job_id, wire.Wait(id=job_id))
        self._wait_for(lambda: job_id in self._results, timeout, f"the result of {job_id}")
        return _outcome(self._results.pop(job_id))

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
        outstanding: list[str] = []
        source = iter(payloads)
        exhausted = False
        while outstanding or not exhausted:
            while not exhausted and len(outstanding) < self.window:
                try:
                    outstanding.append(self.submit_nowait(task, next(source)))
                except StopIteration:
                    exhausted = True
            if not outstanding:
                return
            head = outstanding.pop(0)
            try:
                self._wait_for(lambda: head in self._results or
                               isinstance(self._acks.get(head), wire.Rejected),
                               timeout, f"the result of {head}")
                self._check_ack(head)
                value = _outcome(self._results.pop(head))
            except JobError as exc:
                if not return_exceptions:
                    raise
                value = exc
            yield head, value

    # -- plumbing ------------------------------------------------------------------------

    def _send(self, key: str, message: wire.Message) -> None:
        frames = wire.encode(message)
        self.sock.send_multipart(frames)
        self._sent[key] = (frames if isinstance(message, wire.Submit) else None,
                           time.monotonic())

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
            if isinstance(message, (wire.Accepted, wire.Rejected)):
                self._acks[message.id] = message
                if isinstance(message, wire.Rejected):
                    self._sent.pop(message.id, None)
                elif message.id in self._sent:  # now waiting for its result: resend a Wait
                    self._sent[message.id] = (None, self._sent[message.id][1])
            elif isinstance(message, wire.JobResult):
                self._results[message.id] = message
                self._sent.pop(message.id, None)

    def _resend(self) -> None:
        """Nothing heard for a while: the daemon may have been restarted; ask again."""
        now = time.monotonic()
        for key, (frames, sent_at) in list(self._sent.items()):
            if now - sent_at >= RESEND_AFTER:
                self.sock.send_multipart(frames or wire.encode(wire.Wait(id=key)))
                self._sent[key] = (frames, now)
