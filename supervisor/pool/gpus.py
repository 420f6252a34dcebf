"""Where workers run their models: each model's device ([models.NAME] device) and the GPU
of each worker slot ([workers] gpus), decided in the daemon, which never initialises CUDA
(a CUDA context does not survive into a child, and the daemon needs none: it loads and
checks models on the CPU). The CUDA devices are counted by a fresh interpreter.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from supervisor.conf.settings import ModelSettings
from supervisor.proto.spec import STANDBY

log = logging.getLogger("supervisor.pool")
COUNT_TIMEOUT = 120.0  # seconds the interpreter that counts the CUDA devices may take
# Where a Linux machine with an NVIDIA or AMD driver shows it; without any, no CUDA device.
DRIVER_PATHS = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd")
_COUNT = "import torch; print(torch.cuda.device_count())"


class DeviceError(Exception):
    """A configured device that this machine does not have; the message names the model."""


def wants_cuda(models: Mapping[str, ModelSettings]) -> bool:
    return any(m.device.startswith("cuda") or m.device == "auto" for m in models.values())


def visible_cuda_devices(environ: Mapping[str, str]) -> int:
    """How many CUDA devices a worker with `environ` sees, asked of a fresh interpreter
    (0 at once where no driver is installed, and on macOS)."""
    if sys.platform == "darwin" or environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return 0
    if sys.platform.startswith("linux") and not any(map(os.path.exists, DRIVER_PATHS)):
        return 0
    try:
        done = subprocess.run([sys.executable, "-c", _COUNT], env=dict(environ),
                              capture_output=True, text=True, timeout=COUNT_TIMEOUT,
                              check=False)
        return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else 0
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        log.warning("counting the CUDA devices failed (%s): taken as none", exc)
        return 0


@dataclass(frozen=True)
class Placement:
    """Each model's device in a worker, and the GPUs the worker slots are spread over."""
    devices: dict[str, str] = field(default_factory=dict)  # cpu, cuda:N or mps
    gpus: tuple[str, ...] = ()  # CUDA_VISIBLE_DEVICES of slot i: gpus[i % len]; ()

    def gpu_of(self, slot: int) -> str | None:
        """The GPU a slot's worker sees alone (a standby: the first GPU's)."""
        if not self.gpus:
            return None
        return self.gpus[max(slot, 0) % len(self.gpus)] if slot != STANDBY else self.gpus[0]

    def worker_env(self, slot: int) -> dict[str, str]:
        gpu = self.gpu_of(slot)
        return {} if gpu is None else {"CUDA_VISIBLE_DEVICES": gpu}


def plan(models: Mapping[str, ModelSettings], gpus: str | tuple[int, ...],
         environ: Mapping[str, str],
         count: Callable[[Mapping[str, str]], int] = visible_cuda_devices) -> Placement:
    """The placement of a configuration; DeviceError for a device the machine lacks.
    `count` (the CUDA devices a worker would see) is asked only when a model wants CUDA."""
    visible = count(environ) if wants_cuda(models) else 0
    devices = {}
    for name, settings in models.items():
        device = settings.device
        if device == "auto":
            device = "cuda" if visible else "cpu"
        if device.startswith("cuda"):
            if not visible:
                raise DeviceError(f"model {name}: device {settings.device} requested but no "
                                  f"CUDA device is visible")
            index = int(device.partition(":")[2] or 0)
            if gpus and index:
                raise DeviceError(f"model {name}: device {device} with [workers] gpus: each "
                                  f"worker sees its GPU alone, as cuda:0 (set device = "
                                  f"\"cuda\")")
            if index >= visible:
                raise DeviceError(f"model {name}: device {device} requested but "
                                  f"{visible} CUDA device(s) are visible")
            device = f"cuda:{index}"
        devices[name] = device
    if not gpus or not any(d.startswith("cuda") for d in devices.values()):
        return _told(Placement(devices))
    # The daemon's own CUDA_VISIBLE_DEVICES (if any) maps indexes to the devices it names.
    named = [d.strip() for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    ids = named[:visible] if named else [str(i) for i in range(visible)]
    wanted = list(range(visible)) if isinstance(gpus, str) else list(gpus)  # "all"
    missing = [i for i in wanted if i >= visible]
    if missing:
        raise DeviceError(f"workers.gpus: GPU {missing[0]} requested but {visible} CUDA "
                          f"device(s) are visible")
    return _told(Placement(devices, tuple(ids[i] for i in wanted)))


def _told(placement: Placement) -> Placement:
    """The placement, logged when a model is not on the CPU."""
    if any(d != "cpu" for d in placement.devices.values()):
        spread = (f"; worker slot i sees GPU {list(placement.gpus)}[i % {len(placement.gpus)}]"
                  " alone, as cuda:0" if placement.gpus else "")
        log.info("devices: %s%s", ", ".join(f"model {n} on {d}" for n, d in
                                            placement.devices.items()), spread)
    return placement
