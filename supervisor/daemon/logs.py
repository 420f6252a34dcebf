"""Daemon logging: state_dir/logs/docbrain.log, and stderr as well in the foreground.

Under systemd, stderr is a stream to the journal, which records the time itself and reads
a `<N>` prefix as the line's syslog priority (sd-daemon(3)); without the prefix every line
would be priority 6, and `journalctl -p warning` would show none of our warnings. systemd
says that stderr is such a stream by setting JOURNAL_STREAM to its device and inode
(systemd.exec(5)): only when they match stderr do we write the prefixes, so a stderr
redirected elsewhere by a child process keeps the plain format.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"  # each line prefixed with <priority>
# logging level -> syslog priority (sd-daemon's SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG, ...)
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
              (logging.INFO, 6))
DEBUG_PRIORITY = 7


def is_journal_stream(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when `stream` is the journal stream that systemd named in JOURNAL_STREAM."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class JournalFormatter(logging.Formatter):
    """`<priority>name: message`, one journal entry per line (a traceback's lines too)."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in PRIORITIES if record.levelno >= level),
                        DEBUG_PRIORITY)
        # The journal cuts entries at newlines: each line of a traceback keeps the priority.
        return "\n".join(f"<{priority}>{line}"
                         for line in super().format(record).splitlines() or [""])


def stderr_formatter(stream: TextIO) -> logging.Formatter:
    return JournalFormatter() if is_journal_stream(stream) else logging.Formatter(FORMAT)


class DaemonLog:
    def __init__(self, path: str, level: str, to_stderr: bool) -> None:
        self.path = path
        self.root = logging.getLogger()
        self.root.setLevel(level.upper())
        self.file_handler = self._open()
        self.root.addHandler(self.file_handler)
        if to_stderr:
            stream = logging.StreamHandler(sys.stderr)
            stream.setFormatter(stderr_formatter(sys.stderr))
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
