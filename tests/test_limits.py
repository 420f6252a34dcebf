"""One range for the worker count, and DOCBRAIN_ variables that name no setting.

The range is defined once, by the setting's check; the file, the environment, the command
line (--workers, scale) all refuse the same values with one line and exit 2. A
DOCBRAIN_<SECTION>_<KEY> variable that names no setting is refused as the file's unknown key
is, while the project's own other DOCBRAIN_ variables keep working, in workers too.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click
import pytest

from conftest import Instance
from supervisor.cli import cli
from supervisor.config import ConfigError, load_config, setting_var, unknown_setting_var
from supervisor.settings import MAX_WORKERS, SECTIONS, bounds_of


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"XDG_STATE_HOME": str(tmp_path / "xdg")}


def error_of(**kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    return str(info.value)


# -- the worker count's range ----------------------------------------------------------------

def test_the_range_is_the_settings_and_the_cli_uses_it() -> None:
    assert bounds_of("workers", "count") == (1, MAX_WORKERS) == (1, 256)
    types = [p.type for name in ("start", "restart") for p in cli.commands[name].params
             if p.name == "workers"]
    types += [p.type for p in cli.commands["scale"].params if p.name == "count"]
    assert len(types) == 3
    for kind in types:
        assert isinstance(kind, click.IntRange) and (kind.min, kind.max) == (1, 256)


@pytest.mark.parametrize("count", [1, 256])
def test_the_bounds_are_accepted_everywhere(env: dict[str, str], tmp_path: Path,
                                            count: int) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[workers]\ncount = {count}\n")
    assert load_config(str(path), environ=env).workers.count == count
    assert load_config(environ={**env, "DOCBRAIN_WORKERS_COUNT": str(count)}
                       ).workers.count == count
    assert load_config(environ=env, overrides={"workers.count": count}).workers.count == count


@pytest.mark.parametrize(("count", "problem"), [
    (0, "must be at least 1, got 0"), (257, "must be at most 256, got 257"),
    (100000, "must be at most 256, got 100000")])
def test_outside_the_range_is_refused_everywhere(env: dict[str, str], tmp_path: Path,
                                                 count: int, problem: str) -> None:
    expected = f"workers.count: {problem}"
    path = tmp_path / "c.toml"
    path.write_text(f"[workers]\ncount = {count}\n")
    assert error_of(path=str(path), environ=env) == expected
    assert error_of(environ={**env, "DOCBRAIN_WORKERS_COUNT": str(count)}) == expected
    assert error_of(environ=env, overrides={"workers.count": count}) == expected


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


# -- DOCBRAIN_ variables ---------------------------------------------------------------------

UNKNOWN_VARS = [
    ("DOCBRAIN_WORKERS_CUONT",
     "DOCBRAIN_WORKERS_CUONT: no such setting; did you mean DOCBRAIN_WORKERS_COUNT?"),
    ("DOCBRAIN_WORKER_COUNT",  # the section misspelt
     "DOCBRAIN_WORKER_COUNT: no such setting; did you mean DOCBRAIN_WORKERS_COUNT?"),
    ("DOCBRAIN_SUPERVISOR_STATEDIR",
     "DOCBRAIN_SUPERVISOR_STATEDIR: no such setting; did you mean "
     "DOCBRAIN_SUPERVISOR_STATE_DIR?"),
    ("DOCBRAIN_QUEUE_BOGUS", "DOCBRAIN_QUEUE_BOGUS: no such setting"),
    ("DOCBRAIN_MODELS_MINILM_PATH",
     "DOCBRAIN_MODELS_MINILM_PATH: [models] can be set in the configuration file only"),
    ("DOCBRAIN_ENV_", "DOCBRAIN_ENV_: '' is not a valid environment variable name"),
    ("DOCBRAIN_ENV_DOCBRAIN_WORKERS_CUONT",
     "DOCBRAIN_ENV_DOCBRAIN_WORKERS_CUONT: DOCBRAIN_WORKERS_CUONT: no such setting; "
     "did you mean DOCBRAIN_WORKERS_COUNT?"),
]


@pytest.mark.parametrize(("var", "expected"), UNKNOWN_VARS, ids=[v for v, _ in UNKNOWN_VARS])
def test_an_unknown_setting_variable_is_an_error(env: dict[str, str], var: str,
                                                 expected: str) -> None:
    assert error_of(environ={**env, var: "3"}) == expected


def test_an_unknown_setting_in_env_table_is_an_error(env: dict[str, str],
                                                     tmp_path: Path) -> None:
    """Workers inherit [env]: their own docbrainctl would refuse the name."""
    path = tmp_path / "c.toml"
    path.write_text('[env]\nDOCBRAIN_WORKERS_CUONT = "3"\n')
    assert error_of(path=str(path), environ=env) == (
        "env.DOCBRAIN_WORKERS_CUONT: DOCBRAIN_WORKERS_CUONT: no such setting; "
        "did you mean DOCBRAIN_WORKERS_COUNT?")


def test_every_setting_variable_is_known() -> None:
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert unknown_setting_var(setting_var(section, f.name)) is None


def test_the_projects_other_docbrain_variables_are_left_alone(env: dict[str, str],
                                                              tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[workers]\ncount = 3\n[env]\nDOCBRAIN_TEST_GUARD = "two words"\n')
    config = load_config(environ={
        **env,
        "DOCBRAIN_CONFIG": str(path),                       # the file
        "DOCBRAIN_INSTANCE": "12:345.6:4026531836:/s",      # a worker's marker
        "DOCBRAIN_SLOT": "0",                               # and its slot
        "DOCBRAIN_ENV_HF_HOME": "/models",                  # [env] HF_HOME
        "DOCBRAIN_SUPERVISOR_STATE_DIR": str(tmp_path / "s"),
        "DOCBRAIN_TEST_SUPERVISORD_BIN": "/usr/bin/supervisord",  # the tests' own
        "DOCBRAIN_TEST_GUARD": "two words",                 # from [env], in a worker
        "DOCBRAIN_API_URL": "http://docbrain",              # not ours: some task's
    })
    assert config.workers.count == 3 and config.path == str(path)
    assert dict(config.env) == {"DOCBRAIN_TEST_GUARD": "two words", "HF_HOME": "/models"}
    assert config.supervisor.state_dir == str(tmp_path / "s")


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
from supervisor.config import load_config
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
