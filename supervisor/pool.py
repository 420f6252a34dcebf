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
from supervisor.lifecycle import Event, Kill, Policy, Slot, Spawn, WorkerState, restart_reason
from supervisor.settings import Config
from supervisor.spare import RETRY, Spare
from supervisor.spawner import (NO_RESOURCES, Spawner, WorkerProcess, describe_death,
                                describe_exit, describe_load_error)
from workers.main import WorkerSpec

log = logging.getLogger(__name__)
SendFn = Callable[[bytes, wire.Message], None]


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
        self.target = config.workers.count
        self.slots = [WorkerSlot(i) for i in range(self.target)]
        self._by_routing_id: dict[bytes, WorkerSlot] = {}
        self.foreign_messages = 0
        self._next_beat = 0.0
        self.spare = Spare(spawner, self._spec, config.workers.load_timeout)
        self._stopping = False
        # Reload: every process carries the generation it was spawned with; slots running
        # an older one are replaced one at a time. The first process of a new generation
        # to load is the canary: if one dies before any loads, the reload failed.
        self.generation = 0
        self._generations = 0  # the last generation handed out
        self.canary_pending = False
        self.canary_failure: str | None = None
        self.on_restart: Callable[[str], None] | None = None  # metrics: why a slot restarted

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
                if self.on_restart is not None and \
                        before not in (WorkerState.EXITED, WorkerState.FATAL):
                    self.on_restart(restart_reason(slot.state.last_exit))
                self._spawn(slot, now)
            elif isinstance(action, Kill) and slot.proc is not None:
                slot.proc.signal(action.signum)

    def _spec(self, index: int) -> WorkerSpec:
        w = self.config.workers
        return WorkerSpec(slot=index, endpoint=self.endpoint, daemon_pid=self.daemon_pid,
                          tasks=tuple(w.tasks), heartbeat_interval=w.heartbeat_interval,
                          heartbeat_liveness=w.heartbeat_liveness,
                          log_level=self.config.supervisor.log_level, models=self.models,
                          max_jobs=w.max_jobs_per_worker, max_memory_mb=w.max_memory_mb,
                          module_path=self.config.module_path(),
                          state_dir=self.spawner.state_dir)

    def _spawn(self, slot: WorkerSlot, now: float) -> None:
        proc = self.spare.take(self.generation)
        if proc is not None:
            proc.slot = slot.index
            self.send(proc.routing_id, wire.Assign(slot=slot.index))
            self.spare.due = now  # and load the next one
            log.info("slot %d: spare worker pid %d takes over", slot.index, proc.pid)
        else:
            try:
                proc = self.spawner.spawn(self._spec(slot.index))
            except OSError as exc:
                log.error("slot %d: spawn failed: %s", slot.index, exc)
                slot.proc = None
                self.apply(slot, Event.EXIT, now, f"spawn failed: {exc}")
                return
            proc.generation = self.generation
            log.info("slot %d: spawned worker pid %d", slot.index, proc.pid)
        slot.proc, slot.tasks = proc, {}
        for routing_id in proc.routing_ids:  # each of its threads' sockets
            self._by_routing_id[routing_id] = slot

    def _tend_spare(self, now: float, outdated: list[WorkerSlot]) -> None:
        if self._stopping:
            return
        if self.spare.due is None and self.config.workers.standby and \
                all(s.state.state in lifecycle.SERVING_STATES for s in self.slots):
            self.spare.due = now  # not before: it would slow the start down
        if self.config.workers.standby or outdated:
            self.spare.tend(now, self.generation)
        elif self.spare.proc is not None and self.spare.ready:
            self.spare.discard()  # the surge worker of a reload that needs it no more

    def on_standby_message(self, routing_id: bytes, message: wire.Message) -> bool:
        """True if the message came from the spare worker (and was taken care of)."""
        if not self.spare.on_message(routing_id, message):
            return False
        proc = self.spare.proc
        if self.spare.ready and proc is not None and proc.generation == self.generation:
            self.canary_pending = False
        return True

    def start_all(self, now: float) -> None:
        for slot in self.slots:
            self.apply(slot, Event.START, now)

    def stop_all(self, now: float, timeout: float | None = None) -> None:
        if timeout is not None:
            self.policy = lifecycle.Policy(**{**self.policy.__dict__, "stop_timeout": timeout})
        self._stopping = True
        self.spare.discard()
        for slot in self.slots:
            self.apply(slot, Event.STOP, now)

    # -- scaling and reloading -----------------------------------------------------------

    def resize(self, count: int, now: float) -> None:
        """Run `count` workers: new slots start at once; slots past the count stop (their
        workers finish the job they run; jobs they hold go back to the queue)."""
        self.target = count
        while len(self.slots) < count:
            self.slots.append(WorkerSlot(len(self.slots)))
        for slot in self.slots[count:]:
            self.apply(slot, Event.STOP, now)
        self._reconcile(now)

    def _reconcile(self, now: float) -> None:
        if self._stopping:
            return
        for slot in self.slots[:self.target]:
            if slot.state.state == WorkerState.EXITED:  # new, or stopped by a smaller count
                self.apply(slot, Event.START, now)
        while len(self.slots) > self.target and self.slots[-1].proc is None and \
                self.slots[-1].state.state not in lifecycle.LIVE_STATES:
            self.slots.pop()

    def reconfigure(self, config: Config, models: dict[str, Any], now: float,
                    roll: bool = True, count: int | None = None) -> None:
        """Spawn from now on with `config` and run `count` workers (default: its count).
        With `roll`, replace every running worker, one at a time, each by a loaded spare
        of the new configuration; the first to load or die says if the reload worked."""
        self._set_config(config, models)
        if roll:
            self._generations += 1
            self.generation = self._generations
            self.canary_pending, self.canary_failure = True, None
            self.spare.discard()  # of the old configuration
            self.spare.due, self.spare.delay = now, RETRY
        for slot in self.slots:
            if slot.state.state == WorkerState.FATAL:  # perhaps what the reload fixes
                self.apply(slot, Event.START, now)
        self.resize(config.workers.count if count is None else count, now)

    def revert(self, config: Config, models: dict[str, Any], generation: int, count: int,
               now: float) -> None:
        """A reload failed: back to `config`, whose workers (of `generation`) stay; those
        started with the failed configuration are replaced."""
        self._set_config(config, models)
        self.generation = generation
        self.canary_pending, self.canary_failure = False, None
        self.spare.discard()
        self.spare.due, self.spare.delay = now, RETRY
        self.resize(count, now)

    def _set_config(self, config: Config, models: dict[str, Any]) -> None:
        self.config, self.models = config, models
        self.policy = policy_from(config)
        self.spare.load_timeout = config.workers.load_timeout

    def settled(self) -> bool:
        """Every slot runs the current configuration and is serving (or FATAL)."""
        done = lifecycle.SERVING_STATES | {WorkerState.FATAL}
        return len(self.slots) == self.target and not self._outdated() and \
            all(s.state.state in done for s in self.slots)

    def _outdated(self) -> list[WorkerSlot]:
        """Slots whose worker runs another configuration (including one being replaced)."""
        return [s for s in self.slots[:self.target]
                if s.proc is not None and s.proc.generation != self.generation]

    def rolling(self) -> int:
        """Workers of an older configuration still to be replaced."""
        return len(self._outdated())

    def _roll(self, now: float, outdated: list[WorkerSlot]) -> None:
        """Replace the next old worker once a spare of the new configuration is loaded."""
        if not outdated or self.spare.proc is None or not self.spare.ready or \
                self.spare.proc.generation != self.generation or \
                any(s.state.state == WorkerState.STOPPING for s in outdated):
            return
        for slot in outdated:
            if slot.state.state in lifecycle.SERVING_STATES:
                self.apply(slot, Event.REPLACE, now, "reload")
                return

    def _canary_died(self, proc: WorkerProcess, detail: str) -> None:
        if self.canary_pending and proc.generation == self.generation:
            self.canary_pending = False
            self.canary_failure = detail

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
            if slot.proc.generation == self.generation:
                self.canary_pending = False
            self.listener.worker_ready(slot.tasks)
        elif isinstance(message, wire.Heartbeat):
            self.apply(slot, Event.HEARTBEAT, now)
        elif isinstance(message, wire.Retiring):
            self.apply(slot, Event.RETIRE, now, message.reason)
        else:
            self.foreign_messages += 1

    def reap(self, now: float) -> None:
        died = self.spare.reap(now, lambda p: self.read_stderr(p, now), retry=not self._stopping)
        if died is not None:
            self._canary_died(died[0], f"a worker of the new configuration {died[1]}")
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
            for routing_id in proc.routing_ids:
                self._by_routing_id.pop(routing_id, None)
            detail = describe_exit(code)
            log.info("slot %d: worker pid %d %s", slot.index, proc.pid, detail)
            slot.last_tail = list(proc.tail)
            slot.proc = None
            # A worker we asked to stop lost nothing by its own fault.
            stopping = slot.state.state == WorkerState.STOPPING
            reason = slot.state.reason
            if not stopping:
                self._canary_died(proc, "a worker of the new configuration "
                                  + describe_death(code, slot.last_tail))
            load_error = describe_load_error(code, proc.tail)  # not a crash: not retried
            self.apply(slot, Event.EXIT if load_error is None else Event.LOAD_FAILED, now,
                       load_error or detail)
            self.listener.worker_lost(slot.index, f"{detail} ({reason})" if reason else detail,
                                      count_attempt=not stopping)
        self._reconcile(now)

    def tick(self, now: float) -> None:
        for slot in self.slots:
            self.apply(slot, Event.TICK, now)
        self._reconcile(now)
        outdated = self._outdated()
        self._tend_spare(now, outdated)
        self._roll(now, outdated)
        if now >= self._next_beat:
            self._next_beat = now + self.config.workers.heartbeat_interval
            for slot in self.slots:
                if slot.state.state in lifecycle.SERVING_STATES and slot.routing_id:
                    self.send(slot.routing_id, wire.Heartbeat())
            if self.spare.proc is not None and self.spare.ready:
                self.send(self.spare.proc.routing_id, wire.Heartbeat())

    # -- what the loop needs to know -----------------------------------------------------

    def serving(self) -> list[tuple[int, bytes]]:
        """(slot, routing id) of every worker that may be given jobs."""
        return [(s.index, s.routing_id) for s in self.slots
                if s.state.state in lifecycle.SERVING_STATES and s.routing_id is not None]

    def next_deadline(self) -> float:
        deadlines = [d for s in self.slots
                     if (d := lifecycle.next_deadline(s.state, self.policy)) is not None]
        spare = self.spare.next_deadline()
        if spare is not None and (self.config.workers.standby or self._outdated()):
            deadlines.append(spare)
        return min([self._next_beat, *deadlines])

    def read_stderr(self, proc: WorkerProcess, now: float) -> None:
        """Log what the worker wrote; pass on which jobs it said it started."""
        proc.read_stderr()
        for job_ids in proc.take_starts():
            self.listener.jobs_started(proc.slot, job_ids, now)

    def _processes(self) -> list[WorkerProcess]:
        return [s.proc for s in self.slots if s.proc is not None] + self.spare.processes()

    def stderr_fds(self) -> dict[int, WorkerProcess]:
        return {p.stderr_fd: p for p in self._processes() if p.stderr_fd is not None}

    def all_exited(self) -> bool:
        return not self.spare.processes() and all(
            s.proc is None and s.state.state not in lifecycle.LIVE_STATES for s in self.slots)

    def kill_all(self) -> None:
        """Last resort when the daemon itself fails: nothing of ours may outlive it."""
        for proc in self._processes():
            proc.signal(signal.SIGKILL)
            proc.process.join(5)

    def standby_status(self) -> dict[str, Any] | None:
        return self.spare.status()

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
                "generation": slot.proc.generation if slot.proc else None,
                "removing": slot.index >= self.target,
            }
            row.update(slot.proc.resources() if slot.proc else NO_RESOURCES)
            rows.append(row)
        return rows

