"""A worker slot's record in the pool, and what a worker is spawned with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from supervisor.conf.settings import Config
from supervisor.pool.gpus import Placement
from supervisor.pool.lifecycle import Slot
from supervisor.pool.spawner import NO_RESOURCES, WorkerProcess, describe_exit
from supervisor.proto.spec import WorkerSpec


def worker_spec(config: Config, index: int, endpoint: str, daemon_pid: int,
                models: dict[str, Any], state_dir: str,
                placement: Placement | None = None) -> WorkerSpec:
    w = config.workers
    placement = placement or Placement()
    return WorkerSpec(slot=index, endpoint=endpoint, daemon_pid=daemon_pid,
                      model_kinds={n: m.kind for n, m in config.models.items()},
                      devices={n: d for n, d in placement.devices.items() if n in models},
                      env=placement.worker_env(index),
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
    devices: dict[str, str] = field(default_factory=dict)  # its models' (READY says)
    gpu_memory: int | None = None  # bytes it holds on its GPU (its heartbeats say)
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
        self.devices, self.gpu_memory = {}, None
        return describe_exit(code)

    def status(self, now: float, removing: bool, gpu: str | None = None) -> dict[str, Any]:
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
            "devices": self.devices if alive else {},
            "gpu": gpu,  # the CUDA_VISIBLE_DEVICES of its slot, when spread over GPUs
            "gpu_memory_bytes": self.gpu_memory if alive else None,
        }
        row.update(self.proc.resources() if self.proc else NO_RESOURCES)
        return row
