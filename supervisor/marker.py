"""The instance marker: an environment variable every worker carries.

It names the daemon that spawned the worker by pid and process start time, so a worker
whose daemon is gone (killed with -9, say) can be found with psutil and nothing else is
ever mistaken for one: a process without the variable is never ours, and one whose daemon
still runs belongs to a live instance.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

MARKER_ENV = "DOCBRAIN_INSTANCE"
SLOT_ENV = "DOCBRAIN_SLOT"
# /proc start times have a resolution of one clock tick; allow for rounding.
_START_TIME_TOLERANCE = 0.5


@dataclass(frozen=True)
class InstanceMarker:
    daemon_pid: int
    daemon_started: float  # psutil create_time() of the daemon
    state_dir: str

    def encode(self) -> str:
        return f"{self.daemon_pid}:{self.daemon_started:.2f}:{self.state_dir}"

    @classmethod
    def decode(cls, text: str) -> "InstanceMarker | None":
        parts = text.split(":", 2)
        if len(parts) != 3:
            return None
        try:
            return cls(int(parts[0]), float(parts[1]), parts[2])
        except ValueError:
            return None

    @classmethod
    def for_process(cls, pid: int, state_dir: str) -> "InstanceMarker":
        return cls(pid, round(psutil.Process(pid).create_time(), 2), state_dir)

    def daemon_alive(self) -> bool:
        """True while the process that wrote this marker still runs (not a reused pid)."""
        try:
            daemon = psutil.Process(self.daemon_pid)
            started = daemon.create_time()
            if daemon.status() == psutil.STATUS_ZOMBIE:
                return False  # killed, not yet reaped by its parent
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return False
        except psutil.AccessDenied:
            return True  # exists, and we cannot tell: leave it alone
        return abs(started - self.daemon_started) < _START_TIME_TOLERANCE
