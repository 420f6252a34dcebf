"""The device logic that a machine without a GPU can check: a worker is spawned with its
own CUDA_VISIBLE_DEVICES, the daemon loads a model meant for CUDA without initialising
CUDA, and a worker that cannot reach its device says so in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers_models import build, write_environ

from supervisor.pool.spawner import Spawner

REPO = Path(__file__).resolve().parents[2]


def test_a_worker_is_spawned_with_its_own_variables(tmp_path: Path) -> None:
    out = tmp_path / "environ.json"
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    spawner = Spawner()
    try:
        process, read_fd = spawner._start(write_environ, (str(out), ["CUDA_VISIBLE_DEVICES"]),
                                          "env-test", {"CUDA_VISIBLE_DEVICES": "3"})
        os.close(read_fd)
        process.join(120)
        assert process.exitcode == 0
        assert json.loads(out.read_text()) == {"CUDA_VISIBLE_DEVICES": "3"}
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # the daemon's own is unchanged
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


# Run in a fresh interpreter: CUDA's initialisation is made to fail loudly, then the daemon's
# loading of a model configured for CUDA runs, and a worker's placement on CUDA after it.
NEVER_CUDA = """
import json, sys
import torch
import torch.cuda

calls = []
def watch(owner, name):
    original = getattr(owner, name)
    def watched(*args, **kwargs):
        text = repr((args[1:], kwargs))
        if name != "to" or "cuda" in text:
            calls.append(f"{owner.__name__}.{name}{text}")
        return original(*args, **kwargs)
    setattr(owner, name, watched)
# Every way in to CUDA: its initialisation and queries, and moving a tensor or module there.
for name in ("_lazy_init", "init", "is_available", "device_count", "current_device",
             "set_device", "mem_get_info", "memory_reserved"):
    watch(torch.cuda, name)
for owner in (torch.Tensor, torch.nn.Module):
    watch(owner, "to")
    watch(owner, "cuda")

from supervisor.conf.settings import ModelSettings
from supervisor.daemon.models import preload
from workers import models

loaded = preload({"tiny": ModelSettings(path=sys.argv[1], device="cuda", dtype="float16")})
vector = loaded["tiny"].encode(["loaded on the CPU"])[0]
report = {"initialised": torch.cuda.is_initialized(), "daemon_calls": list(calls),
          "dtype": str(next(loaded["tiny"].module.parameters()).dtype), "dim": len(vector)}
try:
    models.attach(loaded, {"tiny": "sentence-embedding"}, {"tiny": "cuda:0"})
except models.PlacementError as exc:
    report["placement"] = str(exc)
report["worker_calls"] = calls[len(report["daemon_calls"]):]
print(json.dumps(report))
"""


def test_the_daemon_loads_a_cuda_model_without_initialising_cuda(tmp_path: Path) -> None:
    path = build("bert", tmp_path / "tiny")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run([sys.executable, "-c", NEVER_CUDA, str(path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["daemon_calls"] == [] and report["dim"] == 32
    assert report["initialised"] is False
    assert report["dtype"] == "torch.float16"  # one shared copy in the configured dtype
    # Placing it on CUDA is the worker's business: here, where there is none, it fails
    # with one line naming the model (the worker exits as a load failure, not retried).
    assert report["placement"].startswith("model tiny: cannot run on cuda:0: ")
    assert report["worker_calls"]  # that was the first time anything asked for CUDA
