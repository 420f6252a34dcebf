"""Where the daemon keeps its files: the layout of state_dir.

    state_dir/            0700
      docbrain.pid        flock'd by the running daemon
      journal.sqlite3     the job journal (WAL)
      logs/docbrain.log   daemon log, with every worker's stderr
      run/                0700: control.sock, queue.sock, workers.sock

A Unix socket path is limited to about 100 bytes. When state_dir/run is too deep for that,
the sockets go to a short private directory derived from state_dir (the same for the
daemon and for docbrainctl, so nothing has to be recorded), owned by us and 0700.
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


class StateDirError(Exception):
    """state_dir (or the socket directory) cannot be used; the message is for the user."""


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

    def create(self) -> None:
        """Make the directories (0700); refuse a socket directory someone else controls."""
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
