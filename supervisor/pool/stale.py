"""Stale workers: processes carrying the instance marker of a daemon that is gone.

Found with psutil by the marker in their environment, never by name; a process without
the marker, or with the marker of a daemon that still runs, is never touched. Only our own
user's processes are considered.

A worker is stale only when we can prove its daemon is gone (supervisor.proto.marker: the same
PID namespace, and its pid absent or reused). At start a daemon cleans the stale workers of
its own state_dir and no others: that is the one instance it is sure to own, and another
state_dir's orphans are reported (doctor, the log) and left to `docbrainctl cleanup --all`
or that instance's next start. A marker from another PID namespace (a daemon in a
container, seen from the host) proves nothing either way: it is left alone and reported.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from supervisor.proto.marker import MARKER_ENV, DaemonState, InstanceMarker, pid_namespace
from supervisor.proto.proctitle import trimmed

log = logging.getLogger("supervisor.pool")


@dataclass(frozen=True)
class MarkedProcess:
    process: psutil.Process
    marker: InstanceMarker
    cmdline: str
    daemon: DaemonState  # of the daemon its marker names

    @property
    def pid(self) -> int:
        return self.process.pid

    def of_state_dir(self, state_dir: str) -> bool:
        return _same_dir(self.marker.state_dir, state_dir)


@dataclass(frozen=True)
class Survey:
    """Every marked process of ours but the daemons themselves, by what we can prove."""
    processes: tuple[MarkedProcess, ...]

    def stale(self, state_dir: str | None = None) -> list[MarkedProcess]:
        """Those whose daemon is proven gone: of `state_dir`, or of any when None."""
        return [p for p in self.processes if p.daemon is DaemonState.GONE
                and (state_dir is None or p.of_state_dir(state_dir))]

    def unknown(self) -> list[MarkedProcess]:
        """Those whose daemon we cannot see: another PID namespace, or no namespace named."""
        return [p for p in self.processes if p.daemon is DaemonState.UNKNOWN]

    def live_daemons(self) -> dict[int, str]:
        """pid -> state_dir of the live daemons (in our namespace) that the markers name."""
        return {p.marker.daemon_pid: p.marker.state_dir for p in self.processes
                if p.daemon is DaemonState.ALIVE}


def _same_dir(a: str, b: str) -> bool:
    return a == b or os.path.realpath(a) == os.path.realpath(b)


def _marker_of(proc: psutil.Process) -> InstanceMarker | None:
    try:
        value = proc.environ().get(MARKER_ENV)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return None
    return InstanceMarker.decode(value) if value else None


def marked_processes() -> list[tuple[psutil.Process, InstanceMarker]]:
    """Every process of ours that carries a marker, whatever its instance."""
    uid = os.getuid()
    found = []
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info.get("uids")
        if proc.pid == os.getpid() or uids is None or uids.real != uid:
            continue
        marker = _marker_of(proc)
        if marker is not None:
            found.append((proc, marker))
    return found


def survey() -> Survey:
    own_ns = pid_namespace()
    states: dict[InstanceMarker, DaemonState] = {}
    found = []
    for proc, marker in marked_processes():
        if proc.pid == marker.daemon_pid and marker.pid_ns == own_ns:
            continue  # a daemon carries its own marker
        if marker not in states:
            states[marker] = marker.daemon_state(own_ns)
        try:
            cmdline = " ".join(trimmed(proc.cmdline()))  # a worker's title, if it set one
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        found.append(MarkedProcess(proc, marker, cmdline, states[marker]))
    return Survey(tuple(found))


def clean_at_start(state_dir: str, timeout: float = 5.0) -> list[MarkedProcess]:
    """The start-up cleanup: end this state_dir's stale workers; log the rest we leave."""
    found = survey()
    stale = found.stale(state_dir)
    others = [p for p in found.stale() if p not in stale]
    if others:
        log.warning("left alone: %d orphaned worker(s) of other state_dirs (%s), pid %s; "
                    "`docbrainctl cleanup --all` ends them",
                    len(others), ", ".join(sorted({p.marker.state_dir for p in others})),
                    " ".join(str(p.pid) for p in others))
    for item in found.unknown():
        where = ("whose marker names no PID namespace" if item.marker.pid_ns is None
                 else "in another PID namespace")
        log.warning("left alone: worker pid %d of daemon %d %s (state_dir %s), which cannot "
                    "be seen from here; if that daemon is gone, `docbrainctl cleanup --pid %d` "
                    "ends it", item.pid, item.marker.daemon_pid, where, item.marker.state_dir,
                    item.pid)
    return terminate(stale, timeout)


def terminate(items: Iterable[MarkedProcess], timeout: float = 5.0) -> list[MarkedProcess]:
    """SIGTERM each, wait, then SIGKILL what is left; each step logged with its pid."""
    items = list(items)
    for item in items:
        proven = item.daemon is DaemonState.GONE
        log.warning("%s pid %d of %sdaemon %d (%s): SIGTERM; cmdline: %s",
                    "stale worker" if proven else "worker", item.pid,
                    "dead " if proven else "", item.marker.daemon_pid, item.marker.state_dir,
                    item.cmdline)
        try:
            item.process.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    left = _wait_gone([s.process for s in items], timeout)
    for proc in left:
        log.warning("stale worker pid %d survived SIGTERM for %.1f s: SIGKILL", proc.pid,
                    timeout)
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    _wait_gone(left, timeout)
    return items


def _gone(proc: psutil.Process) -> bool:
    try:
        # An orphan's zombie waits for its new parent to reap it; it is dead all the same.
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has died; returns those still alive after `timeout`."""
    deadline = time.monotonic() + timeout
    left = [p for p in procs if not _gone(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if not _gone(p)]
    return left
