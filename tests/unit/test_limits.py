"""One range for the worker count, and DOCBRAIN_ variables that name no setting: the
settings, load_config and the command line's definitions, in this process.

The range is defined once, by the setting's check; the file, the environment and the
overrides refuse the same values with one line. A DOCBRAIN_<SECTION>_<KEY> variable that
names no setting is refused as the file's unknown key is, while the project's own other
DOCBRAIN_ variables keep working. What docbrainctl and a real worker do with them is in
tests/system/test_limits.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest

from supervisor.cli.main import cli
from supervisor.conf.config import ConfigError, load_config, setting_var, unknown_setting_var
from supervisor.conf.settings import MAX_WORKERS, SECTIONS, bounds_of



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
