"""Process titles, so that ps, top and htop tell the daemon and its workers apart:
`docbrain: supervisor (STATE_DIR)`, `docbrain: worker slot N (STATE_DIR)` and
`docbrain: worker standby (STATE_DIR)` (renamed `slot N` when the standby takes a slot).

setproctitle writes the title over the process's argv area on Linux (/proc/PID/cmdline,
padded with NULs; /proc/PID/comm gets its first 15 characters). Left to itself it also moves
the environment away and pads that area too, so /proc/PID/environ, where stale workers are
found by their instance marker (supervisor.proto.marker), would read empty. SPT_NOENV=1, set here
before setproctitle is first imported (and so inherited by the workers), keeps it to argv:
a title is then cut at the length of the process's original command line. Without setproctitle
everything runs on, unnamed.

Whoever recognises our processes by their command line (doctor) accepts these titles as
well as the original command lines (`spawned`, `is_supervisor_title`).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("supervisor.proto")
PREFIX = "docbrain: "
SUPERVISOR = PREFIX + "supervisor"
WORKER = PREFIX + "worker "

_module: Any = None  # setproctitle, once loaded (False: it cannot be)


def _setproctitle() -> Any:
    global _module
    if _module is None:
        os.environ["SPT_NOENV"] = "1"  # never the environment: it carries the marker
        try:
            _module = importlib.import_module("setproctitle")
        except ImportError as exc:  # an install without it
            log.debug("setproctitle not available (%s): processes keep their command "
                      "lines", exc)
            _module = False
    return _module


def supervisor_title(state_dir: str) -> str:
    return f"{SUPERVISOR} ({state_dir})" if state_dir else SUPERVISOR


def worker_title(slot: int, state_dir: str) -> str:
    """A negative slot is the standby's (workers.main.STANDBY)."""
    name = WORKER + ("standby" if slot < 0 else f"slot {slot}")
    return f"{name} ({state_dir})" if state_dir else name


def set_title(title: str) -> bool:
    """Name this process; False where setproctitle is missing or failed."""
    module = _setproctitle()
    if not module:
        return False
    try:
        module.setproctitle(title)
    except Exception as exc:  # a title is a nicety: never a reason to stop
        log.debug("setproctitle(%r) failed: %s", title, exc)
        return False
    return True


def name_worker(slot: int, state_dir: str) -> bool:
    """A worker names itself, but only if it was started as multiprocessing's spawn child
    (its original command line says so): the title then still tells doctor how it was
    started; a forked copy would keep the daemon's title, and doctor says so."""
    if not spawned(getattr(sys, "orig_argv", ())):
        return False
    return set_title(worker_title(slot, state_dir))


def trimmed(cmdline: Sequence[str]) -> tuple[str, ...]:
    """A command line without the empty arguments that a title's NUL padding reads as."""
    args = list(cmdline)
    while args and not args[-1]:
        args.pop()
    return tuple(args)


def _text(cmdline: Sequence[str]) -> str:
    # One string, whichever way it was split (psutil splits a title that ends without NULs
    # at its spaces).
    return " ".join(cmdline).strip()


def is_worker_title(cmdline: Sequence[str]) -> bool:
    return _text(cmdline).startswith(WORKER)


def is_supervisor_title(cmdline: Sequence[str]) -> bool:
    text = _text(cmdline)
    return text == SUPERVISOR or text.startswith(SUPERVISOR + " (")


def title_state_dir(cmdline: Sequence[str]) -> str | None:
    """The state_dir a title names, if it is whole (a cut title has lost its end)."""
    text = _text(cmdline)
    start = text.find(" (")
    if not text.startswith(PREFIX) or start < 0 or not text.endswith(")"):
        return None
    return text[start + 2:-1] or None


def spawned(cmdline: Sequence[str]) -> bool:
    """multiprocessing's spawn command line: `python -c 'from multiprocessing.spawn import
    spawn_main; ...' --multiprocessing-fork`."""
    return "spawn_main" in " ".join(cmdline) and "--multiprocessing-fork" in cmdline


def spawned_worker(cmdline: Sequence[str]) -> bool:
    """A worker's command line shows it was spawned: the spawn command line itself, or the
    title a worker sets only when that was its command line (name_worker)."""
    return spawned(cmdline) or is_worker_title(cmdline)
