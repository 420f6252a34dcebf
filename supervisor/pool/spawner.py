"""Start worker processes through a multiprocessing *spawn* context, stderr captured.

Never fork: a forked copy of a process that has imported torch crashes on macOS and can
deadlock OpenMP on Linux. Each worker's stdout and stderr are a pipe that the daemon reads
in its poll loop and writes to its log, prefixed with the slot and pid.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence
from multiprocessing import resource_tracker
from typing import Any

import psutil

from supervisor.proto.spec import LOAD_FAILED, LOAD_FAILED_MARK, WorkerSpec
from supervisor.proto.wire import START_MARK
from workers.main import run, run_when_told

WORKER_LEVELS = {name: logging.getLevelName(name)
                 for name in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")}
log = logging.getLogger("supervisor.worker")
TAIL_LINES = 20


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def describe_load_error(code: int | None, tail: Iterable[str]) -> str | None:
    """Why a worker that exited with LOAD_FAILED could not load (its last word on stderr),
    or None when it died otherwise: that is a crash, restarted with backoff."""
    if code != LOAD_FAILED:
        return None
    said = [line.split(LOAD_FAILED_MARK, 1)[1] for line in tail if LOAD_FAILED_MARK in line]
    return said[-1] if said else "its task modules failed to import"


def describe_death(code: int | None, tail: Sequence[str]) -> str:
    """How a worker ended, with its last word: `exit code 1: RuntimeError: ...`, or, for
    one that could not load, `cannot load: task module 'x' failed to import: ...`."""
    load_error = describe_load_error(code, tail)
    if load_error is not None:
        return LOAD_FAILED_MARK + load_error
    return describe_exit(code) + (f": {tail[-1]}" if tail else "")


class WorkerProcess:
    """One spawned worker: its process, its stderr pipe and the last lines it wrote."""

    def __init__(self, slot: int, process: multiprocessing.process.BaseProcess,
                 stderr_fd: int) -> None:
        self.slot = slot
        self.process = process
        assert process.pid is not None
        self.pid: int = process.pid
        # Fixed at spawn (a standby keeps its "-1:pid" when it takes a slot over).
        self.routing_id = f"{slot}:{self.pid}".encode()
        # Its sockets: the io thread's (which the daemon sends to), the task thread's own
        # for what it sends (":out"), the heartbeat thread's (":hb").
        self.routing_ids = (self.routing_id, self.routing_id + b":out",
                            self.routing_id + b":hb")
        self.generation = 0  # the pool's configuration generation it was spawned with
        self.stderr_fd: int | None = stderr_fd
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._partial = b""
        self._starts: list[list[str]] = []
        try:
            self.ps: psutil.Process | None = psutil.Process(self.pid)
            self.ps.cpu_percent(None)  # the first call only starts the measurement
        except psutil.Error:
            self.ps = None

    def poll_exit(self) -> int | None:
        """Reap without blocking: the exit code, or None while it runs."""
        return self.process.exitcode

    def signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass  # already gone; the reap will tell

    def read_stderr(self) -> None:
        """Read what the pipe has, log complete lines; closes the pipe at end of file."""
        if self.stderr_fd is None:
            return
        try:
            data = os.read(self.stderr_fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self._emit(self._partial)
            self._partial = b""
            self.close_stderr()
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._emit(line)

    def take_starts(self) -> list[list[str]]:
        """The job-start lines read since the last call, oldest first."""
        starts, self._starts = self._starts, []
        return starts

    def _emit(self, raw: bytes) -> None:
        if raw.startswith(START_MARK):
            self._starts.append(raw[len(START_MARK):].decode(errors="replace").split())
            return
        # A progress bar redraws itself after carriage returns: keep what a terminal would
        # show last, so the log gets a line, never the bar's every state.
        segments = [s for s in raw.decode(errors="replace").split("\r") if s.strip()]
        line = segments[-1].rstrip() if segments else ""
        if line:
            self.tail.append(line)
            # A worker logs "LEVEL name: message": its level is the line's (the journal's
            # priority under systemd); anything else it prints is INFO.
            level = WORKER_LEVELS.get(line.split(" ", 1)[0], logging.INFO)
            log.log(level, "[slot %d pid %d] %s", self.slot, self.pid, line)

    def close_stderr(self) -> None:
        if self.stderr_fd is not None:
            os.close(self.stderr_fd)
            self.stderr_fd = None

    def resources(self) -> dict[str, float | int | None]:
        """RSS counts shared model weights in every worker; PSS shares them out and USS
        leaves them out, so those two say what a worker costs."""
        if self.ps is None:
            return dict(NO_RESOURCES)
        try:
            with self.ps.oneshot():
                memory = self.ps.memory_full_info()
                return {"rss_bytes": memory.rss, "pss_bytes": getattr(memory, "pss", None),
                        "uss_bytes": memory.uss, "cpu_percent": self.ps.cpu_percent(None)}
        except psutil.Error:
            return dict(NO_RESOURCES)


NO_RESOURCES = {"rss_bytes": None, "pss_bytes": None, "uss_bytes": None, "cpu_percent": None}


def start_helpers() -> None:
    """Start multiprocessing's resource tracker now, before the instance marker and the
    worker pipes exist: it is a helper of the daemon, not a worker, and it exits with the
    daemon (it reads a pipe that closes then)."""
    resource_tracker.ensure_running()


class Spawner:
    def __init__(self, state_dir: str = "") -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.state_dir = state_dir  # named in each worker's process title
        # Interpreters spawned ahead (prestart): process, the pipe its spec goes down, stderr.
        self._warm: list[tuple[multiprocessing.process.BaseProcess, Any, int]] = []

    def prestart(self, count: int, daemon_pid: int) -> None:
        """Spawn `count` interpreters now that import torch and wait for their spec: the
        daemon's start runs them while it loads the models, and `spawn` hands the first
        workers to them. A worker in the torch form needs nothing the daemon has not got
        before the models load (its spec, with the models' shared tensors, comes through
        the pipe as file descriptors, as at spawn)."""
        for _ in range(count):
            theirs, ours = self.ctx.Pipe(duplex=False)
            try:
                process, read_fd = self._start(run_when_told, (theirs, daemon_pid),
                                               "docbrain-worker-prestarted")
            except OSError as exc:
                log.warning("prestart of a worker failed: %s", exc)
                ours.close()
                return
            finally:
                theirs.close()
            self._warm.append((process, ours, read_fd))

    def discard_prestarted(self) -> list[int | None]:
        """The prestarted interpreters not used: told to go (the end of their pipe: they
        exit 0 once they have imported torch), killed after 5 s, reaped; their exit codes."""
        for _, conn, read_fd in self._warm:
            conn.close()
            os.close(read_fd)
        codes = []
        for process, _, _ in self._warm:
            process.join(5)
            if process.exitcode is None:
                process.kill()
                process.join()
            codes.append(process.exitcode)
            process.close()
        self._warm.clear()
        return codes

    def spawn(self, spec: WorkerSpec) -> WorkerProcess:
        while self._warm and not spec.env:  # a prestarted one has the daemon's environment
            process, conn, read_fd = self._warm.pop(0)
            try:
                conn.send(spec)
            except OSError as exc:  # it died before its spec came
                log.warning("prestarted worker pid %s gone (%s); spawning another",
                            process.pid, exc)
                os.close(read_fd)
                process.join()
                process.close()
                continue
            finally:
                conn.close()
            return WorkerProcess(spec.slot, process, read_fd)
        process, read_fd = self._start(run, (spec,), f"docbrain-worker-{spec.slot}", spec.env)
        return WorkerProcess(spec.slot, process, read_fd)

    def _start(self, target: Any, args: tuple[Any, ...], name: str,
               env: Mapping[str, str] | None = None
               ) -> tuple[multiprocessing.process.BaseProcess, int]:
        # The resource tracker is started on the first spawn and would inherit the
        # redirected stderr below; the daemon starts it early (see start_helpers).
        resource_tracker.ensure_running()
        read_fd, write_fd = os.pipe()
        process = self.ctx.Process(target=target, args=args, name=name, daemon=False)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        # Its own variables (CUDA_VISIBLE_DEVICES of its GPU): the interpreter is started
        # with the daemon's environment as it is at this instant.
        restore = {key: os.environ.get(key) for key in env or {}}
        os.environ.update(env or {})
        try:
            # The spawned interpreter inherits fds 1 and 2: point them at the pipe for
            # the instant of the start, so even a crash while importing is captured.
            os.dup2(write_fd, 1)
            os.dup2(write_fd, 2)
            process.start()
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            for key, value in restore.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in (*saved, write_fd):
                os.close(fd)
        os.set_blocking(read_fd, False)
        return process, read_fd
