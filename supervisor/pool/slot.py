"""A worker slot's record in the pool, and what a worker is spawned with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from supervisor.conf.settings import Config
from supervisor.pool.lifecycle import Slot
from supervisor.pool.spawner import NO_RESOURCES, WorkerProcess, describe_exit
from supervisor.proto.spec import WorkerSpec


def worker_spec(config: Config, index: int, endpoint: str, daemon_pid: int,
                models: dict[str, Any], state_dir: str) -> WorkerSpec:
    w = config.workers
    return WorkerSpec(slot=index, endpoint=endpoint, daemon_pid=daemon_pid,
                      tasks=tuple(w.tasks), heartbeat_interval=w.heartbeat_interval,
                      heartbeat_liveness=w.heartbeat_liveness,
                      log_level=config.supervisor.log_level, models=models,
                      max_jobs=w.max_jobs_per_worker, max_memory_mb=w.max_memory_mb,
                      module_path=config.module_path(), state_dir=state_dir)


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

    def exited(self, code: int) -> str:
        """Its process exited with `code` (read to its end): let it go; how it ended."""
        assert self.proc is not None
        proc, self.proc = self.proc, None
        proc.close_stderr()
        proc.process.close()
        self.last_tail = list(proc.tail)
        return describe_exit(code)

    def status(self, now: float, removing: bool) -> dict[str, Any]:
        """The slot as `docbrainctl status` shows it."""
        s = self.state
        alive = self.proc is not None
        row: dict[str, Any] = {
            "slot": self.index,
            "pid": self.proc.pid if self.proc else None,
            "state": s.state.name,
            "uptime_s": round(now - s.spawned_at, 3) if alive and s.spawned_at else None,
            "restarts": s.restarts,
            "last_exit": s.last_exit,
            "reason": s.reason,
            "tasks": self.tasks,
            "stderr_tail": [] if alive else self.last_tail,
            "generation": self.proc.generation if self.proc else None,
            "removing": removing,
        }
        row.update(self.proc.resources() if self.proc else NO_RESOURCES)
        return row
