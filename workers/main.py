"""The worker process: the target that the daemon's spawn context runs.

Everything it needs comes in its `WorkerSpec` argument: a spawned child re-imports modules,
so nothing here may depend on module-level state of the daemon.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass

import zmq

from supervisor import wire
from supervisor.marker import SLOT_ENV
from workers.tasks import import_task_modules

log = logging.getLogger("workers")
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSpec:
    slot: int
    endpoint: str              # the daemon's workers ROUTER
    daemon_pid: int
    tasks: tuple[str, ...]
    heartbeat_interval: float
    heartbeat_liveness: int
    log_level: str = "info"


def _die_with_parent(daemon_pid: int) -> None:
    """Linux: ask the kernel for SIGKILL when the daemon dies (elsewhere, stale cleanup)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != daemon_pid:  # the daemon died before we asked
        os._exit(1)


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, f"{spec.slot}:{os.getpid()}".encode())
        self.sock.connect(spec.endpoint)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.stopping = False

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        # Handlers only make the signal visible on the wake-up fd; the loop acts.
        signal.signal(signal.SIGTERM, lambda *_: None)
        # Ctrl-C and a closed terminal reach the whole process group: the daemon decides.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def send(self, message: wire.Message) -> None:
        self.sock.send_multipart(wire.encode(message))

    def run(self) -> int:
        self._install_signals()
        spec = self.spec
        self.send(wire.Loading(slot=spec.slot, pid=os.getpid()))
        names = import_task_modules(spec.tasks)
        self.send(wire.Ready(tasks=names))
        log.info("ready with tasks: %s", ", ".join(names) or "(none)")
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        silence_limit = spec.heartbeat_interval * spec.heartbeat_liveness
        heard = next_beat = time.monotonic()
        while not self.stopping:
            now = time.monotonic()
            if now >= next_beat:
                self.send(wire.Heartbeat())
                next_beat = now + spec.heartbeat_interval
            if now - heard > silence_limit:
                log.error("daemon silent for %.1f s; exiting", now - heard)
                return 1
            events = dict(poller.poll(max(0.0, next_beat - now) * 1000))
            if self._wake_r.fileno() in events:  # plain fds come back as ints
                self._read_signals()
            if self.sock in events:
                heard = time.monotonic()
                self._drain()
        return 0

    def _read_signals(self) -> None:
        try:
            data = self._wake_r.recv(256)
        except BlockingIOError:
            return
        if signal.SIGTERM in data:
            log.info("SIGTERM: stopping")
            self.stopping = True

    def _drain(self) -> None:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                wire.decode(frames)
            except wire.ProtocolError as exc:
                log.warning("dropped a malformed frame from the daemon: %s", exc)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def run(spec: WorkerSpec) -> None:
    """Process target: never returns normally; the exit code tells the daemon how it went."""
    _die_with_parent(spec.daemon_pid)
    os.environ[SLOT_ENV] = str(spec.slot)
    logging.basicConfig(
        level=spec.log_level.upper(), stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s")
    worker = Worker(spec)
    try:
        code = worker.run()
    finally:
        worker.close()
    sys.stderr.flush()
    sys.exit(code)
