"""The doctor's check of the GPUs: those the models ask for ([models.NAME] device) against
those a fresh interpreter with the daemon's guards sees (the probe), and every NVIDIA GPU of
the machine where nvidia-ml-py is installed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from supervisor.doctor.checks import Facts
from supervisor.doctor.verdict import Status, Verdict


def _listed(devices: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for i, d in enumerate(devices):
        if "error" in d:
            parts.append(f"error: {d['error']}")
            continue
        used = (d["total_bytes"] - d["free_bytes"]) / 2**30
        parts.append(f"{i}: {d['name']} ({d['total_bytes'] / 2**30:.0f} GiB, "
                     f"{used:.1f} GiB in use)")
    return ", ".join(parts)


def check_gpus(f: Facts) -> Verdict:
    wanted = {n: m.device for n, m in f.config.models.items()
              if m.device.startswith("cuda") or m.device == "auto"}
    probe = f.probe
    seen = [d for d in (probe.cuda or []) if "error" not in d] if probe else []
    machine = (f"; the machine's NVIDIA GPUs (nvidia-ml-py): {_listed(probe.nvml)}"
               if probe and probe.nvml else "")
    if not wanted:
        return Verdict(Status.PASS, f"no model asks for a GPU (device cpu: "
                       f"CUDA_VISIBLE_DEVICES=\"\" in the guards){machine}")
    if probe is None or probe.cuda is None:
        return Verdict(Status.WARN, "the GPUs were not probed (the probe did not run to "
                       "its end)" + machine, "see the torch check")
    if seen:
        spread = f.config.workers.gpus
        how = (f"; workers spread over {'all of them' if spread == 'all' else list(spread)}"
               if spread else "; every worker sees them all")
        return Verdict(Status.PASS, f"{len(seen)} CUDA device(s) visible to workers: "
                       f"{_listed(probe.cuda or [])}{how}{machine}")
    errors = _listed([d for d in probe.cuda if "error" in d])
    cuda = sorted(n for n, d in wanted.items() if d != "auto")
    if not cuda:
        return Verdict(Status.PASS, f"no CUDA device is visible: device auto runs on the "
                       f"CPU{'; ' + errors if errors else ''}{machine}")
    return Verdict(Status.FAIL, f"model {', '.join(cuda)}: device cuda requested but no CUDA "
                   f"device is visible{'; ' + errors if errors else ''}{machine}",
                   "install the NVIDIA driver and a CUDA build of torch (torch.version.cuda), "
                   "check CUDA_VISIBLE_DEVICES, or set device = \"auto\" or \"cpu\"")
