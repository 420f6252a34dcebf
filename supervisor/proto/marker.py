"""The instance marker: an environment variable every worker carries.

It names the daemon that spawned the worker by pid, process start time and PID namespace,
so a worker whose daemon is gone (killed with -9, say) can be found with psutil and nothing
else is ever mistaken for one: a process without the variable is never ours, and one whose
daemon still runs belongs to a live instance.

A pid means something only in the PID namespace that wrote it: a daemon in a container and
one on the host see different pids for the same process. So the marker also carries the
namespace's identity (the inode of /proc/self/ns/pid), and a daemon is called gone only
when the marker comes from our own namespace and its pid is absent or was reused. A marker
from another namespace, or one that does not say, is UNKNOWN: never cleaned up on our own
initiative (doctor reports it; `docbrainctl cleanup --pid` ends it on request).
"""

from __future__ import annotations

import enum
import os
import sys
from dataclasses import dataclass

import psutil

MARKER_ENV = "DOCBRAIN_INSTANCE"
SLOT_ENV = "DOCBRAIN_SLOT"
# /proc start times have a resolution of one clock tick; allow for rounding.
_START_TIME_TOLERANCE = 0.5
NO_NAMESPACES = 0  # the namespace of every process on an OS without PID namespaces (macOS)


class DaemonState(enum.Enum):
    ALIVE = "alive"
    GONE = "gone"        # proven: our namespace, and no such pid or a reused one
    UNKNOWN = "unknown"  # another PID namespace, or a marker that does not name one


def pid_namespace(pid: int | str = "self") -> int | None:
    """The identity of a process's PID namespace; None where it cannot be read."""
    if not sys.platform.startswith("linux"):
        return NO_NAMESPACES
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


@dataclass(frozen=True)
class InstanceMarker:
    daemon_pid: int
    daemon_started: float  # psutil create_time() of the daemon
    state_dir: str
    pid_ns: int | None = None  # the daemon's PID namespace; None: not known

    def encode(self) -> str:
        ns = "?" if self.pid_ns is None else str(self.pid_ns)
        return f"{self.daemon_pid}:{self.daemon_started:.2f}:{ns}:{self.state_dir}"

    @classmethod
    def decode(cls, text: str) -> "InstanceMarker | None":
        parts = text.split(":", 3)
        if len(parts) < 3:
            return None
        try:
            pid, started = int(parts[0]), float(parts[1])
        except ValueError:
            return None
        if len(parts) == 4 and (parts[2] == "?" or parts[2].isdigit()):
            ns = None if parts[2] == "?" else int(parts[2])
            return cls(pid, started, parts[3], ns)
        # The marker of an older version, "pid:started:state_dir": no namespace in it.
        return cls(pid, started, ":".join(parts[2:]), None)

    @classmethod
    def for_process(cls, pid: int, state_dir: str) -> "InstanceMarker":
        return cls(pid, round(psutil.Process(pid).create_time(), 2), state_dir,
                   pid_namespace(pid))

    def daemon_state(self, own_ns: int | None = None) -> DaemonState:
        """Whether the daemon that wrote this marker still runs, as far as we can prove it.

        `own_ns` is the caller's PID namespace (read once per scan; looked up when None)."""
        own_ns = pid_namespace() if own_ns is None else own_ns
        if self.pid_ns is None or own_ns is None or self.pid_ns != own_ns:
            return DaemonState.UNKNOWN
        try:
            daemon = psutil.Process(self.daemon_pid)
            started = daemon.create_time()
            if daemon.status() == psutil.STATUS_ZOMBIE:
                return DaemonState.GONE  # killed, not yet reaped by its parent
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return DaemonState.GONE
        except psutil.AccessDenied:
            return DaemonState.ALIVE  # exists, and we cannot tell: leave it alone
        if abs(started - self.daemon_started) < _START_TIME_TOLERANCE:
            return DaemonState.ALIVE
        return DaemonState.GONE
