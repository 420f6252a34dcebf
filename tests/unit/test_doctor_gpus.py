"""The doctor's gpus check on made-up probes: GPUs this machine does not have."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from supervisor.conf.settings import (Config, ModelSettings, SupervisorSettings,
                                      WorkersSettings)
from supervisor.doctor.checks import Facts, Probe, Status
from supervisor.doctor.devices import check_gpus
from supervisor.proto.paths import StatePaths

H200 = {"name": "NVIDIA H200", "total_bytes": 140 << 30, "free_bytes": 139 << 30}


def _facts(tmp_path: Path, device: str, probe: Probe | None, gpus: object = ()) -> Facts:
    config = Config(supervisor=SupervisorSettings(state_dir=str(tmp_path)),
                    workers=dataclasses.replace(WorkersSettings(), gpus=gpus),
                    models={"m": ModelSettings(package="p", device=device)})
    return Facts(config, StatePaths.for_state_dir(str(tmp_path)), probe=probe)


def test_no_model_asks_for_a_gpu(tmp_path: Path) -> None:
    verdict = check_gpus(_facts(tmp_path, "cpu", Probe(cuda=[], nvml=[H200])))
    assert verdict.status == Status.PASS
    assert verdict.detail == ("no model asks for a GPU (device cpu: CUDA_VISIBLE_DEVICES=\"\" "
                              "in the guards); the machine's NVIDIA GPUs (nvidia-ml-py): 0: "
                              "NVIDIA H200 (140 GiB, 1.0 GiB in use)")


def test_the_gpus_workers_would_see(tmp_path: Path) -> None:
    verdict = check_gpus(_facts(tmp_path, "cuda", Probe(cuda=[H200, H200]), gpus="all"))
    assert verdict.status == Status.PASS
    assert verdict.detail.startswith("2 CUDA device(s) visible to workers: 0: NVIDIA H200 "
                                     "(140 GiB, 1.0 GiB in use), 1: NVIDIA H200")
    assert verdict.detail.endswith("; workers spread over all of them")


def test_cuda_asked_for_and_none_seen_fails(tmp_path: Path) -> None:
    verdict = check_gpus(_facts(tmp_path, "cuda:0", Probe(cuda=[{"error": "RuntimeError: "
                                                                 "no driver"}])))
    assert verdict.status == Status.FAIL
    assert verdict.detail == ("model m: device cuda requested but no CUDA device is visible; "
                              "error: RuntimeError: no driver")
    assert "CUDA build of torch" in verdict.advice
    auto = check_gpus(_facts(tmp_path, "auto", Probe(cuda=[])))
    assert (auto.status, auto.detail) == (
        Status.PASS, "no CUDA device is visible: device auto runs on the CPU")
    unprobed = check_gpus(_facts(tmp_path, "cuda", None))
    assert unprobed.status == Status.WARN
