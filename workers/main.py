"""The worker process: the target that the daemon's spawn context runs.

Everything it needs comes in its `WorkerSpec` argument: a spawned child re-imports modules,
so nothing here may depend on module-level state of the daemon.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import replace
from typing import Any

import psutil
import zmq

from supervisor.proto import wire
from supervisor.proto.marker import SLOT_ENV
from supervisor.proto.proctitle import name_worker
from supervisor.proto.spec import LOAD_FAILED, LOAD_FAILED_MARK, STANDBY, WorkerSpec
from workers import models
from workers.channel import PIPE, STOP, Mailbox, PendingJob, heartbeats, serve
from workers.tasks import Task, TaskModuleError, import_task_modules

log = logging.getLogger("workers")
MEMORY_CHECK_EVERY = 1.0  # seconds
# Results of quick jobs travel together: sent when the worker holds no more jobs, or when
# this many are waiting, or when the oldest has waited this long. A job that took longer
# than FLUSH_SLOW has its result sent at once: the message costs nothing next to the job,
# and a result waiting in the worker dies with it (its job then runs again).
FLUSH_ITEMS = 64
FLUSH_AFTER = 0.005  # seconds
FLUSH_SLOW = 0.001   # seconds
MAX_ERROR_TEXT = 32_768  # characters of a failure's message and traceback kept
# (job id, ok, error, result JSON)
Outcome = tuple[str, bool, "dict[str, Any] | None", bytes, float]  # ..., seconds it ran


_PR_SET_PDEATHSIG = 1


def _die_with_parent(daemon_pid: int) -> None:
    """Linux: ask the kernel for SIGKILL when the daemon dies (elsewhere, stale cleanup)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != daemon_pid:  # the daemon died before we asked
        os._exit(1)


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.routing_id = f"{spec.slot}:{os.getpid()}".encode()
        self.mailbox = Mailbox()
        self.pipe = self.ctx.socket(zmq.PAIR)  # to and from the io thread
        self.pipe.setsockopt(zmq.LINGER, 0)
        self.pipe.bind(PIPE)
        self._io = threading.Thread(target=serve, name="io", daemon=True, args=(
            self.ctx, spec.endpoint, self.routing_id, self.mailbox))
        self._io.start()
        # What this thread sends goes straight out on a socket of its own, not through the
        # io thread: a result pays no second hop. Only Ready goes the io thread's way, so
        # that the daemon, which answers it with jobs, has heard from that socket first.
        self.out = self.ctx.socket(zmq.DEALER)
        self.out.setsockopt(zmq.LINGER, 2000)  # let the last results out at exit
        self.out.setsockopt(zmq.ROUTING_ID, self.routing_id + b":out")
        self.out.connect(spec.endpoint)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.stopping = False
        self.outbox: list[Outcome] = []  # results not sent yet
        self._unsent_since = time.monotonic()
        self.tasks: dict[str, Task] = {}
        self._batching: set[str] = set()
        self._stop_beats = threading.Event()
        self.jobs_done = 0
        self._next_memory_check = 0.0

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        # Handlers only make the signal visible on the wake-up fd; the loop acts.
        signal.signal(signal.SIGTERM, lambda *_: None)
        # Ctrl-C and a closed terminal reach the whole process group, and `kill` or
        # `systemctl kill` without --kill-who=main the whole cgroup: the daemon decides.
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGTTIN,
                       signal.SIGTTOU):
            signal.signal(signum, signal.SIG_IGN)

    def send(self, message: wire.Message) -> None:
        self.out.send_multipart(wire.encode(message))

    def send_ready(self, message: wire.Ready) -> None:
        self.pipe.send_multipart(wire.encode(message))  # via the socket jobs will come to

    def run(self) -> int:
        self._install_signals()
        spec = self.spec
        self.send(wire.Loading(slot=spec.slot, pid=os.getpid()))
        if spec.models:
            import torch

            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        try:
            models.attach(spec.models, spec.model_kinds, spec.devices)
            self.tasks = import_task_modules(spec.tasks, spec.module_path)
            self._batching = {name for name, t in self.tasks.items() if t.batch}
        except (models.PlacementError, TaskModuleError) as exc:
            traceback.print_exception(exc.__cause__ or exc, file=sys.stderr)
            print(LOAD_FAILED_MARK + str(exc), file=sys.stderr, flush=True)
            return LOAD_FAILED
        threading.Thread(target=heartbeats, name="heartbeats", daemon=True, args=(
            self.ctx, spec.endpoint, self.routing_id + b":hb", spec.heartbeat_interval,
            self._stop_beats, models.gpu_memory())).start()
        ready = wire.Ready(tasks={name: t.info() for name, t in self.tasks.items()},
                           devices=models.devices())
        self.send_ready(ready)
        poller = zmq.Poller()
        poller.register(self.pipe, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        silence_limit = spec.heartbeat_interval * spec.heartbeat_liveness
        inbox = self.mailbox.jobs
        if spec.slot == STANDBY:
            log.info("standby, loaded; waiting for a slot")
            if not self._await_slot(poller, silence_limit):
                return 0
            self.send_ready(ready)
        log.info("ready with tasks: %s", ", ".join(sorted(self.tasks)))
        while True:
            wait = 0 if inbox else int(spec.heartbeat_interval * 1000)
            events = dict(poller.poll(wait))
            if self._wake_r.fileno() in events:  # plain fds come back as ints
                self._read_signals()
            self._drain()
            if self.stopping:
                self._flush()
                return 0  # jobs not started are requeued by the daemon
            if inbox:
                started = time.monotonic()
                results = self._run_next()
                self.outbox.extend(results)
                slow = time.monotonic() - started >= FLUSH_SLOW
                self.jobs_done += len(results)
                reason = self._over_limit()
                if reason:
                    log.info("recycling: %s", reason)
                    self._flush()
                    self.send(wire.Retiring(reason=reason))
                    return 0  # the jobs it holds and has not started go back to the queue
                if slow or not inbox or len(self.outbox) >= FLUSH_ITEMS or \
                        time.monotonic() - self._unsent_since >= FLUSH_AFTER:
                    self._flush()
            elif time.monotonic() - self.mailbox.heard > silence_limit:
                log.error("daemon silent for %.1f s; exiting",
                          time.monotonic() - self.mailbox.heard)
                return 1

    def _await_slot(self, poller: zmq.Poller, silence_limit: float) -> bool:
        """A standby waits to be given a slot; False if it is stopped first."""
        while True:
            events = dict(poller.poll(int(self.spec.heartbeat_interval * 1000)))
            if self._wake_r.fileno() in events:
                self._read_signals()
            if self.stopping:
                return False
            if time.monotonic() - self.mailbox.heard > silence_limit:
                log.error("daemon silent for %.1f s; exiting",
                          time.monotonic() - self.mailbox.heard)
                return False
            self._drain()
            assigned = self.mailbox.assigned
            if assigned is not None:
                self.spec = replace(self.spec, slot=assigned)
                os.environ[SLOT_ENV] = str(assigned)
                name_worker(assigned, self.spec.state_dir)  # the title: standby -> slot N
                return True

    def _flush(self) -> None:
        """Send the results gathered since the last flush, in one message."""
        if self.outbox:
            out, self.outbox = self.outbox, []
            for frames in wire.encode_many(_results, out):
                self.out.send_multipart(frames)
        self._unsent_since = time.monotonic()

    def _over_limit(self) -> str | None:
        spec = self.spec
        if spec.max_jobs and self.jobs_done >= spec.max_jobs:
            return f"{self.jobs_done} jobs done (max_jobs_per_worker {spec.max_jobs})"
        now = time.monotonic()
        if spec.max_memory_mb and now >= self._next_memory_check:
            self._next_memory_check = now + MEMORY_CHECK_EVERY  # reading smaps is not free
            uss_mb = psutil.Process().memory_full_info().uss / 2**20
            if uss_mb > spec.max_memory_mb:
                return f"{uss_mb:.0f} MiB of its own memory (max_memory_mb {spec.max_memory_mb})"
        return None

    def _run_next(self) -> list[Outcome]:
        batch = self.mailbox.take(self._batching)
        if not batch:
            return []
        _announce(batch)
        task = self.tasks.get(batch[0].task)
        if task is None or not task.batch:
            return [self._run(batch[0])]
        started = time.monotonic()
        try:
            values = task.fn([wire.loads(j.data) for j in batch])
            if not isinstance(values, list) or len(values) != len(batch):
                raise TypeError(f"batch task {task.name} returned {type(values).__name__}, "
                                f"not a list of {len(batch)} results")
        except Exception as exc:
            seconds = time.monotonic() - started
            return [_failure(j.id, exc, seconds) for j in batch]
        seconds = time.monotonic() - started
        results = []
        for j, value in zip(batch, values):
            if isinstance(value, Exception):
                results.append(_failure(j.id, value, seconds))
                continue
            try:
                results.append(_success(j.id, value, seconds))
            except (TypeError, ValueError) as exc:
                results.append(_failure(j.id, exc, seconds))
        return results

    def _run(self, job: PendingJob) -> Outcome:
        task = self.tasks.get(job.task)
        started = time.monotonic()
        try:
            if task is None:
                raise LookupError(f"this worker has no task {job.task!r}")
            value = task.fn(wire.loads(job.data))
            return _success(job.id, value, time.monotonic() - started)
        except Exception as exc:  # the task's failure is the job's result, not ours
            return _failure(job.id, exc, time.monotonic() - started)

    def _read_signals(self) -> None:
        try:
            data = self._wake_r.recv(256)
        except BlockingIOError:
            return
        if signal.SIGTERM in data:
            log.info("SIGTERM: stopping")
            self.stopping = True

    def _drain(self) -> None:
        """The io thread's wake-ups: what they announce is in the mailbox already."""
        for _ in wire.waiting(self.pipe):
            pass

    def close(self) -> None:
        self._stop_beats.set()
        self.pipe.send_multipart(STOP)  # after everything sent before it
        self._io.join(5)
        self.pipe.close()
        self.out.close()
        if not self._io.is_alive():
            self.ctx.term()


def _announce(jobs: list[PendingJob]) -> None:
    """Tell the daemon, over the stderr pipe, which jobs start now (see START_MARK)."""
    os.write(2, wire.START_MARK + " ".join(j.id for j in jobs).encode() + b"\n")


def _results(outcomes: list[Outcome]) -> wire.Result:
    return wire.Result(ids=[o[0] for o in outcomes], oks=[o[1] for o in outcomes],
                       errors=[o[2] for o in outcomes], seconds=[o[4] for o in outcomes],
                       data=[o[3] for o in outcomes])


def _success(job_id: str, value: Any, seconds: float) -> Outcome:
    try:
        data = wire.dumps(value)  # TypeError too: the job fails
    except ValueError as exc:  # NaN or Infinity, or a circular reference: strict JSON only
        raise ValueError(f"result is not JSON: {exc}") from None
    if len(data) > wire.MAX_DATA:
        raise ValueError(f"result is {len(data)} bytes of JSON (limit {wire.MAX_DATA})")
    return (job_id, True, None, data, seconds)


def _failure(job_id: str, exc: BaseException, seconds: float) -> Outcome:
    # Bounded, so that a failure always fits in a message.
    return (job_id, False, {
        "type": type(exc).__name__, "message": str(exc)[:MAX_ERROR_TEXT],
        "traceback": "".join(traceback.format_exception(exc))[-MAX_ERROR_TEXT:]}, b"null",
        seconds)


def run_when_told(conn: Any, daemon_pid: int) -> None:
    """Process target of a worker spawned ahead (Spawner.prestart): imports what every
    worker of a model needs while the daemon loads the models, then runs the spec it is
    sent. The end of the pipe instead: not needed after all, exits 0."""
    _die_with_parent(daemon_pid)
    import torch  # noqa: F401  (the slow part: 1-2 s)

    import workers.torchform  # noqa: F401
    try:
        spec = conn.recv()
    except EOFError:
        sys.exit(0)
    finally:
        conn.close()
    run(spec)


def run(spec: WorkerSpec) -> None:
    """Process target: never returns normally; the exit code tells the daemon how it went."""
    _die_with_parent(spec.daemon_pid)
    os.environ.update(spec.env)  # set at spawn already; a prestarted one gets them here
    os.environ[SLOT_ENV] = str(spec.slot)
    logging.basicConfig(
        level=spec.log_level.upper(), stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s")
    name_worker(spec.slot, spec.state_dir)  # `docbrain: worker slot N (STATE_DIR)` in ps
    worker = Worker(spec)
    try:
        code = worker.run()
    finally:
        worker.close()
    sys.stderr.flush()
    sys.exit(code)
