"""Stale workers: processes carrying the instance marker of a daemon that is gone.

Found with psutil by the marker in their environment, never by name; a process without
the marker, or with the marker of a daemon that still runs, is never touched. Only our own
user's processes are considered.
"""

from __future__ import annotations

import logging
import os
import signal
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
    _, left = psutil.wait_procs([s.process for s in stale], timeout=timeout)
    for proc in left:
        log.warning("stale worker pid %d survived SIGTERM for %.1f s: SIGKILL", proc.pid, timeout)
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=timeout)
    return stale
