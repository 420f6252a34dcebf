"""What the daemon gives a worker it spawns, and what a worker's exit means: the contract
between the pool (supervisor.pool) and the worker program (workers.main).

A spawned child re-imports modules, so everything a worker needs comes in its `WorkerSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STANDBY = -1  # the slot of a worker spawned ahead, before any slot needs it
# The exit code of a worker whose task modules do not import (sysexits' EX_CONFIG): the
# configuration is wrong, and starting the worker again cannot mend it, so the daemon does
# not retry; its last stderr line says why (LOAD_FAILED_MARK, then the error).
LOAD_FAILED = 78
LOAD_FAILED_MARK = "cannot load: "


@dataclass(frozen=True)
class WorkerSpec:
    slot: int
    endpoint: str              # the daemon's workers ROUTER
    daemon_pid: int
    tasks: tuple[str, ...]
    heartbeat_interval: float
    heartbeat_liveness: int
    log_level: str = "info"
    # name -> the daemon's loaded model (its weights travel as shared memory, not copies)
    models: dict[str, Any] = field(default_factory=dict)
    model_kinds: dict[str, str] = field(default_factory=dict)  # name -> its kind
    devices: dict[str, str] = field(default_factory=dict)  # name -> cpu, cuda:N or mps
    # Variables of this worker alone, set at its spawn: CUDA_VISIBLE_DEVICES of its GPU.
    env: dict[str, str] = field(default_factory=dict)
    max_jobs: int = 0        # recycle after this many jobs (0: never)
    max_memory_mb: int = 0   # recycle above this much memory of its own, USS (0: never)
    module_path: tuple[str, ...] = ()  # searched first for task modules (Config.module_path)
    state_dir: str = ""      # the daemon's, named in the process title ("": not named)
