"""Devices without a GPU: the placement of models and worker slots (gpus.plan) with a given
count of CUDA devices, the guards, and the errors of a device this machine lacks."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import pytest

from supervisor.conf import envguard
from supervisor.conf.config import ConfigError, load_config
from supervisor.conf.settings import Config, ModelSettings
from supervisor.pool import gpus
from supervisor.pool.gpus import DeviceError, Placement, plan
from supervisor.proto.spec import STANDBY


def _models(**devices: str) -> dict[str, ModelSettings]:
    return {name: ModelSettings(package="p", device=d) for name, d in devices.items()}


def _count(n: int) -> object:
    asked: list[Mapping[str, str]] = []

    def count(environ: Mapping[str, str]) -> int:
        asked.append(environ)
        return n
    count.asked = asked  # type: ignore[attr-defined]
    return count


def test_cpu_models_never_count_the_gpus() -> None:
    count = _count(4)
    placement = plan(_models(a="cpu", b="mps"), "all", {}, count)  # type: ignore[arg-type]
    assert placement == Placement({"a": "cpu", "b": "mps"}, ())
    assert count.asked == []  # type: ignore[attr-defined]
    assert placement.worker_env(0) == {} and placement.gpu_of(3) is None


def test_auto_takes_the_gpu_when_there_is_one_and_the_cpu_when_not() -> None:
    assert plan(_models(a="auto"), (), {}, _count(0)).devices == {"a": "cpu"}  # type: ignore
    assert plan(_models(a="auto"), (), {}, _count(1)).devices == {"a": "cuda:0"}  # type: ignore


@pytest.mark.parametrize("device,gpus_setting,visible,message", [
    ("cuda", (), 0, "model a: device cuda requested but no CUDA device is visible"),
    ("cuda:1", (), 0, "model a: device cuda:1 requested but no CUDA device is visible"),
    ("cuda:2", (), 2, "model a: device cuda:2 requested but 2 CUDA device(s) are visible"),
    ("cuda:1", "all", 2, "model a: device cuda:1 with [workers] gpus: each worker sees its "
     "GPU alone, as cuda:0 (set device = \"cuda\")"),
    ("cuda", (0, 3), 2, "workers.gpus: GPU 3 requested but 2 CUDA device(s) are visible"),
])
def test_a_device_the_machine_lacks_is_one_line(device: str, gpus_setting: object,
                                                visible: int, message: str) -> None:
    with pytest.raises(DeviceError) as refused:
        plan(_models(a=device), gpus_setting, {}, _count(visible))  # type: ignore[arg-type]
    assert str(refused.value) == message


def test_slots_are_spread_over_the_gpus_each_seeing_its_own() -> None:
    placement = plan(_models(a="cuda", b="cpu"), "all", {}, _count(2))  # type: ignore
    assert placement.devices == {"a": "cuda:0", "b": "cpu"}
    assert [placement.worker_env(i) for i in range(5)] == [
        {"CUDA_VISIBLE_DEVICES": g} for g in ("0", "1", "0", "1", "0")]
    assert placement.gpu_of(STANDBY) == "0"  # a standby takes over slots of the first GPU
    chosen = plan(_models(a="cuda"), (1,), {}, _count(2))  # type: ignore[arg-type]
    assert [chosen.gpu_of(i) for i in range(3)] == ["1", "1", "1"]


def test_gpu_indexes_count_within_the_daemons_own_visible_devices() -> None:
    environ = {"CUDA_VISIBLE_DEVICES": "4,6,7"}
    count = _count(3)
    placement = plan(_models(a="cuda"), (0, 2), environ, count)  # type: ignore[arg-type]
    assert placement.gpus == ("4", "7")
    assert count.asked == [environ]  # type: ignore[attr-defined]
    # Without gpus, every worker sees what the daemon sees, and cuda:N is that device.
    shared = plan(_models(a="cuda:2"), (), environ, _count(3))  # type: ignore[arg-type]
    assert shared == Placement({"a": "cuda:2"}, ()) and shared.worker_env(1) == {}


def test_counting_asks_no_interpreter_where_no_gpu_can_be() -> None:
    assert gpus.visible_cuda_devices({"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert gpus.visible_cuda_devices({"CUDA_VISIBLE_DEVICES": "-1"}) == 0


def _config(device: str) -> Config:
    return Config(models={"m": ModelSettings(package="p", device=device)})


def test_the_guards_hide_cuda_unless_a_model_asks_for_it() -> None:
    assert envguard.guards(_config("cpu"), cores=4)["CUDA_VISIBLE_DEVICES"] == ""
    assert envguard.guards(_config("cpu"), cores=4)["MPS_VISIBLE_DEVICES"] == ""
    for device in ("cuda", "cuda:1", "auto"):
        guards = envguard.guards(_config(device), cores=4)
        assert "CUDA_VISIBLE_DEVICES" not in guards and guards["MPS_VISIBLE_DEVICES"] == ""
        assert guards["OMP_NUM_THREADS"] == "2"  # the thread budget is per worker still
    assert "MPS_VISIBLE_DEVICES" not in envguard.guards(_config("mps"), cores=4)
    # [env] still has the last word.
    assert envguard.guards(Config(models=_config("cuda").models,
                                  env={"CUDA_VISIBLE_DEVICES": "1"}), cores=4)[
        "CUDA_VISIBLE_DEVICES"] == "1"


def test_gpus_in_the_environment() -> None:
    assert load_config(None, environ={"DOCBRAIN_WORKERS_GPUS": "all"}).workers.gpus == "all"
    assert load_config(None, environ={"DOCBRAIN_WORKERS_GPUS": "0,2"}).workers.gpus == (0, 2)
    assert load_config(None, environ={"DOCBRAIN_WORKERS_GPUS": "[1]"}).workers.gpus == (1,)
    assert load_config(None, environ={}).workers.gpus == ()


@pytest.mark.parametrize("value,message", [
    ("[0, 0]", "workers.gpus: lists a GPU twice: [0, 0]"),
    ('"some"', "workers.gpus: must be \"all\" or a list of GPU indexes, got 'some'"),
    ("3", "workers.gpus: expected a string or a list of integers, got an integer"),
    ("[-1]", "workers.gpus: GPU indexes must not be negative, got [-1]"),
    ('["0"]', "workers.gpus: expected a string or a list of integers, got a list"),
])
def test_bad_gpus_are_one_line(tmp_path: Path, value: str, message: str) -> None:
    path = tmp_path / "docbrain.toml"
    path.write_text(f"[workers]\ngpus = {value}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(str(path), environ={})
    assert str(refused.value) == message


def test_what_a_worker_tells_of_its_devices_goes_over_the_wire() -> None:
    from supervisor.proto import wire

    beat = wire.decode(wire.encode(wire.Heartbeat(gpu_memory=123)))
    assert beat == wire.Heartbeat(gpu_memory=123)
    assert wire.decode(wire.encode(wire.Heartbeat())) == wire.Heartbeat(gpu_memory=None)
    ready = wire.decode(wire.encode(wire.Ready(tasks={}, devices={"m": "cuda:0"})))
    assert isinstance(ready, wire.Ready) and ready.devices == {"m": "cuda:0"}
    with pytest.raises(wire.ProtocolError):
        wire.decode([wire.encode(wire.Heartbeat())[0], b'{"gpu_memory": "lots"}'])


def test_a_worker_on_the_cpu_reports_no_gpu_memory() -> None:
    from workers import models

    models.attach({"a": object()}, {"a": "mykind:K"}, {"a": "cpu"})
    try:
        assert models.gpu_memory() is None and models.devices() == {"a": "cpu"}
    finally:
        models.attach({})


def test_a_reload_may_not_move_models_between_devices() -> None:
    from supervisor.daemon.reload import placement_change

    cpu, cuda = _config("cpu"), _config("cuda")
    assert placement_change(cpu, cpu) is None
    assert placement_change(cpu, cuda) == "the device of model m"
    assert placement_change(cuda, Config(models={})) == "the device of model m"  # removed
    assert placement_change(cpu, Config(models={})) is None  # a CPU model may go
    spread = Config(models=cuda.models, workers=dataclasses.replace(cuda.workers, gpus="all"))
    assert placement_change(cuda, spread) == "workers.gpus"
