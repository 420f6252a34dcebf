"""Where the daemon keeps its files: the layout of state_dir.

    state_dir/            0700
      docbrain.pid        flock'd by the running daemon
      journal.sqlite3     the job journal (WAL)
      logs/docbrain.log   daemon log, with every worker's stderr
      run/                0700: control.sock, queue.sock, workers.sock

A Unix socket path is limited to about 100 bytes. When state_dir/run is too deep for that,
the sockets go to a short private directory derived from state_dir (the same for the
daemon and for docbrainctl, so nothing has to be recorded), owned by us and 0700.

`StatePaths.check` is the one place that decides whether state_dir can be used at all; every
docbrainctl command calls it before it touches a file, so a bad state_dir is one line for
each of them, never an OSError from deep inside one.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass

# sun_path is 108 bytes on Linux and 104 on macOS, including the terminating NUL.
MAX_SOCKET_PATH = 100
_LONGEST_SOCKET_NAME = "workers.sock"


def _path_limit(name: str, default: int) -> int:
    try:
        return os.pathconf("/", name)
    except (OSError, ValueError):
        return default


# Including the terminating NUL: 4096 on Linux, 1024 on macOS.
PATH_MAX = _path_limit("PC_PATH_MAX", 4096)
NAME_MAX = _path_limit("PC_NAME_MAX", 255)


class StateDirError(Exception):
    """state_dir (or the socket directory) cannot be used; the message is for the user."""


def _shown(path: str, limit: int = 100) -> str:
    """A path for a one-line message: a very long one by its two ends."""
    return path if len(path) <= limit else f"{path[:limit // 2]}...{path[-limit // 2:]}"


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_dir(what: str, path: str, files: list[str], writable: bool = True) -> None:
    """Refuse a directory that cannot be used or created, without creating anything.

    `files` are the longest paths that will be made in it. "Writable" is what access(2)
    says for our effective uid: for root, only a read-only file system is not.
    """
    where = f"{what} {_shown(path)}"
    longest = max(len(os.fsencode(f)) for f in [path, *files])
    if longest >= PATH_MAX:
        raise StateDirError(f"{where}: path too long: {longest} bytes with the files in it, "
                            f"the limit is {PATH_MAX - 1}")
    for part in path.split(os.sep):
        if len(os.fsencode(part)) > NAME_MAX:
            raise StateDirError(f"{where}: name too long: {_shown(part, 40)} is "
                                f"{len(os.fsencode(part))} bytes, the limit is {NAME_MAX}")
    # The nearest part of the path that exists decides: a directory we may write into,
    # or what stands in the way.
    current = path
    while True:
        try:
            info = os.stat(current)
            break
        except (FileNotFoundError, NotADirectoryError):
            if os.path.islink(current):
                subject = "" if current == path else f"{current} "
                raise StateDirError(f"{where}: {subject}is a dangling symlink "
                                    f"(to {_shown(os.readlink(current), 60)})") from None
            current = os.path.dirname(current)
        except OSError as exc:
            raise StateDirError(f"{where}: cannot be used: {exc.strerror}") from None
    subject = "" if current == path else f"{current} "
    if not stat.S_ISDIR(info.st_mode):
        kind = "a file, not a directory" if stat.S_ISREG(info.st_mode) else "not a directory"
        raise StateDirError(f"{where}: {subject}is {kind}")
    effective = os.access in os.supports_effective_ids
    if writable and not os.access(current, os.W_OK | os.X_OK, effective_ids=effective):
        why = ("is on a read-only file system" if _read_only(current)
               else f"is not writable by uid {os.geteuid()}")
        raise StateDirError(f"{where}: {subject}{why}" if current == path
                            else f"{where}: cannot be created: {subject}{why}")


def _short_run_dir(state_dir: str) -> str:
    digest = hashlib.sha256(state_dir.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"docbrain-{os.getuid()}-{digest}")


@dataclass(frozen=True)
class StatePaths:
    state_dir: str
    run_dir: str

    @classmethod
    def for_state_dir(cls, state_dir: str) -> "StatePaths":
        state_dir = os.path.abspath(state_dir)
        run_dir = os.path.join(state_dir, "run")
        if len(os.path.join(run_dir, _LONGEST_SOCKET_NAME)) > MAX_SOCKET_PATH:
            run_dir = _short_run_dir(state_dir)
        return cls(state_dir, run_dir)

    @property
    def pidfile(self) -> str:
        return os.path.join(self.state_dir, "docbrain.pid")

    @property
    def log_dir(self) -> str:
        return os.path.join(self.state_dir, "logs")

    @property
    def log_file(self) -> str:
        return os.path.join(self.log_dir, "docbrain.log")

    def socket(self, name: str) -> str:
        return os.path.join(self.run_dir, f"{name}.sock")

    def endpoint(self, name: str) -> str:
        return "ipc://" + self.socket(name)

    def socket_files(self) -> list[str]:
        return [self.socket(n) for n in ("control", "queue", "workers")]

    @property
    def journal(self) -> str:
        return os.path.join(self.state_dir, "journal.sqlite3")

    def check(self, writable: bool = True) -> None:
        """Raise StateDirError if state_dir or the socket directory cannot be used."""
        check_dir("state_dir", self.state_dir,
                  [self.pidfile, self.log_file, self.journal + "-wal"], writable)
        if os.path.dirname(self.run_dir) != self.state_dir:  # the short one, elsewhere
            check_dir("socket directory", self.run_dir, self.socket_files(), writable)

    def create(self) -> None:
        """Make the directories (0700); refuse a socket directory someone else controls."""
        self.check()
        for path in (self.state_dir, self.log_dir, self.run_dir):
            try:
                os.makedirs(path, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise StateDirError(f"cannot create {path}: {exc.strerror}") from None
        for path in (self.state_dir, self.run_dir):
            info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                raise StateDirError(f"{path} is not a directory owned by uid {os.getuid()}")
            if stat.S_IMODE(info.st_mode) & 0o077:
                os.chmod(path, 0o700)
