"""Daemon logging: state_dir/logs/docbrain.log, and stderr as well in the foreground."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class DaemonLog:
    def __init__(self, path: str, level: str, to_stderr: bool) -> None:
        self.path = path
        self.root = logging.getLogger()
        self.root.setLevel(level.upper())
        self.file_handler = self._open()
        self.root.addHandler(self.file_handler)
        if to_stderr:
            stream = logging.StreamHandler(sys.stderr)
            stream.setFormatter(logging.Formatter(FORMAT))
            self.root.addHandler(stream)

    def _open(self) -> logging.FileHandler:
        handler = logging.FileHandler(self.path, encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT))
        return handler

    def reopen(self) -> None:
        """After logrotate moved the file: write to a new one at the configured path."""
        old, self.file_handler = self.file_handler, self._open()
        self.root.addHandler(self.file_handler)
        self.root.removeHandler(old)
        old.close()

    def close(self) -> None:
        for handler in list(self.root.handlers):
            self.root.removeHandler(handler)
            handler.close()
