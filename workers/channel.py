"""The worker's threads that talk to the daemon, and what they share with the task thread.

The task thread runs jobs. `serve` owns the worker's socket: it receives all the time, also
while a task runs, and sends what the task thread passes it over an inproc pipe (a ZeroMQ
socket belongs to one thread). `heartbeats` has a socket of its own.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from supervisor.proto import wire

log = logging.getLogger("workers")


@dataclass(frozen=True)
class PendingJob:
    id: str
    task: str
    data: bytes
    priority: int = wire.DEFAULT_PRIORITY
    message: int = 0  # which Job message brought it: a batch is taken from one only


# Between the worker's two threads (see `_io`): an inproc pair. One-frame messages are the
# threads' own; a wire message is never shorter than two frames.
PIPE = "inproc://worker-io"
WAKE = [b""]        # io thread -> task thread: jobs (or a slot) arrived
STOP = [b"stop"]    # task thread -> io thread: send what came before this, then end


class Mailbox:
    """What the worker's threads share: the jobs received and not started, in the order
    they run: the higher priorities first, each in the order it came."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: collections.deque[PendingJob] = collections.deque()
        self.messages = 0  # Job messages received
        self.assigned: int | None = None  # a standby's slot, once the daemon gives it one
        self.heard = time.monotonic()     # the daemon's last message

    def take(self, batching: set[str]) -> list[PendingJob]:
        """The next job, and if its task is one of `batching`, every job of that task that
        follows it and came in the same message; [] if the daemon took them all back
        meanwhile. Once taken, a job is started: it can no longer be given back."""
        with self.lock:
            if not self.jobs:
                return []
            first = self.jobs.popleft()
            jobs = [first]
            if first.task in batching:
                while self.jobs and self.jobs[0].task == first.task and \
                        self.jobs[0].message == first.message:
                    jobs.append(self.jobs.popleft())
            return jobs

    def add(self, jobs: list[PendingJob]) -> None:
        """Jobs of one priority that came in one message: after those held of the same or
        a higher priority, before the lower ones."""
        with self.lock:
            held = self.jobs
            if not held or held[-1].priority >= jobs[0].priority:
                held.extend(jobs)
                return
            lower = []
            while held and held[-1].priority < jobs[0].priority:
                lower.append(held.pop())
            held.extend(jobs)  # in place: the task thread holds on to this deque
            held.extend(reversed(lower))

    def give_back(self, job_ids: list[str]) -> list[str]:
        """Remove the named jobs that are not started; their ids."""
        wanted = set(job_ids)
        with self.lock:
            given = [job.id for job in self.jobs if job.id in wanted]
            if given:  # in place: the task thread holds on to this deque
                kept = [j for j in self.jobs if j.id not in wanted]
                self.jobs.clear()
                self.jobs.extend(kept)
        return given

    def receive(self, sock: zmq.Socket) -> bool:
        """Take in what the daemon sent; True if the task thread has something new."""
        wake = False
        for frames in wire.waiting(sock):
            self.heard = time.monotonic()
            try:
                message = wire.decode(frames)
            except wire.ProtocolError as exc:
                log.warning("dropped a malformed message from the daemon: %s", exc)
                continue
            if isinstance(message, wire.Job):
                self.messages += 1
                if message.ids:
                    self.add([PendingJob(*job, message.priority, self.messages)
                              for job in zip(message.ids, message.tasks, message.data)])
                wake = True
            elif isinstance(message, wire.Revoke):
                sock.send_multipart(wire.encode(wire.Revoked(ids=self.give_back(message.ids))))
            elif isinstance(message, wire.Assign):
                self.assigned = message.slot
                wake = True
        return wake


def serve(ctx: zmq.Context, endpoint: str, routing_id: bytes,
        mailbox: Mailbox) -> None:
    """The thread that owns the worker's socket to the daemon. It receives all the time,
    also while a task runs, so that the daemon can take back the jobs this worker holds and
    has not started (a Revoke, answered at once), and sends what the task thread passes it
    over the pipe (a ZeroMQ socket belongs to one thread)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 2000)  # let the last results out at exit
    sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.connect(endpoint)
    pipe = ctx.socket(zmq.PAIR)
    pipe.setsockopt(zmq.LINGER, 0)
    pipe.connect(PIPE)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(pipe, zmq.POLLIN)
    try:
        while True:
            events = dict(poller.poll())
            if pipe in events:
                for frames in wire.waiting(pipe):
                    if frames == STOP:
                        return
                    sock.send_multipart(frames)
            if sock in events and mailbox.receive(sock):
                pipe.send_multipart(WAKE)
    finally:
        pipe.close()
        sock.close()


def heartbeats(ctx: zmq.Context, endpoint: str, routing_id: bytes, interval: float,
                stop: threading.Event, gpu_memory: Callable[[], int] | None = None) -> None:
    """A thread of its own, so that a worker busy with a long job still shows it is alive;
    a stopped (SIGSTOP) or wedged process falls silent and is replaced."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.connect(endpoint)
    beat = wire.encode(wire.Heartbeat())
    try:
        while True:
            if gpu_memory is not None:  # a GPU worker says what it holds there
                beat = wire.encode(wire.Heartbeat(gpu_memory=gpu_memory()))
            sock.send_multipart(beat)
            if stop.wait(interval):
                return
    finally:
        sock.close(linger=0)
