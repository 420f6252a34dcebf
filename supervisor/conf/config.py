"""Load the configuration: defaults < TOML file < DOCBRAIN_* environment < command line.

Every error is a `ConfigError` whose message is one line naming the key (or variable) and
what is wrong with it; nothing is started when loading fails.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from supervisor.conf.settings import (DEFAULT_MODELS, FORBIDDEN_ENV, SECTIONS, TABLES,
                                      Config, ModelSettings, NatsSettings, settings_of,
                                      subtables)
from supervisor.proto.marker import MARKER_ENV, SLOT_ENV

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

CONFIG_ENV = "DOCBRAIN_CONFIG"
ENV_PREFIX = "DOCBRAIN_"
ENV_SECTION = ENV_PREFIX + "ENV_"  # DOCBRAIN_ENV_<NAME> sets [env] NAME
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# DOCBRAIN_ variables of ours that are not settings: every worker inherits the marker and
# its slot, and may run docbrainctl or load the configuration itself.
NOT_SETTINGS = frozenset({CONFIG_ENV, MARKER_ENV, SLOT_ENV})
# How alike (difflib's ratio, without the prefix) a name must be to a setting's variable to
# be taken for a misspelling of it: DOCBRAIN_WORKER_COUNT is, DOCBRAIN_TEST_GUARD is not.
_NEAR_MISS = 0.8


class ConfigError(Exception):
    """A bad configuration file or value; the message is one line for the user."""


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Check a TOML value against the field's type; ints are accepted for floats."""
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # gpus: "all" or [0, 1]
        options = typing.get_args(kind)
        for option in options:
            try:
                return _coerce(value, option, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {' or '.join(map(_kind_name, options))}, "
                          f"got {_type_name(value)}")
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        if isinstance(value, list) and all(isinstance(v, item) and not isinstance(v, bool)
                                           for v in value):
            return tuple(value)
        raise ConfigError(f"{where}: expected {_kind_name(kind)}, got {_type_name(value)}")
    expected = {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}[kind]
    raise ConfigError(f"{where}: expected {expected}, got {_type_name(value)}")


def _kind_name(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        return f"a list of {'integers' if typing.get_args(kind)[0] is int else 'strings'}"
    return {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}[kind]


def _parse_env_value(text: str, kind: Any, where: str) -> Any:
    """Turn an environment variable's text into a value of the field's type."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # gpus: all, 0,1 or [0,1]
        ints = tuple[int, ...] in typing.get_args(kind)
        parts = [p.strip() for p in text.strip("[] ").split(",") if p.strip()]
        if ints and all(p.isdigit() for p in parts):
            return tuple(int(p) for p in parts)
        return text
    try:
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"{where}: expected {'an integer' if kind is int else 'a number'}, "
                          f"got {text!r}") from None
    if kind is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {text!r}")
    if typing.get_origin(kind) is tuple:
        if text.lstrip().startswith("["):
            try:
                value = tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{where}: not a TOML list: {exc}") from None
            return _coerce(value, kind, where)
        items: list[Any] = [part.strip() for part in text.split(",") if part.strip()]
        if typing.get_args(kind)[0] is int:
            items = [int(p) if p.isdigit() else p for p in items]
        return _coerce(items, kind, where)
    return text


def _field_types(section_cls: type) -> dict[str, Any]:
    """The settings of a table and their types (its nested tables are not among them)."""
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in settings_of(section_cls)}


def setting_var(section: str, key: str) -> str:
    """The variable of a setting: DOCBRAIN_WORKERS_COUNT, DOCBRAIN_QUEUE_NATS_SERVERS."""
    return f"{ENV_PREFIX}{section.upper().replace('.', '_')}_{key.upper()}"


def unknown_setting_var(var: str) -> str | None:
    """What is wrong with a DOCBRAIN_ variable that looks like a setting but names none.

    Only names in a section's namespace (DOCBRAIN_WORKERS_...) or near misses of a real
    setting are ours to refuse: any other DOCBRAIN_ variable may belong to the rest of
    DocBrain or to a task, and passes through to the workers untouched.
    """
    if not var.startswith(ENV_PREFIX) or var in NOT_SETTINGS or var.startswith(ENV_SECTION):
        return None
    known = {var: var[len(ENV_PREFIX):] for var in (
        setting_var(section, f.name) for section, cls in TABLES.items()
        for f in dataclasses.fields(cls))}
    if var in known:
        return None
    rest = var[len(ENV_PREFIX):]
    if rest.startswith("MODELS_"):
        return "[models] can be set in the configuration file only"
    close = difflib.get_close_matches(rest, known.values(), n=1, cutoff=_NEAR_MISS)
    if close:
        return f"no such setting; did you mean {ENV_PREFIX}{close[0]}?"
    if any(rest.startswith(section.upper() + "_") for section in SECTIONS):
        return "no such setting"
    return None


def _env_entry(name: Any, value: Any, where: str) -> tuple[str, str]:
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        raise ConfigError(f"{where}: {name!r} is not a valid environment variable name")
    # The workers get it, and their own docbrainctl or load_config would refuse it.
    problem = unknown_setting_var(name)
    if problem:
        raise ConfigError(f"{where}: {name}: {problem}")
    if name in FORBIDDEN_ENV:
        raise ConfigError(f"{where}: {name} must not be set: it hides the fork-after-init crash "
                          "instead of avoiding it")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: expected a string, got {_type_name(value)}")
    return name, str(value)


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None


def default_state_dir(environ: Mapping[str, str]) -> str:
    home = environ.get("HOME") or os.path.expanduser("~")
    base = environ.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state")
    return os.path.join(base, "docbrain")


def load_config(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration.

    `path` falls back to $DOCBRAIN_CONFIG; `overrides` maps "section.key" to values taken
    from command-line flags (None means the flag was not given).
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV) or None
    values: dict[str, dict[str, Any]] = {name: {} for name in TABLES}
    env_vars: dict[str, str] = {}
    models: Mapping[str, ModelSettings] = DEFAULT_MODELS

    if path is not None:
        path = str(Path(path).expanduser().resolve())
        data = _read_file(path)
        for section, table in data.items():
            if section == "env":
                if not isinstance(table, dict):
                    raise ConfigError("env: expected a table")
                for name, value in table.items():
                    key, text = _env_entry(name, value, f"env.{name}")
                    env_vars[key] = text
                continue
            if section == "models":
                models = _models(table)
                continue
            if section not in SECTIONS:
                raise ConfigError(f"{section}: unknown section (known: "
                                  f"{', '.join([*SECTIONS, 'models', 'env'])})")
            _read_table(section, table, values)

    for var in sorted(environ):  # sorted: the same variable is named first every time
        problem = unknown_setting_var(var)
        if problem:
            raise ConfigError(f"{var}: {problem}")
    for section, cls in TABLES.items():
        for key, kind in _field_types(cls).items():
            var = setting_var(section, key)
            if var in environ:
                values[section][key] = _parse_env_value(environ[var], kind, var)
        for key in subtables(cls):
            var = setting_var(section, key)
            if var in environ:
                raise ConfigError(f"{var}: [{section}.{key}] is a table; its keys are set "
                                  f"by {setting_var(f'{section}.{key}', '<KEY>')}")
    for var, text in environ.items():
        if var.startswith(ENV_SECTION):
            name, value = _env_entry(var[len(ENV_SECTION):], text, var)
            env_vars[name] = value

    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.rsplit(".", 1)
        values[section][key] = _coerce(value, _field_types(TABLES[section])[key], dotted)

    built = {section: _build(section, values) for section in SECTIONS}
    if not built["supervisor"].state_dir:
        built["supervisor"] = dataclasses.replace(
            built["supervisor"], state_dir=default_state_dir(environ))
    state_dir = os.path.abspath(os.path.expanduser(built["supervisor"].state_dir))
    built["supervisor"] = dataclasses.replace(built["supervisor"], state_dir=state_dir)
    base = os.path.dirname(path) if path else os.getcwd()  # of relative paths
    built["workers"] = dataclasses.replace(built["workers"], task_path=_task_path(
        built["workers"].task_path, base))
    built["queue"] = dataclasses.replace(built["queue"], nats=_nats_files(built["queue"].nats,
                                                                          base))
    if built["restart"].backoff_max < built["restart"].backoff_start:
        raise ConfigError("restart.backoff_max: must not be below restart.backoff_start")
    if built["queue"].retry_backoff_max < built["queue"].retry_backoff:
        raise ConfigError("queue.retry_backoff_max: must not be below queue.retry_backoff")
    return Config(**built, models=MappingProxyType(models), env=MappingProxyType(env_vars),
                  path=path)


def _read_table(name: str, table: Any, values: dict[str, dict[str, Any]]) -> None:
    """One table of the file (and the tables in it) into `values`, by dotted table name."""
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: expected a table, got {_type_name(table)}")
    types, nested = _field_types(TABLES[name]), subtables(TABLES[name])
    for key, value in table.items():
        where = f"{name}.{key}"
        if key in nested:
            _read_table(where, value, values)
        elif key in types:
            values[name][key] = _coerce(value, types[key], where)
        else:
            raise ConfigError(f"{where}: unknown key")


def _build(name: str, values: dict[str, dict[str, Any]]) -> Any:
    """The dataclass of one table (its own tables first), each setting checked, and each
    of its tables as a whole (a table's check begins with the key: "KEY: ...")."""
    cls = TABLES[name]
    nested = {key: _build(f"{name}.{key}", values) for key in subtables(cls)}
    obj = cls(**values[name], **nested)
    for f in dataclasses.fields(cls):
        check = f.metadata.get("check")
        problem = check(getattr(obj, f.name)) if check else None
        if problem:
            raise ConfigError(f"{name}.{f.name}{'.' if f.name in nested else ': '}{problem}")
    return obj


def _nats_files(nats: NatsSettings, base: str) -> NatsSettings:
    """The files of [queue.nats] made absolute (relative to `base`), each an existing file."""
    files: dict[str, Any] = {}
    for key in ("creds", "nkey", "tls_ca", "tls_cert", "tls_key"):
        if entry := getattr(nats, key):
            files[key] = os.path.normpath(os.path.join(base, os.path.expanduser(entry)))
            if not os.path.isfile(files[key]):
                raise ConfigError(f"queue.nats.{key}: {entry!r} is not a file ({files[key]})")
    return dataclasses.replace(nats, **files)


def _task_path(entries: tuple[str, ...], base: str) -> tuple[str, ...]:
    """workers.task_path made absolute (relative to `base`), each an existing directory."""
    resolved = []
    for entry in entries:
        full = os.path.normpath(os.path.join(base, os.path.expanduser(entry)))
        if not os.path.isdir(full):
            raise ConfigError(f"workers.task_path: {entry!r} is not a directory ({full})")
        resolved.append(full)
    return tuple(resolved)


_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def _models(table: Any) -> dict[str, ModelSettings]:
    """[models.NAME] tables; an empty [models] table means no model at all."""
    if not isinstance(table, dict):
        raise ConfigError("models: expected a table of [models.NAME] tables")
    types = _field_types(ModelSettings)
    models = {}
    for name, entry in table.items():
        where = f"models.{name}"
        if not _MODEL_NAME.match(name):
            raise ConfigError(f"{where}: invalid model name")
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table, got {_type_name(entry)}")
        values = {}
        for key, value in entry.items():
            if key not in types:
                raise ConfigError(f"{where}.{key}: unknown key")
            values[key] = _coerce(value, types[key], f"{where}.{key}")
        model = ModelSettings(**values)
        for f in dataclasses.fields(ModelSettings):
            check = f.metadata.get("check")
            problem = check(getattr(model, f.name)) if check else None
            if problem:
                raise ConfigError(f"{where}.{f.name}: {problem}")
        if bool(model.path) == bool(model.package):
            raise ConfigError(f"{where}: set exactly one of path and package")
        models[name] = model
    return models
