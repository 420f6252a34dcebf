"""Which configuration each worker runs, for reloads: every process carries the generation
of the configuration it was spawned with; slots running an older one are replaced one at a
time, each once a spare of the new generation has loaded. The first process of a new
generation to load or die is the canary: if it dies before any loads, the reload failed
and the pool goes back to the previous generation."""

from __future__ import annotations

from collections.abc import Sequence
from supervisor.pool import lifecycle
from supervisor.pool.lifecycle import WorkerState
from supervisor.pool.slot import WorkerSlot
from supervisor.pool.spawner import WorkerProcess


class Rollout:
    def __init__(self) -> None:
        self.generation = 0       # the configuration that new workers are spawned with
        self._generations = 0     # the last generation handed out
        self.canary_pending = False
        self.canary_failure: str | None = None

    def begin(self) -> None:
        """A new configuration: its generation, and a canary to wait for."""
        self._generations += 1
        self.generation = self._generations
        self.canary_pending, self.canary_failure = True, None

    def revert(self, generation: int) -> None:
        """Back to an earlier generation, whose workers stay."""
        self.generation = generation
        self.canary_pending, self.canary_failure = False, None

    def loaded(self, proc: WorkerProcess) -> None:
        """A worker is READY (or a spare loaded): the canary, if of this generation."""
        if proc.generation == self.generation:
            self.canary_pending = False

    def died(self, proc: WorkerProcess, detail: str) -> None:
        if self.canary_pending and proc.generation == self.generation:
            self.canary_pending = False
            self.canary_failure = detail

    def outdated(self, slots: Sequence[WorkerSlot]) -> list[WorkerSlot]:
        """Slots whose worker runs another configuration (including one being replaced)."""
        return [s for s in slots if s.proc is not None and s.proc.generation != self.generation]

    def next_to_replace(self, outdated: list[WorkerSlot],
                        spare: WorkerProcess | None, spare_ready: bool) -> WorkerSlot | None:
        """The old worker to replace now: one at a time, once a spare of this generation
        is loaded to take its place."""
        if not outdated or spare is None or not spare_ready or \
                spare.generation != self.generation or \
                any(s.state.state == WorkerState.STOPPING for s in outdated):
            return None
        return next((s for s in outdated if s.state.state in lifecycle.SERVING_STATES), None)
