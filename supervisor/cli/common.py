"""What every docbrainctl command shares: its errors (CliExit, fail), the configuration it
runs with, and finding and calling the daemon. Command modules import this, never the
group (supervisor.cli.main), which imports them."""

from __future__ import annotations

import re
from typing import Any, NoReturn

import click

from supervisor.conf.config import ConfigError, load_config
from supervisor.conf.settings import Config, bounds_of, check_of
from supervisor.proto import control
from supervisor.proto.paths import StatePaths
from supervisor.proto.pidfile import read_pid, running_pid

POLL = 0.05  # seconds between checks while waiting on the daemon


class CliExit(Exception):
    def __init__(self, code: int, message: str = "", details: list[str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details or []


def fail(code: int, message: str, details: list[str] | None = None) -> NoReturn:
    raise CliExit(code, message, details)


class SettingRange(click.IntRange):
    """A number flag or argument that sets a bounded setting: click shows the setting's
    bounds in --help, and a value outside them is refused as the file's would be."""

    def __init__(self, section: str, key: str) -> None:
        super().__init__(*bounds_of(section, key))
        self.key, self.check = f"{section}.{key}", check_of(section, key)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        number = click.INT.convert(value, param, ctx)
        problem = self.check(number) if self.check else None
        if problem:
            raise ConfigError(f"{self.key}: {problem}")
        return number


WORKERS = SettingRange("workers", "count")


def _config(ctx: click.Context, workers: int | None = None) -> Config:
    config = load_config(ctx.obj["config_path"], overrides={"workers.count": workers})
    # install-service writes a unit that may run as another account: whether we could
    # write state_dir says nothing about it, but a file in its place is wrong for anyone.
    _paths(config).check(writable=ctx.info_name != "install-service")
    return config


def _paths(config: Config) -> StatePaths:
    return StatePaths.for_state_dir(config.supervisor.state_dir)


def _not_running(paths: StatePaths) -> str:
    """Why no daemon answers: a pidfile that no daemon holds was left by one that died
    without stopping (a clean stop removes it)."""
    left = read_pid(paths.pidfile)
    if left is not None:
        return (f"docbrain is not running; the last daemon (pid {left}) died without "
                f"stopping (state_dir {paths.state_dir})")
    return f"docbrain is not running (state_dir {paths.state_dir})"


def _running(paths: StatePaths) -> int:
    pid = running_pid(paths.pidfile)
    if pid is None:
        fail(3, _not_running(paths))
    return pid


def _call(config: Config, name: str, **args: Any) -> dict[str, Any]:
    try:
        return control.call(_paths(config).endpoint("control"), name, args,
                            timeout=config.supervisor.control_timeout)
    except control.ControlError as exc:
        fail(1, str(exc))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Duration(click.ParamType):
    """Seconds, written 90, 90s, 15m, 2h or 7d."""
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
        if match is None:
            self.fail(f"{value!r} is not a duration such as 90s, 15m, 2h or 7d", param, ctx)
        return float(match[1]) * _UNITS[match[2] or "s"]
