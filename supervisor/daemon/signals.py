"""The daemon's signals: each handled one is written to a socket that the loop polls
(signal.set_wakeup_fd), and acted on there, between passes, never inside a handler.

    SIGTERM, SIGINT   stop          SIGHUP    reload the configuration
    SIGUSR1           reopen the log file (after rotation)
    SIGTTIN, SIGTTOU  one worker more, one fewer (as gunicorn)
    SIGCHLD           reap the workers that exited
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from typing import Protocol

from supervisor.conf.settings import MAX_WORKERS
from supervisor.daemon.logs import DaemonLog
from supervisor.daemon.reload import Reloader, ReloadError
from supervisor.pool.pool import WorkerPool

log = logging.getLogger("supervisor.daemon")
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                   signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)


class SignalHost(Protocol):
    """What the signals act on: the daemon (supervisor.daemon.daemon.Daemon) passes
    itself."""

    pool: WorkerPool
    reloader: Reloader
    log: DaemonLog

    def begin_stop(self, timeout: float | None = None) -> None: ...

    def scale(self, count: int, why: str) -> None: ...


class Signals:
    def __init__(self, host: SignalHost) -> None:
        self.host = host
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, lambda *_: None)

    def fileno(self) -> int:
        """The fd to poll: readable when a signal came."""
        return self._read.fileno()

    def handle(self) -> None:
        """Act on the signals that came since the last call, in order."""
        try:
            data = self._read.recv(512)
        except BlockingIOError:
            return
        for signum in data:
            name = signal.Signals(signum).name.lower()
            getattr(self, f"_on_{name}", self._on_unhandled)(signum)

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self._read.close()
        self._write.close()

    def _on_sigterm(self, signum: int) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        self.host.begin_stop()

    _on_sigint = _on_sigterm

    def _on_sigchld(self, _signum: int) -> None:
        self.host.pool.reap(time.monotonic())

    def _on_sigusr1(self, _signum: int) -> None:
        self.host.log.reopen()
        log.info("SIGUSR1: log file reopened")

    def _on_sighup(self, _signum: int) -> None:
        try:
            self.host.reloader.request("SIGHUP")
        except ReloadError:
            pass  # logged; the configuration in force stays

    def _on_sigttin(self, _signum: int) -> None:
        target = self.host.pool.target
        if target >= MAX_WORKERS:
            log.warning("SIGTTIN ignored: %d workers is the most", MAX_WORKERS)
            return
        self.host.scale(target + 1, "SIGTTIN")

    def _on_sigttou(self, _signum: int) -> None:
        target = self.host.pool.target
        if target <= 1:
            log.warning("SIGTTOU ignored: one worker is the fewest")
            return
        self.host.scale(target - 1, "SIGTTOU")

    def _on_unhandled(self, signum: int) -> None:
        log.warning("%s ignored", signal.Signals(signum).name)
