"""The daemon: start-up in the seed script's order, then one poll loop until stopped.

Start order: (1) kill stale workers, (2) set the environment guards, (3) preload models,
(4) launch workers. The loop polls the control socket, the workers socket, the workers'
stderr pipes and a signal wake-up fd together; signal handlers do nothing but make the
signal readable on that fd, and the loop dispatches it to a ``_on_<name>`` method.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from typing import Any

import zmq

from supervisor import __version__, envguard, stale, wire
from supervisor.broker import Broker
from supervisor.control import ControlServer, RequestError
from supervisor.lifecycle import Event
from supervisor.journal import STATES
from supervisor.logs import DaemonLog
from supervisor.marker import MARKER_ENV, InstanceMarker
from supervisor.models import ModelLoadError, preload
from supervisor.paths import StatePaths
from supervisor.pidfile import AlreadyRunning, PidFile
from supervisor.pool import WorkerPool, WorkerSlot
from supervisor.settings import Config
from supervisor.spawner import Spawner, start_helpers

log = logging.getLogger(__name__)
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                   signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)
MAX_POLL_WAIT = 1.0  # seconds; deadlines are usually nearer
REAP_EVERY = 0.5     # seconds between reaps that no SIGCHLD asked for
MAX_LIST = 100_000   # most jobs one `jobs` request lists


class Daemon:
    def __init__(self, config: Config, log_to_stderr: bool = True) -> None:
        self.config = config
        self.paths = StatePaths.for_state_dir(config.supervisor.state_dir)
        self.log_to_stderr = log_to_stderr
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.state = "starting"
        self.guards: dict[str, str] = {}
        self.frames_dropped = 0
        self._next_reap = 0.0

    # -- start-up ------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; the process's exit code."""
        self.paths.create()
        pidfile = PidFile(self.paths.pidfile)
        try:
            pidfile.acquire()
        except AlreadyRunning as exc:
            print(f"docbrainctl: {exc}", file=sys.stderr)
            return 1
        self.log = DaemonLog(self.paths.log_file, self.config.supervisor.log_level,
                             self.log_to_stderr)
        try:
            log.info("docbrain supervisor %s starting (pid %d, state_dir %s, config %s)",
                     __version__, self.pid, self.paths.state_dir, self.config.path or "defaults")
            return self._serve()
        except Exception:
            log.exception("daemon failed")
            return 1
        finally:
            self._cleanup()
            pidfile.release()
            log.info("stopped")
            self.log.close()

    def _serve(self) -> int:
        start_helpers()
        found = stale.kill_stale()                                   # (1)
        if found:
            log.warning("cleaned up %d stale worker(s)", len(found))
        self.guards = envguard.guards(self.config)                   # (2)
        envguard.apply(self.guards)
        marker = InstanceMarker.for_process(self.pid, self.paths.state_dir)
        os.environ[MARKER_ENV] = marker.encode()
        log.info("environment guards: %s",
                 " ".join(f"{k}={v!r}" for k, v in sorted(self.guards.items())))
        try:
            self.models = preload(self.config.models)                # (3)
        except ModelLoadError as exc:
            log.error("startup failed: %s", exc)
            return 1
        self._open_sockets()
        self.pool = WorkerPool(self.config, self.paths.endpoint("workers"), self.pid,
                               Spawner(), self._send_to_worker, self.broker, self.models)
        self.pool.start_all(time.monotonic())                        # (4)
        self.state = "running"
        self._loop()
        return 0

    def _open_sockets(self) -> None:
        self.ctx = zmq.Context()
        self.control = ControlServer(self.ctx, self.paths.endpoint("control"), {
            "ping": lambda _args: {"pid": self.pid},
            "status": self._status,
            "stop": self._stop_request,
            "jobs": self._jobs_request,
            "job": self._job_request,
        })
        self.broker = Broker(self.config, self.ctx, self.paths.endpoint("queue"),
                             self.paths.journal)
        self.workers_sock = self.ctx.socket(zmq.ROUTER)
        self.workers_sock.setsockopt(zmq.LINGER, 0)
        self.workers_sock.bind(self.paths.endpoint("workers"))
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, lambda *_: None)

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        poller = zmq.Poller()
        for watched in (self.control.sock, self.broker.sock, self.workers_sock,
                        self._wake_r.fileno()):
            poller.register(watched, zmq.POLLIN)
        pipes: set[int] = set()
        while not (self.state == "stopping" and self.pool.all_exited()):
            fds = self.pool.stderr_fds()
            for fd in pipes - fds.keys():
                poller.unregister(fd)
            for fd in fds.keys() - pipes:
                poller.register(fd, zmq.POLLIN)
            pipes = set(fds)
            wait = min(MAX_POLL_WAIT, max(0.0, self.pool.next_deadline() - time.monotonic()))
            events = dict(poller.poll(int(wait * 1000)))
            if self._wake_r.fileno() in events:  # plain fds come back as ints
                self._read_signals()
            if self.control.sock in events:
                self.control.drain()
            if self.broker.sock in events:
                self.broker.drain()
            now = time.monotonic()
            # Pipes before results: a worker says "starting" on its pipe before it runs.
            for fd, proc in fds.items():
                if fd in events:
                    self.pool.read_stderr(proc, now)
            if self.workers_sock in events:
                self._drain_workers()
            if now >= self._next_reap:  # SIGCHLD reaps at once; this is the safety net
                self._next_reap = now + REAP_EVERY
                self.pool.reap(now)
            for index, reason in self.broker.overdue(now):
                self.pool.apply(self.pool.slots[index], Event.KILL, now, reason)
            self.pool.tick(now)
            self.broker.flush()  # one commit, then acknowledgements and results
            for index in self.broker.dispatch(self.pool.serving(), now, self._send_to_worker):
                self.pool.apply(self.pool.slots[index], Event.JOB_STARTED, now)

    def _drain_workers(self) -> None:
        now = time.monotonic()
        spoke: dict[int, WorkerSlot] = {}
        for frames in wire.waiting(self.workers_sock):
            try:
                message = wire.decode(frames[1:])
            except wire.ProtocolError as exc:
                self.frames_dropped += 1
                log.debug("workers: dropped a malformed frame: %s", exc)
                continue
            if self.pool.on_standby_message(frames[0], message):
                continue
            slot = self.pool.slot_for(frames[0])
            if slot is None:
                continue
            if isinstance(message, wire.Result):
                spoke[slot.index] = slot
                if self.broker.on_results(slot.index, message, now):
                    self.pool.apply(slot, Event.JOB_IDLE, now)
            else:
                self.pool.on_message(slot, message, now)
        for slot in spoke.values():  # a result is a sign of life; one event per pass will do
            self.pool.apply(slot, Event.HEARTBEAT, now)

    def _send_to_worker(self, routing_id: bytes, message: wire.Message) -> None:
        try:
            self.workers_sock.send_multipart([routing_id, *wire.encode(message)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("workers: not sent to %r: %s", routing_id, exc)

    # -- signals -------------------------------------------------------------------------

    def _read_signals(self) -> None:
        try:
            data = self._wake_r.recv(512)
        except BlockingIOError:
            return
        for signum in data:
            name = signal.Signals(signum).name.lower()
            getattr(self, f"_on_{name}", self._on_unhandled)(signum)

    def _on_sigterm(self, signum: int) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        self._begin_stop()

    _on_sigint = _on_sigterm

    def _on_sigchld(self, _signum: int) -> None:
        self.pool.reap(time.monotonic())

    def _on_sigusr1(self, _signum: int) -> None:
        self.log.reopen()
        log.info("SIGUSR1: log file reopened")

    def _on_unhandled(self, signum: int) -> None:
        # SIGHUP (reload) and SIGTTIN/SIGTTOU (scale) are not supported by this version;
        # they are caught so that they cannot kill the daemon with their default action.
        log.warning("%s ignored: not supported by this version", signal.Signals(signum).name)

    # -- control requests ----------------------------------------------------------------

    def _begin_stop(self, timeout: float | None = None) -> None:
        if self.state != "stopping":
            self.state = "stopping"
            self.pool.stop_all(time.monotonic(), timeout)

    def _stop_request(self, args: dict[str, Any]) -> dict[str, Any]:
        timeout = args.get("timeout")
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise RequestError(f"stop: timeout must be a positive number, got {timeout!r}")
        self._begin_stop(None if timeout is None else float(timeout))
        return {"pid": self.pid}

    def _jobs_request(self, args: dict[str, Any]) -> dict[str, Any]:
        state, limit = args.get("state"), args.get("limit", 100)
        if state is not None and state not in STATES:
            raise RequestError(f"jobs: state must be one of {', '.join(STATES)}, got {state!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
            raise RequestError(f"jobs: limit must be an integer from 1 to {MAX_LIST}, "
                               f"got {limit!r}")
        return {"jobs": self.broker.recent(state, limit)}

    def _job_request(self, args: dict[str, Any]) -> dict[str, Any]:
        job_id = args.get("id")
        info = self.broker.job_info(job_id) if isinstance(job_id, str) else None
        if info is None:
            raise RequestError(f"no such job: {job_id}")
        return {"job": info}

    def _status(self, _args: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        workers = self.pool.status(now)
        for row in workers:
            current = self.broker.queue.current(row["slot"])
            row["jobs_done"] = self.broker.jobs_done.get(row["slot"], 0)
            row["current_job"] = current.id if current else None
        return {
            "supervisor": {
                "pid": self.pid,
                "state": self.state,
                "uptime_s": round(now - self.started, 3),
                "version": __version__,
                "state_dir": self.paths.state_dir,
                "config": self.config.path,
                "log_file": self.paths.log_file,
                "frames_dropped": self.frames_dropped + self.control.dropped
                + self.pool.foreign_messages + self.broker.dropped,
                "standby": self.pool.standby_status(),
            },
            "queue": self.broker.status(),
            "workers": workers,
            "env": self.guards,
        }

    # -- shutdown ------------------------------------------------------------------------

    def _cleanup(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None and not pool.all_exited():
            pool.kill_all()
        if hasattr(self, "ctx"):
            signal.set_wakeup_fd(-1)
            self.control.close()
            self.broker.close()
            self.workers_sock.close(linger=0)
            self.ctx.term()
            self._wake_r.close()
            self._wake_w.close()
        for path in self.paths.socket_files():
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
