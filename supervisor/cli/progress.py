"""Progress of bulk work (`docbrainctl submit --input`), always on stderr.

A bar (tqdm: N/total, rate, ETA) on a terminal; elsewhere, for logs, a plain line every
few seconds, `embed: 400/1,372 finished, 0 failed, 57.1/s, ETA 17 s`; and in every mode a
summary line at the end, `1,369 done, 3 failed in 23.8 s`.
"""

from __future__ import annotations

import os
import time
from typing import Any, TextIO

from tqdm import tqdm

INTERVAL_ENV = "DOCBRAIN_PROGRESS_INTERVAL"  # seconds between plain lines (read by the CLI)
INTERVAL = 5.0
BAR_REFRESH = 0.5   # seconds between redraws of the bar while nothing finishes

BAR, LINES, OFF = "bar", "lines", "off"


def mode_of(flag: bool | None, stream: TextIO) -> str:
    """--progress (True): the bar, even off a terminal; --no-progress (False): none;
    neither (None): the bar on a terminal, plain lines otherwise."""
    if flag is None:
        return BAR if stream.isatty() else LINES
    return BAR if flag else OFF


def interval_from_env() -> float:
    """Seconds between plain lines: $DOCBRAIN_PROGRESS_INTERVAL, else 5; ValueError, with
    a one-line message, for anything but a positive number."""
    text = os.environ.get(INTERVAL_ENV)
    if text is None or not text.strip():
        return INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{INTERVAL_ENV}: expected a number of seconds over 0, got {text!r}")
    return value


def _eta(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """Counts jobs as they finish and shows it in `mode` (BAR, LINES or OFF) on `stream`."""

    def __init__(self, label: str, total: int, mode: str, stream: TextIO,
                 interval: float = INTERVAL) -> None:
        self.label, self.total, self.mode, self.stream = label, total, mode, stream
        self.interval = interval
        self.done = self.failed = 0
        self.start = time.monotonic()
        self._next_line = self.start + interval
        self._drawn = self.start
        self._bar: Any = None
        if mode == BAR:
            self._bar = tqdm(total=total, desc=label, unit="job", file=stream,
                             dynamic_ncols=True, leave=False)

    @property
    def finished(self) -> int:
        return self.done + self.failed

    def finish(self, ok: bool) -> None:
        """One more job ended: done (ok) or not (failed, dead, rejected)."""
        if ok:
            self.done += 1
        else:
            self.failed += 1
        if self._bar is not None:
            if not ok:
                self._bar.set_postfix_str(f"{self.failed:,} failed", refresh=False)
            self._bar.update(1)
            self._drawn = time.monotonic()
        else:
            self.tick()

    def tick(self) -> None:
        """Call while waiting: a plain line when one is due, or the bar redrawn (its
        elapsed time and rate go on while nothing finishes)."""
        now = time.monotonic()
        if self._bar is not None:
            if now - self._drawn >= BAR_REFRESH:
                self._bar.refresh()
                self._drawn = now
        elif self.mode == LINES and now >= self._next_line:
            while self._next_line <= now:
                self._next_line += self.interval
            self._write(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (time.monotonic() if now is None else now) - self.start
        rate = self.finished / elapsed if elapsed > 0 else 0.0
        eta = _eta((self.total - self.finished) / rate) if rate > 0 else "unknown"
        return (f"{self.label}: {self.finished:,}/{self.total:,} finished, "
                f"{self.failed:,} failed, {rate:.1f}/s, ETA {eta}")

    def summary(self) -> str:
        return (f"{self.done:,} done, {self.failed:,} failed in "
                f"{time.monotonic() - self.start:.1f} s")

    def close(self) -> None:
        """Takes the bar off the screen (the summary or an interruption's message follows)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
