"""The lifecycle of one worker slot, as data: states, events and a pure `step`.

No I/O and no clock: the caller passes `now` (monotonic seconds) and carries out the
actions that `step` returns (spawn a process, send a signal). Every edge is labelled.

    EXITED/FATAL --START--> STARTING --LOADING--> LOADING --READY--> READY <-> BUSY
    any live state --STOP--> STOPPING --EXIT--> EXITED (stopped)
    READY/BUSY --RETIRE or REPLACE--> STOPPING --EXIT--> STARTING (a new process, no backoff)
    any live state --EXIT--> BACKOFF --TICK at restart_at--> STARTING
                         \\--> FATAL when the slot died flap_limit times within flap_window
    STARTING/LOADING --LOAD_FAILED--> FATAL at once (its task modules do not import)
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, replace
from enum import Enum, IntEnum


class WorkerState(IntEnum):
    STARTING = 1  # spawned, not yet heard from
    LOADING = 2   # importing tasks, attaching models
    READY = 3     # idle, has credit
    BUSY = 4      # running job(s)
    STOPPING = 5  # SIGTERM sent
    EXITED = 6    # reaped and not to be restarted (stopped, or never started)
    BACKOFF = 7   # waiting to restart
    FATAL = 8     # died too often in the window; needs a restart


LIVE_STATES = frozenset({WorkerState.STARTING, WorkerState.LOADING, WorkerState.READY,
                         WorkerState.BUSY, WorkerState.STOPPING})
SERVING_STATES = frozenset({WorkerState.READY, WorkerState.BUSY})
BOOTING_STATES = frozenset({WorkerState.STARTING, WorkerState.LOADING})


class Event(Enum):
    START = "start"          # start a stopped or FATAL slot
    LOADING = "loading"      # the worker said it is loading
    READY = "ready"          # the worker said it is ready
    HEARTBEAT = "heartbeat"  # any sign of life from the worker
    JOB_STARTED = "job_started"
    JOB_IDLE = "job_idle"    # the worker holds no job any more
    STOP = "stop"            # stop the slot for good
    EXIT = "exit"            # the process was reaped; detail says how it ended
    LOAD_FAILED = "load_failed"  # reaped: it could not load its task modules; detail: why
    KILL = "kill"            # kill it now (a job passed its time limit); detail says why
    RETIRE = "retire"        # the worker is leaving to be replaced (recycling); detail: why
    REPLACE = "replace"      # the daemon replaces the worker (reload); detail: why
    TICK = "tick"            # time passed; deadlines are checked


@dataclass(frozen=True)
class Spawn:
    """Start a new worker process for the slot."""


@dataclass(frozen=True)
class Kill:
    """Send a signal to the slot's process."""
    signum: int


Action = Spawn | Kill


@dataclass(frozen=True)
class Policy:
    backoff_start: float = 0.1
    backoff_max: float = 30.0
    backoff_reset: float = 60.0
    flap_window: float = 60.0
    flap_limit: int = 5
    load_timeout: float = 120.0
    liveness: float = 5.0      # seconds of silence after which a serving worker is hung
    stop_timeout: float = 10.0

    def delay(self, level: int) -> float:
        """Restart delay after `level` deaths in a row that were not a healthy run."""
        return min(self.backoff_max, self.backoff_start * (2 ** min(level, 62)))


@dataclass(frozen=True)
class Slot:
    state: WorkerState = WorkerState.EXITED
    since: float = 0.0                # when the current state was entered
    spawned_at: float | None = None   # when the current (or last) process was spawned
    ready_at: float | None = None     # when the current process became READY
    heard: float = 0.0                # last message from the current process
    restart_at: float | None = None   # BACKOFF: when to spawn again
    killed: bool = False              # SIGKILL already sent to the current process
    deaths: tuple[float, ...] = ()    # death times within the flap window
    backoff_level: int = 0
    restarts: int = 0
    last_exit: str | None = None      # "killed by SIGKILL", "exit code 3", ...
    reason: str | None = None         # why it is FATAL, or why we killed it
    retiring: str | None = None       # STOPPING of its own accord, to be replaced: why


@dataclass(frozen=True)
class Transition:
    slot: Slot
    actions: tuple[Action, ...] = ()
    note: str | None = None           # a line worth logging


def _enter(slot: Slot, state: WorkerState, now: float, **changes: object) -> Slot:
    return replace(slot, state=state, since=now, **changes)  # type: ignore[arg-type]


def _spawn(slot: Slot, now: float, **changes: object) -> Transition:
    new = _enter(slot, WorkerState.STARTING, now, spawned_at=now, ready_at=None, heard=now,
                 restart_at=None, killed=False, **changes)
    return Transition(new, (Spawn(),))


def _exit(slot: Slot, now: float, detail: str, policy: Policy) -> Transition:
    last_exit = slot.reason and f"{detail} ({slot.reason})" or detail
    if slot.retiring:
        # STOPPING -> STARTING: recycled; not a death, so no backoff and no flap count.
        transition = _spawn(slot, now, restarts=slot.restarts + 1,
                            last_exit=f"recycled: {slot.retiring}", retiring=None, reason=None)
        return Transition(transition.slot, transition.actions,
                          note=f"worker recycled ({slot.retiring}); replacing it")
    if slot.state == WorkerState.STOPPING:
        # STOPPING -> EXITED: asked to stop, and it did.
        return Transition(_enter(slot, WorkerState.EXITED, now, last_exit=last_exit,
                                 reason=None, killed=False))
    deaths = tuple(t for t in slot.deaths if now - t < policy.flap_window) + (now,)
    healthy = slot.ready_at is not None and now - slot.ready_at >= policy.backoff_reset
    level = 0 if healthy else slot.backoff_level
    if len(deaths) >= policy.flap_limit:
        # live -> FATAL: crash loop; the other slots and the control channel carry on.
        reason = (f"died {len(deaths)} times within {policy.flap_window:g} s; "
                  f"last: {last_exit}")
        return Transition(
            _enter(slot, WorkerState.FATAL, now, deaths=deaths, last_exit=last_exit,
                   reason=reason, killed=False),
            note=f"slot is FATAL: {reason}")
    delay = policy.delay(level)
    # live -> BACKOFF
    return Transition(
        _enter(slot, WorkerState.BACKOFF, now, deaths=deaths, last_exit=last_exit, reason=None,
               backoff_level=level + 1, restart_at=now + delay, killed=False),
        note=f"worker {last_exit}; restarting in {delay:.2f} s")


def _tick(slot: Slot, now: float, policy: Policy) -> Transition:
    deadline = next_deadline(slot, policy)
    if deadline is None or now < deadline:
        return Transition(slot)
    if slot.state == WorkerState.BACKOFF:
        # BACKOFF -> STARTING
        return _spawn(slot, now, restarts=slot.restarts + 1)
    if slot.state in BOOTING_STATES:
        why = f"not ready within {policy.load_timeout:g} s"
    elif slot.state in SERVING_STATES:
        why = f"no heartbeat for {policy.liveness:g} s"
    else:  # STOPPING
        why = f"still running {policy.stop_timeout:g} s after SIGTERM"
    reason = None if slot.state == WorkerState.STOPPING else why
    # The state stays: the process is not gone until it is reaped (EXIT).
    return Transition(replace(slot, killed=True, reason=reason), (Kill(signal.SIGKILL),),
                      note=f"killing worker: {why}")


def next_deadline(slot: Slot, policy: Policy) -> float | None:
    """When a TICK may change the slot; None when only an event can."""
    if slot.state == WorkerState.BACKOFF:
        return slot.restart_at
    if slot.killed or slot.state not in LIVE_STATES:
        return None
    if slot.state in BOOTING_STATES:
        return (slot.spawned_at or slot.since) + policy.load_timeout
    if slot.state in SERVING_STATES:
        return slot.heard + policy.liveness
    return slot.since + policy.stop_timeout  # STOPPING


def step(slot: Slot, event: Event, now: float, policy: Policy,
         detail: str = "") -> Transition:
    """Apply one event to a slot. Events that do not fit the state change nothing."""
    state = slot.state
    live = state in LIVE_STATES
    if event is Event.START and state in (WorkerState.EXITED, WorkerState.FATAL):
        # EXITED/FATAL -> STARTING: a fresh start forgets the crash history.
        return _spawn(slot, now, deaths=(), backoff_level=0, reason=None)
    if event is Event.LOADING and state == WorkerState.STARTING:
        return Transition(_enter(slot, WorkerState.LOADING, now, heard=now))  # STARTING -> LOADING
    if event is Event.READY and state in BOOTING_STATES:
        # STARTING/LOADING -> READY
        return Transition(_enter(slot, WorkerState.READY, now, heard=now, ready_at=now))
    if event is Event.JOB_STARTED and state == WorkerState.READY:
        return Transition(_enter(slot, WorkerState.BUSY, now, heard=now))  # READY -> BUSY
    if event is Event.JOB_IDLE and state == WorkerState.BUSY:
        return Transition(_enter(slot, WorkerState.READY, now, heard=now))  # BUSY -> READY
    if event in (Event.HEARTBEAT, Event.LOADING, Event.READY, Event.JOB_STARTED,
                 Event.JOB_IDLE) and live:
        return Transition(replace(slot, heard=now))
    if event is Event.RETIRE and state in SERVING_STATES:
        # READY/BUSY -> STOPPING: the worker finishes what it runs and exits by itself.
        return Transition(_enter(slot, WorkerState.STOPPING, now, retiring=detail or "retired"))
    if event is Event.REPLACE and state in SERVING_STATES:
        # READY/BUSY -> STOPPING: SIGTERM lets it finish the job it runs; then a new one.
        return Transition(_enter(slot, WorkerState.STOPPING, now, retiring=detail or "replaced"),
                          (Kill(signal.SIGTERM),))
    if event is Event.STOP:
        if state == WorkerState.STOPPING and slot.retiring:
            # Retiring, and now the whole slot stops: no replacement.
            return Transition(replace(slot, retiring=None), (Kill(signal.SIGTERM),))
        if state in LIVE_STATES - {WorkerState.STOPPING}:
            # live -> STOPPING
            return Transition(_enter(slot, WorkerState.STOPPING, now, reason=None),
                              (Kill(signal.SIGTERM),))
        if state in (WorkerState.BACKOFF, WorkerState.FATAL):
            # BACKOFF/FATAL -> EXITED: nothing is running; just do not restart.
            return Transition(_enter(slot, WorkerState.EXITED, now, restart_at=None))
    if event is Event.LOAD_FAILED and state in BOOTING_STATES:
        # STARTING/LOADING -> FATAL: a configuration error; another try would fail the same.
        why = detail or "its task modules failed to import"
        return Transition(_enter(slot, WorkerState.FATAL, now, last_exit=why, reason=why,
                                 killed=False, deaths=slot.deaths + (now,)),
                          note=f"slot is FATAL, not retried: {why}")
    if event in (Event.EXIT, Event.LOAD_FAILED) and live:
        return _exit(slot, now, detail or "exited", policy)
    if event is Event.KILL and live and not slot.killed:
        # The state stays until the process is reaped (EXIT).
        reason = None if state == WorkerState.STOPPING else detail
        return Transition(replace(slot, killed=True, reason=reason), (Kill(signal.SIGKILL),),
                          note=f"killing worker: {detail}")
    if event is Event.TICK:
        return _tick(slot, now, policy)
    return Transition(slot)


def restart_reason(last_exit: str | None) -> str:
    """Why a slot was restarted, as one of a few labels (metrics count by it)."""
    text = last_exit or ""
    for needle, label in (("recycled: reload", "reload"), ("recycled", "recycled"),
                          ("no heartbeat", "hung"), ("not ready within", "load_timeout"),
                          ("time limit", "job_timeout"), ("killed by", "crashed"),
                          ("exit code", "crashed")):
        if needle in text:
            return label
    return "other"
