"""One daemon per state_dir: a pidfile held under an exclusive flock for the daemon's life.

The lock, not the file's existence, says whether a daemon runs: a pidfile left by a daemon
killed with -9 is not locked, so it does not block the next start.

The file holds the daemon's pid and, on a second line, its PID namespace: a daemon in a
container writes a pid of its own namespace, which names another process (or none) on the
host, so a reader from elsewhere must not wait on it or signal it.
"""

from __future__ import annotations

import fcntl
import os
import time

from supervisor.proto.marker import pid_namespace


class AlreadyRunning(Exception):
    def __init__(self, pid: int | None) -> None:
        super().__init__(f"already running (pid {pid if pid else 'unknown'})")
        self.pid = pid


def _words(path: str) -> list[str]:
    try:
        with open(path) as fh:
            return fh.read().split()
    except OSError:
        return []


def read_pid(path: str) -> int | None:
    try:
        return int((_words(path) or ["0"])[0]) or None
    except ValueError:
        return None


def pid_is_ours(path: str) -> bool:
    """False when the pidfile's pid belongs to another PID namespace than ours (a file of
    an older version, which names none, is taken to be ours)."""
    words = _words(path)
    return len(words) < 2 or not words[1].isdigit() or int(words[1]) == pid_namespace()


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
        ns = pid_namespace()
        os.write(fd, f"{os.getpid()}\n{'' if ns is None else ns}\n".encode())
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
