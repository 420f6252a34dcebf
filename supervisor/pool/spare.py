"""The spare worker: spawned ahead, loaded, waiting for a slot to take over.

Two uses share it. With ``[workers] standby = 1`` a spare is always kept, so a slot whose
worker died or was recycled is served again at once. During a reload it is the surge
worker: the pool loads one worker of the new configuration, then replaces an old worker
with it, one slot at a time, so the pool never has fewer loaded workers than slots.

A spare carries the configuration generation it was spawned with; one of an older
generation is never handed a slot. Processes the pool no longer wants (an old spare) are
kept in `leaving` until they are reaped.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

from supervisor.pool.spawner import Spawner, WorkerProcess, describe_death
from supervisor.proto import wire
from supervisor.proto.spec import STANDBY, WorkerSpec

log = logging.getLogger("supervisor.pool")
RETRY = 1.0              # seconds before a spare that died is replaced; doubles
RETRY_MAX = 60.0


class Spare:
    def __init__(self, spawner: Spawner, spec: Callable[[int], WorkerSpec],
                 load_timeout: float) -> None:
        self.spawner = spawner
        self.spec = spec
        self.load_timeout = load_timeout
        self.proc: WorkerProcess | None = None
        self.ready = False
        self.spawned_at = 0.0
        self.due: float | None = None  # when to spawn one; None: not wanted yet
        self.delay = RETRY
        self.leaving: list[WorkerProcess] = []
        self.env: dict[str, str] = {}

    def keep(self, now: float, generation: int, standby: bool, surge: bool,
             all_serving: bool) -> None:
        """Keep a spare while one is wanted: `standby`, once every slot serves (not before:
        it would slow the start down), or as the `surge` worker of a reload's rollout."""
        if self.due is None and standby and all_serving:
            self.due = now
        if standby or surge:
            self._tend(now, generation)
        elif self.proc is not None and self.ready:
            self.discard()  # the surge worker of a reload that needs it no more

    def _tend(self, now: float, generation: int) -> None:
        """Spawn one if it is due; kill one that does not load in time."""
        if self.proc is not None:
            if not self.ready and now - self.spawned_at > self.load_timeout:
                log.error("spare worker pid %d not ready within %g s: SIGKILL",
                          self.proc.pid, self.load_timeout)
                self.proc.signal(signal.SIGKILL)
                self.spawned_at = float("inf")  # once
            return
        if self.due is None or now < self.due:
            return
        spec = self.spec(STANDBY)
        try:
            self.proc = self.spawner.spawn(spec)
        except OSError as exc:
            log.error("spare: spawn failed: %s", exc)
            self.due = now + self.delay
            return
        self.proc.generation = generation
        self.env = spec.env  # its GPU, when the slots are spread over GPUs
        self.ready = False
        self.spawned_at = now
        log.info("spare worker pid %d spawned", self.proc.pid)

    def on_message(self, routing_id: bytes, message: wire.Message) -> bool:
        """True if the message came from the spare (and was taken care of)."""
        proc = self.proc
        if proc is None or routing_id not in proc.routing_ids:
            return False
        if isinstance(message, wire.Ready):
            self.ready = True
            self.delay = RETRY
            log.info("spare worker pid %d loaded and waiting", proc.pid)
        return True

    def take(self, generation: int, slot: int, now: float,
             send: Callable[[bytes, wire.Message], None]) -> WorkerProcess | None:
        """The loaded spare of this generation, told it now serves `slot`; the next spare
        is due at once. None if there is none to take."""
        if self.proc is None or not self.ready or self.proc.generation != generation:
            return None
        if self.spec(slot).env != self.env:  # it sees another GPU than the slot's
            return None
        proc, self.proc, self.ready = self.proc, None, False
        proc.slot = slot
        send(proc.routing_id, wire.Assign(slot=slot))
        self.due = now  # and load the next one
        log.info("slot %d: spare worker pid %d takes over", slot, proc.pid)
        return proc

    def discard(self) -> None:
        """Stop the spare (an older configuration's, or the daemon stops)."""
        if self.proc is not None:
            self.proc.signal(signal.SIGTERM)
            self.leaving.append(self.proc)
            self.proc, self.ready = None, False

    def reap(self, now: float, read: Callable[[WorkerProcess], None],
             retry: bool) -> tuple[WorkerProcess, str] | None:
        """Reap what exited; the current spare and how it ended, if it did."""
        for gone in [p for p in self.leaving if p.poll_exit() is not None]:
            _close(gone, read)
            self.leaving.remove(gone)
        proc = self.proc
        if proc is None or (code := proc.poll_exit()) is None:
            return None
        _close(proc, read)
        self.proc, self.ready = None, False
        detail = describe_death(code, list(proc.tail))
        if retry:
            # Something kills it (a broken task module, say): retry, less and less often.
            self.due = now + self.delay
            self.delay = min(RETRY_MAX, self.delay * 2)
            log.warning("spare worker pid %d %s; another in %.0f s", proc.pid, detail,
                        self.due - now)
        return proc, detail

    def processes(self) -> list[WorkerProcess]:
        return ([self.proc] if self.proc is not None else []) + self.leaving

    def next_deadline(self) -> float | None:
        if self.proc is None:
            return self.due
        return None if self.ready else self.spawned_at + self.load_timeout

    def status(self) -> dict[str, Any] | None:
        if self.proc is None:
            return None
        return {"pid": self.proc.pid, "ready": self.ready, "generation": self.proc.generation}


def _close(proc: WorkerProcess, read: Callable[[WorkerProcess], None]) -> None:
    read(proc)  # what it wrote last comes before its death notice
    proc.close_stderr()
    proc.process.close()
