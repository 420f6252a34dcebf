"""Stale workers: processes carrying the instance marker of a daemon that is gone.

Found with psutil by the marker in their environment, never by name; a process without
the marker, or with the marker of a daemon that still runs, is never touched. Only our own
user's processes are considered.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass

import psutil

from supervisor.marker import MARKER_ENV, InstanceMarker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StaleProcess:
    process: psutil.Process
    marker: InstanceMarker
    cmdline: str


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


def find_stale() -> list[StaleProcess]:
    """Marked processes whose daemon is gone (the marked daemon itself excluded)."""
    alive: dict[InstanceMarker, bool] = {}
    stale = []
    for proc, marker in marked_processes():
        if proc.pid == marker.daemon_pid:
            continue
        if marker not in alive:
            alive[marker] = marker.daemon_alive()
        if alive[marker]:
            continue
        try:
            cmdline = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        stale.append(StaleProcess(proc, marker, cmdline))
    return stale


def kill_stale(timeout: float = 5.0) -> list[StaleProcess]:
    """SIGTERM every stale worker, wait, then SIGKILL what is left. Returns what was found."""
    stale = find_stale()
    for item in stale:
        log.warning("stale worker pid %d of dead daemon %d (%s): SIGTERM; cmdline: %s",
                    item.process.pid, item.marker.daemon_pid, item.marker.state_dir,
                    item.cmdline)
        try:
            item.process.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    left = _wait_gone([s.process for s in stale], timeout)
    for proc in left:
        log.warning("stale worker pid %d survived SIGTERM for %.1f s: SIGKILL", proc.pid, timeout)
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    _wait_gone(left, timeout)
    return stale


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
