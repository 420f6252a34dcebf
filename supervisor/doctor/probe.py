"""The doctor's probe: a fresh interpreter, as a worker or a new daemon would be, imports
torch and loads each model, then prints one marked JSON line for `docbrainctl doctor`."""

from __future__ import annotations

import json
import time
from typing import Any

from supervisor.conf.settings import ModelSettings
from supervisor.doctor.checks import PROBE_MARK


def _one_line(exc: BaseException) -> str:
    return (f"{type(exc).__name__}: {exc}".strip().splitlines() or [""])[0]


def _cuda_devices(torch: Any) -> list[dict[str, Any]]:
    """The CUDA devices this interpreter sees (it may initialise CUDA: it is no daemon)."""
    devices = []
    try:
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            devices.append({"name": torch.cuda.get_device_name(index), "total_bytes": total,
                            "free_bytes": free})
    except Exception as exc:  # a broken driver: what it said
        devices.append({"error": _one_line(exc)})
    return devices


def nvml_devices() -> list[dict[str, Any]] | None:
    """Every NVIDIA GPU of the machine, whatever CUDA_VISIBLE_DEVICES says, from nvidia-ml-py
    (which does not initialise CUDA); None without it."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # pynvml.NVMLError: no driver
        return [{"error": _one_line(exc)}]
    try:
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory, name = pynvml.nvmlDeviceGetMemoryInfo(handle), pynvml.nvmlDeviceGetName(handle)
            devices.append({"name": name.decode() if isinstance(name, bytes) else str(name),
                            "total_bytes": int(memory.total), "free_bytes": int(memory.free)})
        return devices
    finally:
        pynvml.nvmlShutdown()


def probe_main(supervisor_dir: str | None, request: str) -> None:
    """The probe's side: import torch, load each model, print one marked JSON line."""
    from supervisor.daemon.models import preload

    out: dict[str, Any] = {"supervisor_dir": supervisor_dir, "models": {}}
    started = time.perf_counter()
    try:
        import torch
        out.update(torch_version=str(torch.__version__), torch_threads=torch.get_num_threads(),
                   torch_import_s=time.perf_counter() - started)
    except Exception as exc:  # an ImportError, or an OSError from a broken library
        out["torch_error"] = _one_line(exc)
    else:
        out["cuda"], out["nvml"] = _cuda_devices(torch), nvml_devices()
        for name, settings in json.loads(request).items():
            started = time.perf_counter()
            try:
                loaded = preload({name: ModelSettings(**settings)})[name]
                out["models"][name] = {key: getattr(loaded, key, None)
                                       for key in ("dim", "form", "note")}
                out["models"][name]["load_s"] = time.perf_counter() - started
            except Exception as exc:
                out["models"][name] = {"error": _one_line(exc)}
    print(PROBE_MARK + json.dumps(out), flush=True)
