"""Configuration: defaults < TOML file < DOCBRAIN_* environment < CLI, and the env guards.

Every call passes `environ` explicitly so that the developer's own environment cannot leak in.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from conftest import REPO

from supervisor.conf import envguard
from supervisor.conf.config import ConfigError, load_config
from supervisor.conf.example import render_example
from supervisor.conf.settings import (FORBIDDEN_ENV, Config, MetricsSettings, RestartSettings,
                                      SupervisorSettings, WorkersSettings)
from tests.unit.conftest import write

EXAMPLE = REPO / "etc" / "docbrain.toml"
FORK_SAFETY = "OBJC_DISABLE_INITIALIZE_FORK_SAFETY"



def config_error(**kwargs: Any) -> str:
    """Load, expect a ConfigError, and return its message (which must be one line)."""
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    return message


# -- where values come from ----------------------------------------------------------------

def test_defaults_without_a_file(env: dict[str, str], tmp_path: Path) -> None:
    config = load_config(environ=env)
    assert config.workers == WorkersSettings()
    assert config.restart == RestartSettings()
    assert config.supervisor == SupervisorSettings(state_dir=str(tmp_path / "xdg" / "docbrain"))
    assert dict(config.env) == {}
    assert config.path is None


def test_file_values(env: dict[str, str], tmp_path: Path) -> None:
    path = write(tmp_path, """\
        [supervisor]
        log_level = "debug"
        [workers]
        count = 3
        tasks = ["mytasks.ocr", "mytasks.embed"]
        load_timeout = 45
        [restart]
        backoff_start = 0.5
        flap_limit = 9
        """)
    config = load_config(path, environ=env)
    assert config.supervisor.log_level == "debug"
    assert config.workers.count == 3
    assert config.workers.tasks == ("mytasks.ocr", "mytasks.embed")
    assert config.workers.load_timeout == 45.0
    assert isinstance(config.workers.load_timeout, float)  # an int is accepted for a float
    assert config.restart.backoff_start == 0.5
    assert config.restart.flap_limit == 9
    assert config.restart.backoff_max == RestartSettings().backoff_max  # untouched keys default
    assert config.path == path


def test_path_from_docbrain_config(env: dict[str, str], tmp_path: Path) -> None:
    path = write(tmp_path, "[workers]\ncount = 7\n")
    config = load_config(environ={**env, "DOCBRAIN_CONFIG": path})
    assert config.workers.count == 7
    assert config.path == path


@pytest.mark.parametrize(("use_env", "cli", "expected"), [
    (False, None, 3),   # file
    (True, None, 5),    # env over file
    (True, 4, 4),       # CLI over env
    (False, 4, 4),      # CLI over file
])
def test_precedence(env: dict[str, str], tmp_path: Path, use_env: bool, cli: int | None,
                    expected: int) -> None:
    path = write(tmp_path, "[workers]\ncount = 3\n")
    environ = {**env, "DOCBRAIN_WORKERS_COUNT": "5"} if use_env else env
    config = load_config(path, environ=environ, overrides={"workers.count": cli})
    assert config.workers.count == expected


def test_env_values_are_parsed_to_the_field_type(env: dict[str, str]) -> None:
    config = load_config(environ={
        **env,
        "DOCBRAIN_RESTART_BACKOFF_MAX": "12.5",
        "DOCBRAIN_WORKERS_HEARTBEAT_LIVENESS": "7",
        "DOCBRAIN_SUPERVISOR_LOG_LEVEL": "warning",
    })
    assert config.restart.backoff_max == 12.5
    assert config.workers.heartbeat_liveness == 7
    assert config.supervisor.log_level == "warning"


@pytest.mark.parametrize(("text", "expected"), [
    ("a.b, c ,,d", ("a.b", "c", "d")),
    ("single", ("single",)),
    ("", ()),
    ('["x", "y.z"]', ("x", "y.z")),
    ("  []", ()),
])
def test_list_from_env(env: dict[str, str], text: str, expected: tuple[str, ...]) -> None:
    config = load_config(environ={**env, "DOCBRAIN_WORKERS_TASKS": text})
    assert config.workers.tasks == expected


def test_env_list_overrides_file_list(env: dict[str, str], tmp_path: Path) -> None:
    path = write(tmp_path, '[workers]\ntasks = ["from.file"]\n')
    config = load_config(path, environ={**env, "DOCBRAIN_WORKERS_TASKS": "from.env"})
    assert config.workers.tasks == ("from.env",)


def test_env_section_and_docbrain_env_variables(env: dict[str, str], tmp_path: Path) -> None:
    path = write(tmp_path, """\
        [env]
        OMP_NUM_THREADS = "3"
        HF_HOME = "/models"
        RETRIES = 2
        """)
    config = load_config(path, environ={**env, "DOCBRAIN_ENV_OMP_NUM_THREADS": "6",
                                        "DOCBRAIN_ENV_EXTRA": "yes"})
    assert dict(config.env) == {"OMP_NUM_THREADS": "6", "HF_HOME": "/models",
                                "RETRIES": "2", "EXTRA": "yes"}
    assert isinstance(config.env, MappingProxyType)  # the frozen config stays frozen


def test_state_dir_default_from_xdg_state_home() -> None:
    config = load_config(environ={"XDG_STATE_HOME": "/srv/state"})
    assert config.supervisor.state_dir == "/srv/state/docbrain"


def test_state_dir_default_without_xdg(monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(environ={})
    assert config.supervisor.state_dir == str(tmp_path / ".local" / "state" / "docbrain")


def test_state_dir_is_expanded_and_absolute(env: dict[str, str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(environ={**env, "DOCBRAIN_SUPERVISOR_STATE_DIR": "~/st"})
    assert config.supervisor.state_dir == str(tmp_path / "st")


def test_to_dict_lists_every_section(env: dict[str, str]) -> None:
    data = load_config(environ={**env, "DOCBRAIN_WORKERS_TASKS": "a,b",
                                "DOCBRAIN_ENV_X": "1"}).to_dict()
    assert set(data) == {"supervisor", "workers", "restart", "queue", "metrics", "models",
                         "env"}
    assert data["metrics"] == {"port": 0, "address": "127.0.0.1"}
    assert data["workers"]["tasks"] == ["a", "b"]
    assert data["env"] == {"X": "1"}


def test_metrics_off_by_default_and_on_loopback(env: dict[str, str]) -> None:
    assert load_config(environ=env).metrics == MetricsSettings(port=0, address="127.0.0.1")


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0", "::1", "::", "localhost",
                                     "10.1.2.3", "fe80::1"])
def test_metrics_from_file(env: dict[str, str], tmp_path: Path, address: str) -> None:
    path = write(tmp_path, f'[metrics]\nport = 9200\naddress = "{address}"\n')
    assert load_config(path, environ=env).metrics == MetricsSettings(9200, address)


def test_metrics_from_env_over_file(env: dict[str, str], tmp_path: Path) -> None:
    path = write(tmp_path, "[metrics]\nport = 9200\n")
    config = load_config(path, environ={**env, "DOCBRAIN_METRICS_PORT": "9300",
                                        "DOCBRAIN_METRICS_ADDRESS": "::1"})
    assert config.metrics == MetricsSettings(port=9300, address="::1")
    assert load_config(path, environ={**env, "DOCBRAIN_METRICS_PORT": "0"}).metrics.port == 0


# -- errors --------------------------------------------------------------------------------

FILE_ERRORS: list[tuple[str, str, str]] = [
    ("unknown-key", "[workers]\nbogus = 1\n", "workers.bogus: unknown key"),
    ("unknown-section", "[nope]\nx = 1\n", "nope: unknown section"),
    ("string-for-int", '[workers]\ncount = "4"\n',
     "workers.count: expected an integer, got a string"),
    ("bool-for-int", "[workers]\ncount = true\n",
     "workers.count: expected an integer, got a boolean"),
    ("float-for-int", "[workers]\ncount = 2.5\n",
     "workers.count: expected an integer, got a number"),
    ("bool-for-float", "[restart]\nbackoff_max = false\n",
     "restart.backoff_max: expected a number, got a boolean"),
    ("string-for-list", '[workers]\ntasks = "a"\n',
     "workers.tasks: expected a list of strings, got a string"),
    ("ints-in-list", "[workers]\ntasks = [1]\n", "workers.tasks: expected a list of strings"),
    ("count-zero", "[workers]\ncount = 0\n", "workers.count: must be at least 1, got 0"),
    ("negative-timeout", "[workers]\nload_timeout = -1\n", "workers.load_timeout: must be"),
    ("bad-log-level", '[supervisor]\nlog_level = "loud"\n', "supervisor.log_level: must be one"),
    ("section-not-table", "workers = 3\n", "workers: expected a table"),
    ("max-below-start", "[restart]\nbackoff_start = 5\nbackoff_max = 1\n",
     "restart.backoff_max: must not be below restart.backoff_start"),
    ("forbidden-env", f'[env]\n{FORK_SAFETY} = "YES"\n', f"env.{FORK_SAFETY}: "),
    ("env-bool", "[env]\nX = true\n", "env.X: expected a string, got a boolean"),
    ("env-table", "[env.X]\nY = 1\n", "env.X: expected a string, got a table"),
    ("metrics-port-high", "[metrics]\nport = 65536\n",
     "metrics.port: must be 0 (off) or 1-65535, got 65536"),
    ("metrics-port-negative", "[metrics]\nport = -1\n",
     "metrics.port: must be 0 (off) or 1-65535, got -1"),
    ("metrics-port-string", '[metrics]\nport = "9200"\n',
     "metrics.port: expected an integer, got a string"),
    ("metrics-address-name", '[metrics]\naddress = "example.com"\n',
     "metrics.address: must be an IPv4 or IPv6 address or localhost, got 'example.com'"),
    ("metrics-address-with-port", '[metrics]\naddress = "127.0.0.1:9200"\n',
     "metrics.address: must be an IPv4 or IPv6 address or localhost"),
    ("metrics-address-empty", '[metrics]\naddress = ""\n',
     "metrics.address: must be an IPv4 or IPv6 address or localhost, got ''"),
    ("metrics-address-bad-ip", '[metrics]\naddress = "256.1.1.1"\n',
     "metrics.address: must be an IPv4 or IPv6 address or localhost"),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in FILE_ERRORS],
                         ids=[i for i, _, _ in FILE_ERRORS])
def test_file_error(env: dict[str, str], tmp_path: Path, text: str, expected: str) -> None:
    message = config_error(path=write(tmp_path, text), environ=env)
    assert message.startswith(expected)


def test_forbidden_env_message_says_why(env: dict[str, str], tmp_path: Path) -> None:
    message = config_error(path=write(tmp_path, f'[env]\n{FORK_SAFETY} = "YES"\n'),
                           environ=env)
    assert "must not be set" in message


def test_invalid_toml_names_the_file(env: dict[str, str], tmp_path: Path) -> None:
    path = write(tmp_path, "[workers\ncount = 3\n")
    message = config_error(path=path, environ=env)
    assert message.startswith(f"config file {path}: invalid TOML")
    assert "line 1" in message


def test_missing_file(env: dict[str, str], tmp_path: Path) -> None:
    path = str(tmp_path / "absent.toml")
    assert config_error(path=path, environ=env) == f"config file {path}: not found"


ENV_ERRORS: list[tuple[str, str, str]] = [
    ("DOCBRAIN_WORKERS_COUNT", "abc",
     "DOCBRAIN_WORKERS_COUNT: expected an integer, got 'abc'"),
    ("DOCBRAIN_WORKERS_COUNT", "2.0", "DOCBRAIN_WORKERS_COUNT: expected an integer"),
    ("DOCBRAIN_WORKERS_COUNT", "0", "workers.count: must be at least 1, got 0"),
    ("DOCBRAIN_RESTART_BACKOFF_START", "soon",
     "DOCBRAIN_RESTART_BACKOFF_START: expected a number, got 'soon'"),
    ("DOCBRAIN_WORKERS_TASKS", "[1, 2]", "DOCBRAIN_WORKERS_TASKS: expected a list of strings"),
    ("DOCBRAIN_WORKERS_TASKS", '["a"', "DOCBRAIN_WORKERS_TASKS: not a TOML list"),
    ("DOCBRAIN_SUPERVISOR_LOG_LEVEL", "DEBUG", "supervisor.log_level: must be one of"),
    (f"DOCBRAIN_ENV_{FORK_SAFETY}", "YES", f"DOCBRAIN_ENV_{FORK_SAFETY}: {FORK_SAFETY} must "
                                           "not be set"),
    ("DOCBRAIN_ENV_1BAD", "x", "DOCBRAIN_ENV_1BAD: '1BAD' is not a valid environment"),
    ("DOCBRAIN_METRICS_PORT", "http", "DOCBRAIN_METRICS_PORT: expected an integer, got 'http'"),
    ("DOCBRAIN_METRICS_PORT", "99999", "metrics.port: must be 0 (off) or 1-65535, got 99999"),
    ("DOCBRAIN_METRICS_ADDRESS", "[::1]", "metrics.address: must be an IPv4 or IPv6 address"),
]


@pytest.mark.parametrize(("var", "value", "expected"), ENV_ERRORS,
                         ids=[f"{v}={x}" for v, x, _ in ENV_ERRORS])
def test_env_error(env: dict[str, str], var: str, value: str, expected: str) -> None:
    assert config_error(environ={**env, var: value}).startswith(expected)


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"workers.count": "4"}, "workers.count: expected an integer, got a string"),
    ({"workers.count": True}, "workers.count: expected an integer, got a boolean"),
    ({"workers.count": 0}, "workers.count: must be at least 1, got 0"),
])
def test_cli_error(env: dict[str, str], overrides: dict[str, Any], expected: str) -> None:
    assert config_error(environ=env, overrides=overrides) == expected


# -- the example file ----------------------------------------------------------------------

def test_example_file_is_generated_from_the_settings() -> None:
    assert EXAMPLE.read_text() == render_example(envguard.guard_defaults(cores=1, workers=1))


def test_example_does_not_depend_on_the_cores() -> None:
    assert (render_example(envguard.guard_defaults(cores=64, workers=3))
            == render_example(envguard.guard_defaults(cores=1, workers=1)))


def test_example_file_loads_to_the_defaults(env: dict[str, str]) -> None:
    from_file = load_config(str(EXAMPLE), environ=env)
    defaults = load_config(environ=env)
    assert from_file.to_dict() == defaults.to_dict()
    assert from_file.path == str(EXAMPLE)


def test_example_documents_every_setting_and_no_forbidden_variable() -> None:
    text = render_example(envguard.guard_defaults(cores=4, workers=2))
    config = Config()
    for section, values in config.to_dict().items():
        if section in ("env", "models"):
            continue
        assert f"[{section}]" in text
        for key, value in values.items():
            if isinstance(value, dict):  # a table of the section: [section.key]
                assert f"\n[{section}.{key}]\n" in text
                assert all(f"\n{k} = " in text for k in value)
            else:
                assert f"\n{key} = " in text
    for name, model in config.to_dict()["models"].items():
        assert f"[models.{name}]" in text
        for key in model:
            assert f"\n{key} = " in text or f"\n# {key} = " in text
    assert FORK_SAFETY not in text


# -- environment guards --------------------------------------------------------------------

@pytest.mark.parametrize(("cores", "workers", "expected"), [
    (8, 2, 4), (8, 3, 2), (16, 1, 16), (3, 4, 1), (1, 1, 1), (0, 2, 1), (8, 0, 8),
])
def test_thread_budget(cores: int, workers: int, expected: int) -> None:
    assert envguard.thread_budget(cores, workers) == expected
    guards = envguard.guard_defaults(cores, workers)
    assert guards["OMP_NUM_THREADS"] == guards["MKL_NUM_THREADS"] == str(expected)


def test_guards_use_the_configured_worker_count(env: dict[str, str]) -> None:
    config = load_config(environ=env, overrides={"workers.count": 4})
    guards = envguard.guards(config, cores=12)
    assert guards["OMP_NUM_THREADS"] == "3"
    assert guards["TOKENIZERS_PARALLELISM"] == "false"
    assert guards["CUDA_VISIBLE_DEVICES"] == ""


def test_env_section_overrides_a_guard_and_adds_variables(env: dict[str, str],
                                                          tmp_path: Path) -> None:
    path = write(tmp_path, '[env]\nOMP_NUM_THREADS = "7"\nCUDA_VISIBLE_DEVICES = "0"\n'
                           'HF_HOME = "/m"\n')
    guards = envguard.guards(load_config(path, environ=env), cores=8)
    assert guards["OMP_NUM_THREADS"] == "7"
    assert guards["CUDA_VISIBLE_DEVICES"] == "0"
    assert guards["HF_HOME"] == "/m"
    assert guards["MKL_NUM_THREADS"] == "4"  # 8 cores // 2 workers: not overridden


@pytest.mark.parametrize(("cores", "workers"), [(1, 1), (8, 2), (128, 7)])
def test_fork_safety_override_is_never_a_guard(env: dict[str, str], cores: int,
                                               workers: int) -> None:
    assert FORK_SAFETY in FORBIDDEN_ENV
    assert FORK_SAFETY not in envguard.guard_defaults(cores, workers)
    config = load_config(environ=env, overrides={"workers.count": workers})
    assert FORK_SAFETY not in envguard.guards(config, cores=cores)


def test_apply_sets_the_variables() -> None:
    target = {"KEEP": "1", "OMP_NUM_THREADS": "99"}
    envguard.apply({"OMP_NUM_THREADS": "2", "NEW": "x"}, environ=target)
    assert target == {"KEEP": "1", "OMP_NUM_THREADS": "2", "NEW": "x"}


# -- models --------------------------------------------------------------------------------

def test_models_default_explicit_and_none(tmp_path: Path, env: dict[str, str]) -> None:
    assert list(load_config(environ=env).models) == ["minilm"]
    path = tmp_path / "m.toml"
    path.write_text('[models.mine]\npath = "/models/mine"\nmax_tokens = 128\n')
    models = load_config(str(path), environ=env).models
    assert list(models) == ["mine"]
    assert models["mine"].path == "/models/mine" and models["mine"].max_tokens == 128
    path.write_text("[models]\n")
    assert dict(load_config(str(path), environ=env).models) == {}


@pytest.mark.parametrize(("text", "message"), [
    ('[models.a]\nkind = "sentence-embedding"\n', "models.a: set exactly one of path and package"),
    ('[models.a]\npath = "x"\npackage = "y"\n', "models.a: set exactly one of path and package"),
    ('[models.a]\npath = "x"\nkind = "ocr"\n', "models.a.kind: must be sentence-embedding, "
     "cross-encoder or MODULE:CLASS of a kind of your own, got 'ocr'"),
    ('[models.a]\npath = "x"\ndevice = "gpu"\n', "models.a.device: must be cpu, cuda, cuda:N, "
     "mps or auto, got 'gpu'"),
    ('[models.a]\npath = "x"\ndtype = "int8"\n', "models.a.dtype: must be one of float32, "
     "float16, bfloat16, got 'int8'"),
    ('[models.a]\npath = "x"\nmax_tokns = 3\n', "models.a.max_tokns: unknown key"),
    ('[models.a]\npath = 3\n', "models.a.path: expected a string"),
    ('[models.a]\npath = "x"\nbatch_tokens = 0\n', "models.a.batch_tokens: must be at least 1"),
    ('[models]\na = 1\n', "models.a: expected a table"),
])
def test_model_errors(tmp_path: Path, env: dict[str, str], text: str, message: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(str(path), environ=env)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)
