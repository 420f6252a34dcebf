"""The worker pool: one `WorkerSlot` per configured worker, driven by `lifecycle.step`.

The pool carries out what the pure state machine decides (spawn, signal) and feeds it the
facts (messages, exits, time). It owns no socket: the daemon passes messages in and gives
it a `send` callable for heartbeats.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from supervisor import lifecycle, wire
from supervisor.lifecycle import Event, Kill, Policy, Slot, Spawn, WorkerState
from supervisor.settings import Config
from supervisor.spawner import NO_RESOURCES, Spawner, WorkerProcess, describe_exit
from workers.main import WorkerSpec

log = logging.getLogger(__name__)
SendFn = Callable[[bytes, wire.Message], None]
STANDBY = -1             # the slot number a standby worker is spawned with
STANDBY_RETRY = 1.0      # seconds before a standby that died is replaced; doubles
STANDBY_RETRY_MAX = 60.0


class PoolListener(Protocol):
    """What the job broker needs to hear from the pool."""

    def worker_ready(self, tasks: dict[str, Any]) -> None: ...

    def jobs_started(self, slot: int, job_ids: list[str], now: float) -> None: ...

    def worker_lost(self, slot: int, detail: str, count_attempt: bool) -> None: ...


def policy_from(config: Config) -> Policy:
    r, w = config.restart, config.workers
    return Policy(backoff_start=r.backoff_start, backoff_max=r.backoff_max,
                  backoff_reset=r.backoff_reset, flap_window=r.flap_window,
                  flap_limit=r.flap_limit, load_timeout=w.load_timeout,
                  liveness=w.heartbeat_interval * w.heartbeat_liveness,
                  stop_timeout=w.stop_timeout)


@dataclass
class WorkerSlot:
    index: int
    state: Slot = field(default_factory=Slot)
    proc: WorkerProcess | None = None
    tasks: dict[str, Any] = field(default_factory=dict)
    # The last lines the previous process wrote, to say why it died.
    last_tail: list[str] = field(default_factory=list)

    @property
    def routing_id(self) -> bytes | None:
        return self.proc.routing_id if self.proc else None


class WorkerPool:
    def __init__(self, config: Config, endpoint: str, daemon_pid: int,
                 spawner: Spawner, send: SendFn, listener: PoolListener,
                 models: dict[str, Any] | None = None) -> None:
        self.listener = listener
        self.models = models or {}
        self.config = config
        self.policy = policy_from(config)
        self.endpoint = endpoint
        self.daemon_pid = daemon_pid
        self.spawner = spawner
        self.send = send
        self.slots = [WorkerSlot(i) for i in range(config.workers.count)]
        self._by_routing_id: dict[bytes, WorkerSlot] = {}
        self.foreign_messages = 0
        self._next_beat = 0.0
        # The standby worker: spawned ahead once every slot was READY, loaded, waiting.
        self.standby: WorkerProcess | None = None
        self.standby_ready = False
        self._standby_due: float | None = None  # when to spawn one; None: not yet
        self._standby_delay = STANDBY_RETRY
        self._stopping = False

    # -- driving the state machine -------------------------------------------------------

    def apply(self, slot: WorkerSlot, event: Event, now: float, detail: str = "") -> None:
        before = slot.state.state
        result = lifecycle.step(slot.state, event, now, self.policy, detail)
        slot.state = result.slot
        if result.note:
            level = logging.ERROR if slot.state.state == WorkerState.FATAL else logging.WARNING
            log.log(level, "slot %d: %s", slot.index, result.note)
        if slot.state.state != before:
            log.debug("slot %d: %s -> %s", slot.index, before.name, slot.state.state.name)
        for action in result.actions:
            if isinstance(action, Spawn):
                self._spawn(slot, now)
            elif isinstance(action, Kill) and slot.proc is not None:
                slot.proc.signal(action.signum)

    def _spec(self, index: int) -> WorkerSpec:
        w = self.config.workers
        return WorkerSpec(slot=index, endpoint=self.endpoint, daemon_pid=self.daemon_pid,
                          tasks=tuple(w.tasks), heartbeat_interval=w.heartbeat_interval,
                          heartbeat_liveness=w.heartbeat_liveness,
                          log_level=self.config.supervisor.log_level, models=self.models,
                          max_jobs=w.max_jobs_per_worker, max_memory_mb=w.max_memory_mb)

    def _spawn(self, slot: WorkerSlot, now: float) -> None:
        if self.standby is not None and self.standby_ready:
            self._take_standby(slot, now)
            return
        try:
            slot.proc = self.spawner.spawn(self._spec(slot.index))
        except OSError as exc:
            log.error("slot %d: spawn failed: %s", slot.index, exc)
            slot.proc = None
            self.apply(slot, Event.EXIT, now, f"spawn failed: {exc}")
            return
        slot.tasks = {}
        assert slot.routing_id is not None
        self._by_routing_id[slot.routing_id] = slot
        self._by_routing_id[slot.routing_id + b":hb"] = slot  # its heartbeat thread
        log.info("slot %d: spawned worker pid %d", slot.index, slot.proc.pid)

    def _take_standby(self, slot: WorkerSlot, now: float) -> None:
        proc, self.standby = self.standby, None
        assert proc is not None
        proc.slot = slot.index
        slot.proc, slot.tasks = proc, {}
        self._by_routing_id[proc.routing_id] = slot
        self._by_routing_id[proc.routing_id + b":hb"] = slot
        self.send(proc.routing_id, wire.Assign(slot=slot.index))
        self._standby_due = now  # and load the next one
        log.info("slot %d: standby worker pid %d takes over", slot.index, proc.pid)

    def _tend_standby(self, now: float) -> None:
        if not self.config.workers.standby or self._stopping or self.standby is not None:
            return
        if self._standby_due is None:
            if all(s.state.state in lifecycle.SERVING_STATES for s in self.slots):
                self._standby_due = now  # not before: it would slow the start down
            return
        if now < self._standby_due:
            return
        try:
            self.standby = self.spawner.spawn(self._spec(STANDBY))
            self.standby_ready = False
            log.info("standby worker pid %d spawned", self.standby.pid)
        except OSError as exc:
            log.error("standby: spawn failed: %s", exc)
            self._standby_due = now + self._standby_delay

    def on_standby_message(self, routing_id: bytes, message: wire.Message) -> bool:
        """True if the message came from the standby worker (and was taken care of)."""
        proc = self.standby
        if proc is None or routing_id not in (proc.routing_id, proc.routing_id + b":hb"):
            return False
        if isinstance(message, wire.Ready):
            self.standby_ready = True
            self._standby_delay = STANDBY_RETRY
            log.info("standby worker pid %d loaded and waiting", proc.pid)
        return True

    def _reap_standby(self, now: float) -> None:
        proc = self.standby
        if proc is None or (code := proc.poll_exit()) is None:
            return
        self.read_stderr(proc, now)
        proc.close_stderr()
        proc.process.close()
        self.standby = None
        if not self._stopping:
            # Something kills it (a broken task module, say): retry, less and less often.
            self._standby_due = now + self._standby_delay
            self._standby_delay = min(STANDBY_RETRY_MAX, self._standby_delay * 2)
            log.warning("standby worker pid %d %s; another in %.0f s", proc.pid,
                        describe_exit(code), self._standby_due - now)

    def start_all(self, now: float) -> None:
        for slot in self.slots:
            self.apply(slot, Event.START, now)

    def stop_all(self, now: float, timeout: float | None = None) -> None:
        if timeout is not None:
            self.policy = lifecycle.Policy(**{**self.policy.__dict__, "stop_timeout": timeout})
        self._stopping = True
        if self.standby is not None:
            self.standby.signal(signal.SIGTERM)
        for slot in self.slots:
            self.apply(slot, Event.STOP, now)

    # -- facts from the outside world ----------------------------------------------------

    def slot_for(self, routing_id: bytes) -> WorkerSlot | None:
        """The slot whose current process sent this; None for a dead one's late words."""
        slot = self._by_routing_id.get(routing_id)
        if slot is None:
            self.foreign_messages += 1
        return slot

    def on_message(self, slot: WorkerSlot, message: wire.Message, now: float) -> None:
        if isinstance(message, wire.Loading):
            self.apply(slot, Event.LOADING, now)
        elif isinstance(message, wire.Ready):
            slot.tasks = dict(message.tasks)
            self.apply(slot, Event.READY, now)
            assert slot.proc is not None
            log.info("slot %d: worker pid %d READY", slot.index, slot.proc.pid)
            self.listener.worker_ready(slot.tasks)
        elif isinstance(message, wire.Heartbeat):
            self.apply(slot, Event.HEARTBEAT, now)
        elif isinstance(message, wire.Retiring):
            self.apply(slot, Event.RETIRE, now, message.reason)
        else:
            self.foreign_messages += 1

    def reap(self, now: float) -> None:
        self._reap_standby(now)
        for slot in self.slots:
            proc = slot.proc
            if proc is None:
                continue
            code = proc.poll_exit()
            if code is None:
                continue
            self.read_stderr(proc, now)  # what it wrote last comes before its death notice
            proc.close_stderr()
            proc.process.close()
            if slot.routing_id is not None:
                self._by_routing_id.pop(slot.routing_id, None)
                self._by_routing_id.pop(slot.routing_id + b":hb", None)
            detail = describe_exit(code)
            log.info("slot %d: worker pid %d %s", slot.index, proc.pid, detail)
            slot.last_tail = list(proc.tail)
            slot.proc = None
            # A worker we asked to stop lost nothing by its own fault.
            stopping = slot.state.state == WorkerState.STOPPING
            reason = slot.state.reason
            self.apply(slot, Event.EXIT, now, detail)
            self.listener.worker_lost(slot.index, f"{detail} ({reason})" if reason else detail,
                                      count_attempt=not stopping)

    def tick(self, now: float) -> None:
        for slot in self.slots:
            self.apply(slot, Event.TICK, now)
        self._tend_standby(now)
        if now >= self._next_beat:
            self._next_beat = now + self.config.workers.heartbeat_interval
            for slot in self.slots:
                if slot.state.state in lifecycle.SERVING_STATES and slot.routing_id:
                    self.send(slot.routing_id, wire.Heartbeat())
            if self.standby is not None and self.standby_ready:
                self.send(self.standby.routing_id, wire.Heartbeat())

    # -- what the loop needs to know -----------------------------------------------------

    def serving(self) -> list[tuple[int, bytes]]:
        """(slot, routing id) of every worker that may be given jobs."""
        return [(s.index, s.routing_id) for s in self.slots
                if s.state.state in lifecycle.SERVING_STATES and s.routing_id is not None]

    def next_deadline(self) -> float:
        deadlines = [d for s in self.slots
                     if (d := lifecycle.next_deadline(s.state, self.policy)) is not None]
        if self.standby is None and self._standby_due is not None:
            deadlines.append(self._standby_due)
        return min([self._next_beat, *deadlines])

    def read_stderr(self, proc: WorkerProcess, now: float) -> None:
        """Log what the worker wrote; pass on which jobs it said it started."""
        proc.read_stderr()
        for job_ids in proc.take_starts():
            self.listener.jobs_started(proc.slot, job_ids, now)

    def _processes(self) -> list[WorkerProcess]:
        procs = [s.proc for s in self.slots if s.proc is not None]
        return procs + [self.standby] if self.standby is not None else procs

    def stderr_fds(self) -> dict[int, WorkerProcess]:
        return {p.stderr_fd: p for p in self._processes() if p.stderr_fd is not None}

    def all_exited(self) -> bool:
        return self.standby is None and all(
            s.proc is None and s.state.state not in lifecycle.LIVE_STATES for s in self.slots)

    def kill_all(self) -> None:
        """Last resort when the daemon itself fails: nothing of ours may outlive it."""
        for proc in self._processes():
            proc.signal(signal.SIGKILL)
            proc.process.join(5)

    def standby_status(self) -> dict[str, Any] | None:
        if self.standby is None:
            return None
        return {"pid": self.standby.pid, "ready": self.standby_ready}

    def status(self, now: float) -> list[dict[str, Any]]:
        rows = []
        for slot in self.slots:
            s = slot.state
            alive = slot.proc is not None
            row: dict[str, Any] = {
                "slot": slot.index,
                "pid": slot.proc.pid if slot.proc else None,
                "state": s.state.name,
                "uptime_s": round(now - s.spawned_at, 3) if alive and s.spawned_at else None,
                "restarts": s.restarts,
                "last_exit": s.last_exit,
                "reason": s.reason,
                "tasks": slot.tasks,
                "stderr_tail": [] if alive else slot.last_tail,
            }
            row.update(slot.proc.resources() if slot.proc else NO_RESOURCES)
            rows.append(row)
        return rows
