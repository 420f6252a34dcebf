"""One range for the worker count, and DOCBRAIN_ variables that name no setting, through
docbrainctl and in a real daemon's workers.

The command line (--workers, scale) refuses the values the setting's check refuses, with
one line and exit 2. A DOCBRAIN_<SECTION>_<KEY> variable that names no setting stops
docbrainctl, while the project's own other DOCBRAIN_ variables keep working, in workers
too. The settings and load_config alone are checked in tests/unit/test_limits.py.
"""

from __future__ import annotations

import json

import pytest
from conftest import Instance


@pytest.mark.parametrize("args", [
    ("start", "--workers", "100000"), ("restart", "--workers", "257"), ("scale", "257"),
    ("start", "--workers", "0"), ("scale", "0"), ("start", "--foreground", "--workers", "300"),
], ids=lambda a: " ".join(a))
def test_the_command_line_refuses_the_same_values(instance: Instance,
                                                  args: tuple[str, ...]) -> None:
    result = instance.ctl(*args)
    number = int(args[-1])
    problem = "must be at least 1, got 0" if number < 1 else f"must be at most 256, got {number}"
    assert (result.returncode, result.stderr) == (2, f"docbrainctl: workers.count: {problem}\n")
    assert result.stdout == "" and not instance.state_dir.exists()


def test_file_count_too_high_fails_config_and_start(instance: Instance) -> None:
    instance.write_config(workers=100000)
    for command in ("config", "start"):
        result = instance.ctl(command)
        assert (result.returncode, result.stderr) == (
            2, "docbrainctl: workers.count: must be at most 256, got 100000\n"), command
    assert not (instance.state_dir / "docbrain.pid").exists()


def test_a_flag_that_is_no_number_is_one_line(instance: Instance) -> None:
    for args in (("start", "--workers", "x"), ("scale", "many")):
        result = instance.ctl(*args)
        assert result.returncode == 2
        assert result.stderr.startswith("docbrainctl: Invalid value for ")
        assert len(result.stderr.splitlines()) == 1, result.stderr


def test_help_shows_the_range(instance: Instance) -> None:
    assert "[1<=x<=256]" in instance.ctl("start", "--help").stdout
    assert "[1<=x<=256]" in instance.ctl("restart", "--help").stdout


def test_docbrainctl_refuses_an_unknown_variable(instance: Instance) -> None:
    instance.env["DOCBRAIN_WORKERS_CUONT"] = "3"
    for command in ("config", "start", "status"):
        result = instance.ctl(command)
        assert (result.returncode, result.stderr) == (
            2, "docbrainctl: DOCBRAIN_WORKERS_CUONT: no such setting; "
               "did you mean DOCBRAIN_WORKERS_COUNT?\n"), command
    assert not (instance.state_dir / "docbrain.pid").exists()


PROBE_TASKS = """\
import os, subprocess, sys
from supervisor.conf.config import load_config
from workers import task

@task("probe.config")
def probe(payload):
    config = load_config(payload)
    ctl = subprocess.run([sys.executable, "-m", "supervisor", "--config", payload, "config"],
                         capture_output=True, text=True, timeout=60)
    return {"count": config.workers.count, "rc": ctl.returncode, "stderr": ctl.stderr,
            "vars": sorted(k for k in os.environ if k.startswith("DOCBRAIN_"))}
"""


def test_a_worker_can_load_the_configuration_and_run_docbrainctl(instance: Instance) -> None:
    """A worker carries DOCBRAIN_INSTANCE, DOCBRAIN_SLOT, [env]'s own DOCBRAIN_ variables
    and the daemon's DOCBRAIN_ settings: none of them may break its configuration."""
    instance.write_task_module("probe_tasks", PROBE_TASKS)
    instance.write_config('tasks = ["probe_tasks"]\n[env]\nDOCBRAIN_TEST_GUARD = "x"\n',
                          workers=1)
    instance.env["DOCBRAIN_WORKERS_CREDIT"] = "4"
    assert instance.ctl("start").returncode == 0
    result = instance.ctl("submit", "probe.config", json.dumps(str(instance.config_path)),
                          "--wait", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen == {"count": 1, "rc": 0, "stderr": "", "vars": [
        "DOCBRAIN_INSTANCE", "DOCBRAIN_SLOT", "DOCBRAIN_TEST_GUARD", "DOCBRAIN_WORKERS_CREDIT"]}
    assert instance.ctl("stop").returncode == 0
