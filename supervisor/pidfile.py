"""One daemon per state_dir: a pidfile held under an exclusive flock for the daemon's life.

The lock, not the file's existence, says whether a daemon runs: a pidfile left by a daemon
killed with -9 is not locked, so it does not block the next start.
"""

from __future__ import annotations

import fcntl
import os
import time


class AlreadyRunning(Exception):
    def __init__(self, pid: int | None) -> None:
        super().__init__(f"already running (pid {pid if pid else 'unknown'})")
        self.pid = pid


def read_pid(path: str) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def running_pid(path: str) -> int | None:
    """The pid of the daemon holding the pidfile's lock, or None if no daemon holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        # A shared lock is granted unless a daemon holds the exclusive one.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_pid(path) or -1
    finally:
        os.close(fd)  # also drops the shared lock
    return None


class PidFile:
    """The daemon's side: lock, write our pid, and remove on release."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, wait: float = 1.0) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # docbrainctl probes with a brief shared lock; only a daemon holds it long.
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise AlreadyRunning(read_pid(self.path)) from None
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # unlink while still locked: no window for a stale read
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
