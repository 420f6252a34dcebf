"""The worker-slot state machine, as tables of (state, event) -> (state, actions).

`step` is pure, so every edge is checked by building a slot in its start state and applying
one event at a chosen `now`; no processes, no clock.
"""

from __future__ import annotations

import dataclasses
import signal
from typing import Any

import pytest

from supervisor.pool.lifecycle import (LIVE_STATES, Action, Event, Kill, Policy, Slot, Spawn,
                                       Transition, WorkerState, next_deadline, step)

S = WorkerState
T0 = 100.0  # when the slot entered its state in the tables below
POLICY = Policy(backoff_start=1.0, backoff_max=8.0, backoff_reset=60.0, flap_window=60.0,
                flap_limit=3, load_timeout=20.0, liveness=5.0, stop_timeout=10.0)
TERM = Kill(signal.SIGTERM)
KILL = Kill(signal.SIGKILL)


def slot_in(state: WorkerState, **changes: Any) -> Slot:
    """A slot as `step` would have left it on entering `state` at T0."""
    base: dict[str, Any] = {"state": state, "since": T0}
    if state in LIVE_STATES:
        base.update(spawned_at=T0, heard=T0)
    if state in (S.READY, S.BUSY):
        base.update(ready_at=T0)
    if state == S.STOPPING:
        base.update(spawned_at=T0 - 30)
    if state == S.BACKOFF:
        base.update(restart_at=T0 + 1.0, deaths=(T0,), backoff_level=1, last_exit="exit code 1")
    if state == S.FATAL:
        base.update(deaths=(T0 - 2, T0 - 1, T0), backoff_level=3, last_exit="exit code 1",
                    reason="died 3 times within 60 s; last: exit code 1")
    base.update(changes)
    return Slot(**base)


def run(slot: Slot, *events: tuple[Event, float] | tuple[Event, float, str],
        policy: Policy = POLICY) -> Transition:
    """Apply events in order; the last transition is returned."""
    result = Transition(slot)
    for event, now, *detail in events:
        result = step(result.slot, event, now, policy, *detail)
    return result


# -- edges that change the state ----------------------------------------------------------

EDGES: list[tuple[WorkerState, Event, WorkerState, tuple[Action, ...]]] = [
    (S.EXITED, Event.START, S.STARTING, (Spawn(),)),
    (S.FATAL, Event.START, S.STARTING, (Spawn(),)),
    (S.STARTING, Event.LOADING, S.LOADING, ()),
    (S.STARTING, Event.READY, S.READY, ()),
    (S.LOADING, Event.READY, S.READY, ()),
    (S.READY, Event.JOB_STARTED, S.BUSY, ()),
    (S.BUSY, Event.JOB_IDLE, S.READY, ()),
    (S.STARTING, Event.STOP, S.STOPPING, (TERM,)),
    (S.LOADING, Event.STOP, S.STOPPING, (TERM,)),
    (S.READY, Event.STOP, S.STOPPING, (TERM,)),
    (S.BUSY, Event.STOP, S.STOPPING, (TERM,)),
    (S.BACKOFF, Event.STOP, S.EXITED, ()),
    (S.FATAL, Event.STOP, S.EXITED, ()),
    (S.STARTING, Event.EXIT, S.BACKOFF, ()),
    (S.LOADING, Event.EXIT, S.BACKOFF, ()),
    (S.READY, Event.EXIT, S.BACKOFF, ()),
    (S.BUSY, Event.EXIT, S.BACKOFF, ()),
    (S.STOPPING, Event.EXIT, S.EXITED, ()),
    (S.STARTING, Event.LOAD_FAILED, S.FATAL, ()),
    (S.LOADING, Event.LOAD_FAILED, S.FATAL, ()),
    (S.STOPPING, Event.LOAD_FAILED, S.EXITED, ()),  # asked to stop: it did
]


@pytest.mark.parametrize(("start", "event", "expected", "actions"), EDGES,
                         ids=[f"{s.name}-{e.name}" for s, e, _, _ in EDGES])
def test_edge(start: WorkerState, event: Event, expected: WorkerState,
              actions: tuple[Action, ...]) -> None:
    now = T0 + 3.0
    result = step(slot_in(start), event, now, POLICY)
    assert result.slot.state == expected
    assert result.actions == actions
    assert result.slot.since == now


def test_a_load_failure_is_fatal_at_once_with_its_reason() -> None:
    why = "task module 'mytasks' failed to import: ModuleNotFoundError: No module named 'x'"
    result = step(slot_in(S.LOADING), Event.LOAD_FAILED, T0 + 1, POLICY, why)
    assert result.slot.state == S.FATAL and result.actions == ()
    assert result.slot.reason == result.slot.last_exit == why
    assert result.note == f"slot is FATAL, not retried: {why}"
    # Serving workers do not load: such an exit is an ordinary death, restarted.
    assert step(slot_in(S.READY), Event.LOAD_FAILED, T0 + 1, POLICY, why).slot.state == \
        S.BACKOFF
    # A reload or restart starts it again.
    assert step(result.slot, Event.START, T0 + 2, POLICY).slot.state == S.STARTING


def test_start_spawns_a_fresh_process_and_forgets_crash_history() -> None:
    result = step(slot_in(S.FATAL, restarts=7), Event.START, 500.0, POLICY)
    slot = result.slot
    assert (slot.spawned_at, slot.heard, slot.ready_at, slot.restart_at) == (500.0, 500.0,
                                                                              None, None)
    assert (slot.deaths, slot.backoff_level, slot.reason, slot.killed) == ((), 0, None, False)
    assert slot.restarts == 7  # an operator's start is not a restart


def test_ready_records_when_the_process_became_ready() -> None:
    result = step(slot_in(S.LOADING), Event.READY, 110.0, POLICY)
    assert result.slot.ready_at == 110.0
    assert result.slot.heard == 110.0


def test_stop_from_backoff_cancels_the_pending_restart() -> None:
    result = step(slot_in(S.BACKOFF), Event.STOP, 100.5, POLICY)
    assert result.slot.restart_at is None
    assert next_deadline(result.slot, POLICY) is None
    assert step(result.slot, Event.TICK, 10_000.0, POLICY).slot == result.slot


def test_stop_clears_the_reason_of_an_earlier_kill() -> None:
    slot = slot_in(S.READY, killed=True, reason="no heartbeat for 5 s")
    result = step(slot, Event.STOP, 106.0, POLICY)
    assert result.slot.state == S.STOPPING
    assert result.slot.reason is None


# -- events that do not fit the state -----------------------------------------------------

NO_FIT: list[tuple[WorkerState, Event]] = [
    *[(s, Event.START) for s in (S.STARTING, S.LOADING, S.READY, S.BUSY, S.STOPPING,
                                 S.BACKOFF)],
    *[(s, e) for s in (S.EXITED, S.BACKOFF, S.FATAL)
      for e in (Event.LOADING, Event.READY, Event.HEARTBEAT, Event.JOB_STARTED,
                Event.JOB_IDLE, Event.EXIT, Event.LOAD_FAILED)],
    (S.STOPPING, Event.STOP),
    (S.EXITED, Event.STOP),
    (S.EXITED, Event.TICK),
    (S.FATAL, Event.TICK),
]


@pytest.mark.parametrize(("state", "event"), NO_FIT,
                         ids=[f"{s.name}-{e.name}" for s, e in NO_FIT])
def test_event_that_does_not_fit_changes_nothing(state: WorkerState, event: Event) -> None:
    slot = slot_in(state)
    result = step(slot, event, T0 + 0.5, POLICY, "exit code 9")
    assert result.slot == slot
    assert result.actions == ()


SIGNS_OF_LIFE: list[tuple[WorkerState, Event]] = [
    (S.STARTING, Event.HEARTBEAT),
    (S.LOADING, Event.LOADING),
    (S.LOADING, Event.HEARTBEAT),
    (S.READY, Event.READY),
    (S.READY, Event.JOB_IDLE),
    (S.READY, Event.HEARTBEAT),
    (S.BUSY, Event.JOB_STARTED),
    (S.BUSY, Event.HEARTBEAT),
    (S.BUSY, Event.LOADING),
    (S.STOPPING, Event.HEARTBEAT),
]


@pytest.mark.parametrize(("state", "event"), SIGNS_OF_LIFE,
                         ids=[f"{s.name}-{e.name}" for s, e in SIGNS_OF_LIFE])
def test_sign_of_life_only_moves_heard(state: WorkerState, event: Event) -> None:
    slot = slot_in(state)
    result = step(slot, event, T0 + 2.0, POLICY)
    assert result.slot == dataclasses.replace(slot, heard=T0 + 2.0)
    assert result.actions == ()


# -- deadlines (TICK) ---------------------------------------------------------------------

def test_backoff_restarts_at_restart_at() -> None:
    slot = slot_in(S.BACKOFF, restarts=2, killed=True)
    assert next_deadline(slot, POLICY) == T0 + 1.0
    early = step(slot, Event.TICK, T0 + 0.999, POLICY)
    assert early.slot == slot and early.actions == ()
    result = step(slot, Event.TICK, T0 + 1.0, POLICY)
    assert result.slot.state == S.STARTING
    assert result.actions == (Spawn(),)
    assert result.slot.restarts == 3
    assert (result.slot.spawned_at, result.slot.heard, result.slot.since) == (T0 + 1,) * 3
    assert result.slot.restart_at is None
    assert result.slot.killed is False
    assert result.slot.deaths == slot.deaths  # the flap history survives a restart


# (state, slot changes, deadline, reason after the kill)
KILL_DEADLINES: list[tuple[WorkerState, dict[str, Any], float, str | None]] = [
    (S.STARTING, {}, T0 + 20.0, "not ready within 20 s"),
    # LOADING counts from the spawn, not from entering LOADING.
    (S.LOADING, {"since": T0 + 15.0, "heard": T0 + 15.0}, T0 + 20.0, "not ready within 20 s"),
    (S.READY, {"heard": T0 + 3.0}, T0 + 8.0, "no heartbeat for 5 s"),
    (S.BUSY, {"heard": T0 + 3.0}, T0 + 8.0, "no heartbeat for 5 s"),
    (S.STOPPING, {}, T0 + 10.0, None),
]


@pytest.mark.parametrize(("state", "changes", "deadline", "reason"), KILL_DEADLINES,
                         ids=[s.name for s, *_ in KILL_DEADLINES])
def test_deadline_kills_with_sigkill_once(state: WorkerState, changes: dict[str, Any],
                                          deadline: float, reason: str | None) -> None:
    slot = slot_in(state, **changes)
    assert next_deadline(slot, POLICY) == deadline

    early = step(slot, Event.TICK, deadline - 0.001, POLICY)
    assert early.slot == slot and early.actions == ()

    result = step(slot, Event.TICK, deadline, POLICY)
    assert result.actions == (KILL,)
    assert result.slot.state == state  # gone only when reaped
    assert result.slot.killed is True
    assert result.slot.reason == reason
    assert result.note is not None and "killing worker" in result.note

    # No second kill, however late it gets.
    assert next_deadline(result.slot, POLICY) is None
    again = step(result.slot, Event.TICK, deadline + 1_000.0, POLICY)
    assert again.actions == ()
    assert again.slot == result.slot


def test_stopping_note_says_why_sigkill_followed_sigterm() -> None:
    result = step(slot_in(S.STOPPING), Event.TICK, T0 + 10.0, POLICY)
    assert result.note == "killing worker: still running 10 s after SIGTERM"


def test_heartbeat_pushes_the_liveness_deadline() -> None:
    slot = step(slot_in(S.READY), Event.HEARTBEAT, T0 + 4.0, POLICY).slot
    assert step(slot, Event.TICK, T0 + 5.0, POLICY).actions == ()
    assert step(slot, Event.TICK, T0 + 9.0, POLICY).actions == (KILL,)


def test_stop_timeout_counts_from_the_stop() -> None:
    stopping = step(slot_in(S.BUSY), Event.STOP, 200.0, POLICY).slot
    assert next_deadline(stopping, POLICY) == 210.0


@pytest.mark.parametrize("state", [S.EXITED, S.FATAL])
def test_no_deadline_when_nothing_runs(state: WorkerState) -> None:
    assert next_deadline(slot_in(state), POLICY) is None


# -- exits, backoff and flapping ----------------------------------------------------------

@pytest.mark.parametrize(("level", "expected"), [
    (0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.6), (5, 3.2), (6, 6.4), (7, 12.8),
    (8, 25.6), (9, 30.0), (10, 30.0), (10_000, 30.0),
])
def test_delay_doubles_from_backoff_start_up_to_backoff_max(level: int,
                                                            expected: float) -> None:
    assert Policy(backoff_start=0.1, backoff_max=30.0).delay(level) == pytest.approx(expected)


def test_restart_delay_doubles_with_each_unhealthy_death() -> None:
    policy = dataclasses.replace(POLICY, flap_limit=100)
    slot = step(Slot(), Event.START, 0.0, policy).slot
    delays = []
    now = 0.0
    for _ in range(6):
        now += 1.0
        result = step(slot, Event.EXIT, now, policy, "exit code 1")
        assert result.slot.state == S.BACKOFF
        delays.append(result.slot.restart_at - now)  # type: ignore[operator]
        now = result.slot.restart_at  # type: ignore[assignment]
        slot = step(result.slot, Event.TICK, now, policy).slot
        assert slot.state == S.STARTING
    assert delays == pytest.approx([1.0, 2.0, 4.0, 8.0, 8.0, 8.0])
    assert slot.restarts == 6


def _escalated(policy: Policy) -> Slot:
    """A READY slot whose restart delay has already grown (three quick deaths)."""
    slot = Slot(state=S.BACKOFF, since=0.0, restart_at=0.0, backoff_level=3,
                deaths=(), last_exit="exit code 1")
    slot = step(slot, Event.TICK, 0.0, policy).slot
    return step(slot, Event.READY, 1.0, policy).slot


def test_death_after_a_healthy_run_restarts_the_delay_from_backoff_start() -> None:
    slot = _escalated(POLICY)
    result = step(slot, Event.EXIT, 1.0 + POLICY.backoff_reset, POLICY, "exit code 1")
    assert result.slot.restart_at == pytest.approx(1.0 + POLICY.backoff_reset
                                                   + POLICY.backoff_start)
    assert result.slot.backoff_level == 1


def test_death_before_backoff_reset_keeps_escalating() -> None:
    slot = _escalated(POLICY)
    now = 1.0 + POLICY.backoff_reset - 0.01
    result = step(slot, Event.EXIT, now, POLICY, "exit code 1")
    assert result.slot.restart_at == pytest.approx(now + POLICY.delay(3))
    assert result.slot.backoff_level == 4


def test_a_job_does_not_reset_the_healthy_run_clock() -> None:
    slot = _escalated(POLICY)
    slot = run(slot, (Event.JOB_STARTED, 30.0), (Event.JOB_IDLE, 50.0)).slot
    assert slot.ready_at == 1.0
    result = step(slot, Event.EXIT, 61.0, POLICY, "exit code 1")
    assert result.slot.backoff_level == 1


def test_flap_limit_deaths_within_the_window_make_the_slot_fatal() -> None:
    slot = step(Slot(), Event.START, 0.0, POLICY).slot
    result = Transition(slot)
    for now in (10.0, 20.0, 30.0):
        result = step(result.slot, Event.EXIT, now, POLICY, "exit code 3")
        restart_at = result.slot.restart_at
        if result.slot.state == S.BACKOFF and restart_at is not None:
            result = step(result.slot, Event.TICK, restart_at, POLICY)
            assert result.slot.state == S.STARTING
    slot = result.slot
    assert slot.state == S.FATAL
    assert slot.reason == "died 3 times within 60 s; last: exit code 3"
    assert slot.last_exit == "exit code 3"
    assert slot.deaths == (10.0, 20.0, 30.0)
    assert result.actions == ()
    assert result.note == f"slot is FATAL: {slot.reason}"
    assert next_deadline(slot, POLICY) is None


@pytest.mark.parametrize(("earlier", "expected_deaths"), [
    ((0.0, 10.0), (70.0,)),        # both at or beyond the window: forgotten
    ((0.0, 50.0), (50.0, 70.0)),   # one inside the window
    ((10.0, 10.01), (10.01, 70.0)),  # exactly 60 s before is outside; just inside is kept
])
def test_deaths_older_than_the_window_are_forgotten(
        earlier: tuple[float, ...], expected_deaths: tuple[float, ...]) -> None:
    slot = slot_in(S.STARTING, deaths=earlier, spawned_at=69.0, since=69.0, heard=69.0)
    result = step(slot, Event.EXIT, 70.0, POLICY, "exit code 1")
    assert result.slot.state == S.BACKOFF
    assert result.slot.deaths == expected_deaths


@pytest.mark.parametrize(("slot_changes", "detail", "last_exit"), [
    ({}, "exit code 3", "exit code 3"),
    ({}, "", "exited"),
    ({"killed": True, "reason": "no heartbeat for 5 s"}, "killed by SIGKILL",
     "killed by SIGKILL (no heartbeat for 5 s)"),
])
def test_last_exit_carries_the_detail(slot_changes: dict[str, Any], detail: str,
                                      last_exit: str) -> None:
    result = step(slot_in(S.READY, **slot_changes), Event.EXIT, 150.0, POLICY, detail)
    assert result.slot.state == S.BACKOFF
    assert result.slot.last_exit == last_exit
    assert result.slot.reason is None
    assert result.slot.killed is False
    assert result.note is not None and last_exit in result.note


def test_exit_while_stopping_is_a_clean_stop() -> None:
    slot = slot_in(S.STOPPING, killed=True, deaths=(T0,))
    result = step(slot, Event.EXIT, 105.0, POLICY, "killed by SIGKILL")
    assert result.slot.state == S.EXITED
    assert result.slot.last_exit == "killed by SIGKILL"
    assert result.slot.deaths == (T0,)  # a requested stop is not a death
    assert (result.slot.killed, result.slot.reason, result.slot.restart_at) == (False, None,
                                                                                 None)


def test_kill_reason_is_kept_in_the_fatal_reason() -> None:
    slot = slot_in(S.LOADING, deaths=(T0 - 2, T0 - 1))
    killed = step(slot, Event.TICK, T0 + 20.0, POLICY).slot
    result = step(killed, Event.EXIT, T0 + 20.5, POLICY, "killed by SIGKILL")
    assert result.slot.state == S.FATAL
    assert result.slot.reason == ("died 3 times within 60 s; last: killed by SIGKILL "
                                  "(not ready within 20 s)")


def test_a_whole_life() -> None:
    result = run(
        Slot(),
        (Event.START, 0.0), (Event.LOADING, 0.5), (Event.READY, 2.0),
        (Event.JOB_STARTED, 3.0), (Event.HEARTBEAT, 4.0), (Event.JOB_IDLE, 5.0),
        (Event.EXIT, 6.0, "exit code 1"), (Event.TICK, 7.0), (Event.READY, 8.0),
        (Event.STOP, 9.0), (Event.EXIT, 9.5, "exit code 0"),
    )
    slot = result.slot
    assert slot.state == S.EXITED
    assert slot.restarts == 1
    assert slot.last_exit == "exit code 0"
    assert slot.deaths == (6.0,)


# -- recycling -----------------------------------------------------------------------------

@pytest.mark.parametrize("state", [WorkerState.READY, WorkerState.BUSY])
def test_retire_stops_without_a_signal_and_exit_respawns_at_once(state: WorkerState) -> None:
    policy = Policy()
    slot = Slot(state=state, since=1.0, spawned_at=1.0, ready_at=1.0, heard=1.0,
                restarts=2, deaths=(0.5,), backoff_level=3)
    retiring = step(slot, Event.RETIRE, 5.0, policy, "500 jobs done")
    assert retiring.slot.state == WorkerState.STOPPING
    assert retiring.actions == ()
    assert retiring.slot.retiring == "500 jobs done"
    replaced = step(retiring.slot, Event.EXIT, 6.0, policy, "exit code 0")
    assert replaced.slot.state == WorkerState.STARTING
    assert replaced.actions == (Spawn(),)
    assert replaced.slot.restarts == 3
    assert replaced.slot.last_exit == "recycled: 500 jobs done"
    assert replaced.slot.deaths == (0.5,)  # not a death: no flap count, no backoff
    assert replaced.slot.retiring is None


def test_retiring_worker_that_hangs_is_killed_after_stop_timeout() -> None:
    policy = Policy(stop_timeout=2.0)
    slot = step(Slot(state=WorkerState.READY), Event.RETIRE, 10.0, policy, "why").slot
    assert step(slot, Event.TICK, 11.9, policy).actions == ()
    assert step(slot, Event.TICK, 12.1, policy).actions == (Kill(signal.SIGKILL),)


def test_stop_while_retiring_means_no_replacement() -> None:
    policy = Policy()
    slot = step(Slot(state=WorkerState.BUSY), Event.RETIRE, 1.0, policy, "why").slot
    stopped = step(slot, Event.STOP, 2.0, policy)
    assert stopped.slot.retiring is None
    assert stopped.actions == (Kill(signal.SIGTERM),)
    assert step(stopped.slot, Event.EXIT, 3.0, policy, "exit code 0").slot.state == \
        WorkerState.EXITED


@pytest.mark.parametrize("state", [WorkerState.STARTING, WorkerState.LOADING,
                                   WorkerState.BACKOFF, WorkerState.FATAL, WorkerState.EXITED])
def test_retire_only_from_serving_states(state: WorkerState) -> None:
    slot = Slot(state=state)
    assert step(slot, Event.RETIRE, 1.0, Policy(), "why").slot == slot


@pytest.mark.parametrize("state", [WorkerState.READY, WorkerState.BUSY])
def test_replace_stops_a_serving_worker_and_starts_another_without_backoff(
        state: WorkerState) -> None:
    policy = Policy()
    slot = Slot(state=state, since=1.0, spawned_at=1.0, ready_at=1.0, heard=1.0,
                deaths=(0.5,), backoff_level=2)
    replacing = step(slot, Event.REPLACE, 5.0, policy, "reload")
    assert replacing.slot.state == WorkerState.STOPPING
    assert replacing.actions == (Kill(signal.SIGTERM),)
    assert replacing.slot.retiring == "reload"
    new = step(replacing.slot, Event.EXIT, 6.0, policy, "exit code 0")
    assert new.slot.state == WorkerState.STARTING and new.actions == (Spawn(),)
    assert new.slot.last_exit == "recycled: reload"
    assert new.slot.deaths == (0.5,)  # not a death


@pytest.mark.parametrize("state", [WorkerState.STARTING, WorkerState.LOADING,
                                   WorkerState.STOPPING, WorkerState.EXITED,
                                   WorkerState.BACKOFF, WorkerState.FATAL])
def test_replace_only_from_serving_states(state: WorkerState) -> None:
    slot = Slot(state=state)
    assert step(slot, Event.REPLACE, 1.0, Policy(), "reload") == Transition(slot)
