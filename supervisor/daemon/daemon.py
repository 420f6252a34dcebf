"""The daemon: start-up in the seed script's order, then one poll loop until stopped.

Start order: (1) kill stale workers, (2) set the environment guards, (3) preload models,
(4) launch workers. The loop polls the control socket, the workers socket, the workers'
stderr pipes and a signal wake-up fd together; signal handlers do nothing but make the
signal readable on that fd, and the loop dispatches it to a ``_on_<name>`` method.
Each pass also moves a reload on (supervisor.daemon.reload) and, once a second, tells the service
manager (supervisor.service.notify) and the metrics how things stand.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import zmq

from supervisor import __version__
from supervisor.conf import envguard
from supervisor.conf.settings import Config, MetricsSettings
from supervisor.daemon.logs import DaemonLog
from supervisor.daemon.metrics import Metrics, MetricsError
from supervisor.daemon.models import ModelLoadError, preload
from supervisor.daemon.reload import Reloader
from supervisor.daemon.report import Reporter
from supervisor.daemon.signals import Signals
from supervisor.daemon.requests import ControlRequests
from supervisor.jobs.broker import Broker
from supervisor.jobs.store import StoreError
from supervisor.pool import gpus, stale
from supervisor.pool.gpus import DeviceError
from supervisor.pool.lifecycle import SERVING_STATES, Event
from supervisor.pool.pool import WorkerPool
from supervisor.pool.slot import WorkerSlot
from supervisor.pool.spawner import Spawner, start_helpers
from supervisor.proto import proctitle, wire
from supervisor.proto.control import ControlServer
from supervisor.proto.marker import MARKER_ENV, InstanceMarker
from supervisor.proto.paths import StatePaths
from supervisor.proto.pidfile import AlreadyRunning, PidFile
from supervisor.service.notify import Notifier

log = logging.getLogger("supervisor.daemon")
MAX_POLL_WAIT = 1.0  # seconds; deadlines are usually nearer
REAP_EVERY = 0.5     # seconds between reaps that no SIGCHLD asked for


class Daemon:
    # Made as it starts (run), once the guards are set and the models loaded.
    log: DaemonLog
    control: ControlServer
    broker: Broker
    pool: WorkerPool
    signals: Signals

    def __init__(self, config: Config, log_to_stderr: bool = True,
                 overrides: dict[str, Any] | None = None) -> None:
        self.config = config
        # Read (and removed from the environment, so workers do not inherit it) first.
        self.notifier = Notifier()
        self.reloader = Reloader(self, dict(os.environ), dict(overrides or {}))
        # What reaches NATS (credentials among it) is the daemon's: no worker inherits it.
        for name in [n for n in os.environ if n.startswith("DOCBRAIN_QUEUE_NATS_")]:
            del os.environ[name]
        self.metrics: Metrics | None = None
        self.models: dict[str, Any] = {}
        self.ready_sent = False
        self.reporter = Reporter(self)
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
        # Named once it is the daemon: `docbrain: supervisor (STATE_DIR)` in ps and top.
        proctitle.set_title(proctitle.supervisor_title(self.paths.state_dir))
        try:
            log.info("docbrain supervisor %s starting (pid %d, state_dir %s, config %s)",
                     __version__, self.pid, self.paths.state_dir, self.config.path or "defaults")
            return self._serve()
        except Exception:
            log.exception("daemon failed")
            return 1
        finally:
            if self.state != "stopping":  # failed: systemd is told we go all the same
                self.notifier.stopping()
            self._cleanup()
            pidfile.release()
            log.info("stopped")
            self.log.close()

    def _serve(self) -> int:
        start_helpers()
        found = stale.clean_at_start(self.paths.state_dir)           # (1)
        if found:
            log.warning("cleaned up %d stale worker(s)", len(found))
        self.guards = envguard.guards(self.config)                   # (2)
        envguard.apply(self.guards)
        marker = InstanceMarker.for_process(self.pid, self.paths.state_dir)
        os.environ[MARKER_ENV] = marker.encode()
        log.info("environment guards: %s",
                 " ".join(f"{k}={v!r}" for k, v in sorted(self.guards.items())))
        try:
            self._serve_metrics(self.config.metrics)
            placement = gpus.plan(self.config.models, self.config.workers.gpus, os.environ)
            self.spawner = Spawner(self.paths.state_dir)
            models = self.config.models.values()
            if models and all(m.runtime == "torch" for m in models) and not placement.gpus:
                # Workers of the torch form need only torch: they import it meanwhile.
                self.spawner.prestart(self.config.workers.count, self.pid)
            self.models = preload(self.config.models, self.config.module_path())  # (3)
            self._open_sockets()
        except (MetricsError, DeviceError, ModelLoadError, StoreError) as exc:
            log.error("startup failed: %s", exc)
            return 1
        self.pool = WorkerPool(self.config, self.paths.endpoint("workers"), self.pid,
                               self.spawner, self._send_to_worker,
                               self.broker, self.models)
        self.pool.placement = placement
        self._hook_metrics()
        self.pool.start_all(time.monotonic())                        # (4)
        self.state = "running"
        self._loop()
        return 0

    def _serve_metrics(self, settings: MetricsSettings) -> None:
        if settings.port:
            metrics = Metrics(started=self.started)
            metrics.start(settings.address, settings.port)
            self.metrics = metrics
            log.info("metrics on http://%s:%d/metrics", settings.address, metrics.port)

    def _open_sockets(self) -> None:
        self.ctx = zmq.Context()
        self.control = ControlServer(self.ctx, self.paths.endpoint("control"),
                                     ControlRequests(self).handlers())
        self.broker = Broker(self.config, self.ctx, self.paths.endpoint("queue"),
                             self.paths.journal)
        self.workers_sock = self.ctx.socket(zmq.ROUTER)
        self.workers_sock.setsockopt(zmq.LINGER, 0)
        self.workers_sock.bind(self.paths.endpoint("workers"))
        self.signals = Signals(self)

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        poller = zmq.Poller()
        store_fd = self.broker.store.wakeup_fd()  # a shared store: jobs pulled for us
        for watched in (self.control.sock, self.broker.sock, self.workers_sock,
                        self.signals.fileno(), store_fd):
            if watched is not None:
                poller.register(watched, zmq.POLLIN)
        pipes: set[int] = set()
        while not (self.state == "stopping" and self.pool.all_exited()):
            fds = self.pool.stderr_fds()
            for fd in pipes - fds.keys():
                poller.unregister(fd)
            for fd in fds.keys() - pipes:
                poller.register(fd, zmq.POLLIN)
            pipes = set(fds)
            deadlines = [self.pool.next_deadline(), self.notifier.next_deadline()]
            retry_due = self.broker.next_due()  # wall clock, as stored
            if retry_due is not None:
                deadlines.append(time.monotonic() + max(0.0, retry_due - time.time()))
            deadline = min(d for d in deadlines if d is not None)
            # Models of a reload load in a thread; look for the end of it often.
            cap = 0.05 if self.reloader.state == "loading" else MAX_POLL_WAIT
            wait = min(cap, max(0.0, deadline - time.monotonic()))
            events = dict(poller.poll(int(wait * 1000)))
            if self.signals.fileno() in events:  # plain fds come back as ints
                self.signals.handle()
            if self.control.sock in events:
                self.control.drain()
            if self.broker.sock in events:
                self.broker.drain()
            if store_fd is not None and store_fd in events:
                self.broker.store.woken()
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
            self.reloader.poll(now)
            self.reporter.tell(now)
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
            elif isinstance(message, wire.Revoked):
                if self.broker.on_revoked(slot.index, message):
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

    # -- control requests ----------------------------------------------------------------

    def begin_stop(self, timeout: float | None = None) -> None:
        if self.state != "stopping":
            self.state = "stopping"
            self.notifier.stopping()
            self.pool.stop_all(time.monotonic(), timeout)

    def scale(self, count: int, why: str) -> None:
        if self.state != "running":
            return
        log.info("%s: %d -> %d workers", why, self.pool.target, count)
        self.pool.resize(count, time.monotonic())

    # -- the service manager and metrics --------------------------------------------------

    def switch_metrics(self, settings: MetricsSettings) -> None:
        """Serve metrics as a reload asks (counters start again from zero, which Prometheus
        reads as a reset); raises MetricsError with the old server back in place."""
        old, self.metrics = self.metrics, None
        if old is not None:
            old.stop()
        try:
            self._serve_metrics(settings)
        except MetricsError:
            self._serve_metrics(self.config.metrics)  # as if nothing was asked
            raise
        finally:
            self._hook_metrics()

    def _hook_metrics(self) -> None:
        """Restarts and finished jobs are counted as they happen, by the current server."""
        self.pool.on_restart = self.metrics.restarted if self.metrics else None
        self.broker.on_finished = self.metrics.job_finished if self.metrics else None

    def status_line(self) -> str:
        serving = sum(1 for s in self.pool.slots[:self.pool.target]
                      if s.state.state in SERVING_STATES)
        queue = self.broker.status()
        return (f"{serving}/{self.pool.target} workers ready, {queue['pending']} jobs queued, "
                f"{queue['running']} running")

    # -- shutdown ------------------------------------------------------------------------

    def _cleanup(self) -> None:
        self.reloader.close()
        if self.metrics is not None:
            self.metrics.stop()
        self.notifier.close()
        spawner = getattr(self, "spawner", None)
        if spawner is not None:
            spawner.discard_prestarted()
        pool = getattr(self, "pool", None)
        if pool is not None and not pool.all_exited():
            pool.kill_all()
        if hasattr(self, "ctx"):
            self.signals.close()
            self.control.close()
            self.broker.close()
            self.workers_sock.close(linger=0)
            self.ctx.term()
        for path in self.paths.socket_files():
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
