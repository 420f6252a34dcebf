"""The worker pool: one `WorkerSlot` per configured worker, driven by `lifecycle.step`.

The pool carries out what the pure state machine decides (spawn, signal) and feeds it the
facts (messages, exits, time). It owns no socket: the daemon passes messages in and gives
it a `send` callable for heartbeats.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any, Protocol

from supervisor.conf.settings import Config
from supervisor.pool import lifecycle
from supervisor.pool.lifecycle import Event, Kill, Policy, Spawn, WorkerState, restart_reason
from supervisor.pool.rollout import Rollout
from supervisor.pool.gpus import Placement
from supervisor.pool.slot import WorkerSlot, worker_spec
from supervisor.pool.spare import RETRY, Spare
from supervisor.pool.spawner import Spawner, WorkerProcess, describe_death, describe_load_error
from supervisor.proto import wire
from supervisor.proto.spec import WorkerSpec

log = logging.getLogger("supervisor.pool")
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


class WorkerPool:
    def __init__(self, config: Config, endpoint: str, daemon_pid: int,
                 spawner: Spawner, send: SendFn, listener: PoolListener,
                 models: dict[str, Any] | None = None) -> None:
        self.listener = listener
        self.models = models or {}
        self.placement = Placement()  # the models' devices and the slots' GPUs (gpus.plan)
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
        self.rollout = Rollout()  # reloads: which configuration each worker runs
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
        return worker_spec(self.config, index, self.endpoint, self.daemon_pid, self.models,
                           self.spawner.state_dir, self.placement)

    def _spawn(self, slot: WorkerSlot, now: float) -> None:
        proc = self.spare.take(self.rollout.generation, slot.index, now, self.send)
        if proc is None:
            try:
                proc = self.spawner.spawn(self._spec(slot.index))
            except OSError as exc:
                log.error("slot %d: spawn failed: %s", slot.index, exc)
                slot.proc = None
                self.apply(slot, Event.EXIT, now, f"spawn failed: {exc}")
                return
            proc.generation = self.rollout.generation
            log.info("slot %d: spawned worker pid %d", slot.index, proc.pid)
        slot.proc, slot.tasks = proc, {}
        for routing_id in proc.routing_ids:  # each of its threads' sockets
            self._by_routing_id[routing_id] = slot

    def on_standby_message(self, routing_id: bytes, message: wire.Message) -> bool:
        """True if the message came from the spare worker (and was taken care of)."""
        if not self.spare.on_message(routing_id, message):
            return False
        if self.spare.ready and self.spare.proc is not None:
            self.rollout.loaded(self.spare.proc)
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
            self.rollout.begin()
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
        self.rollout.revert(generation)
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
        return self.rollout.outdated(self.slots[:self.target])

    def rolling(self) -> int:
        """Workers of an older configuration still to be replaced."""
        return len(self._outdated())


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
            slot.tasks, slot.devices = dict(message.tasks), dict(message.devices)
            self.apply(slot, Event.READY, now)
            assert slot.proc is not None
            log.info("slot %d: worker pid %d READY", slot.index, slot.proc.pid)
            self.rollout.loaded(slot.proc)
            self.listener.worker_ready(slot.tasks)
        elif isinstance(message, wire.Heartbeat):
            slot.gpu_memory = message.gpu_memory
            self.apply(slot, Event.HEARTBEAT, now)
        elif isinstance(message, wire.Retiring):
            self.apply(slot, Event.RETIRE, now, message.reason)
        else:
            self.foreign_messages += 1

    def reap(self, now: float) -> None:
        died = self.spare.reap(now, lambda p: self.read_stderr(p, now), retry=not self._stopping)
        if died is not None:
            self.rollout.died(died[0], f"a worker of the new configuration {died[1]}")
        for slot in self.slots:
            proc = slot.proc
            if proc is None:
                continue
            code = proc.poll_exit()
            if code is None:
                continue
            self.read_stderr(proc, now)  # what it wrote last comes before its death notice
            for routing_id in proc.routing_ids:
                self._by_routing_id.pop(routing_id, None)
            detail = slot.exited(code)
            log.info("slot %d: worker pid %d %s", slot.index, proc.pid, detail)
            # A worker we asked to stop lost nothing by its own fault.
            stopping = slot.state.state == WorkerState.STOPPING
            reason = slot.state.reason
            if not stopping:
                self.rollout.died(proc, "a worker of the new configuration "
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
        if not self._stopping:
            self.spare.keep(now, self.rollout.generation, bool(self.config.workers.standby),
                            surge=bool(outdated), all_serving=all(
                                s.state.state in lifecycle.SERVING_STATES for s in self.slots))
        old = self.rollout.next_to_replace(outdated, self.spare.proc, self.spare.ready)
        if old is not None:
            self.apply(old, Event.REPLACE, now, "reload")
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

    def status(self, now: float) -> list[dict[str, Any]]:
        return [slot.status(now, removing=slot.index >= self.target,
                            gpu=self.placement.gpu_of(slot.index)) for slot in self.slots]
