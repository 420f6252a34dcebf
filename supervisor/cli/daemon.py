"""docbrainctl start, stop, restart, status, config: run the daemon and look at it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import click
import psutil

from supervisor.cli import render
from supervisor.cli.common import (POLL, WORKERS, CliExit, _call, _config, _not_running, _paths,
                                   _running, fail)
from supervisor.conf import envguard
from supervisor.conf.example import render_example
from supervisor.conf.settings import Config, help_of
from supervisor.proto import control
from supervisor.proto.paths import StatePaths
from supervisor.proto.pidfile import pid_is_ours, running_pid


@click.command()
@click.option("--foreground", is_flag=True, help="Run in this terminal (for systemd, launchd, "
              "containers); logs go to stderr as well as the log file.")
@click.option("--workers", type=WORKERS, default=None, help=help_of("workers", "count"))
@click.option("--log-to-stderr/--no-log-to-stderr", default=True, hidden=True)
@click.pass_context
def start(ctx: click.Context, foreground: bool, workers: int | None, log_to_stderr: bool) -> None:
    """Start the daemon; return once every worker is READY."""
    config = _config(ctx, workers)
    paths = _paths(config)
    paths.create()
    pid = running_pid(paths.pidfile)
    if pid is not None:
        if foreground:  # this process was to be the daemon, and cannot be
            fail(1, f"already running (pid {pid})")
        click.echo(f"docbrain is already running (pid {pid})")  # as systemctl start: 0
        return
    if foreground:
        # Imported here: the daemon pulls in zmq machinery the other commands do not need.
        from supervisor.daemon.daemon import Daemon

        raise CliExit(Daemon(config, log_to_stderr=log_to_stderr,
                             overrides={"workers.count": workers}).run())
    _start_detached(config, paths, workers)


def _start_detached(config: Config, paths: StatePaths, workers: int | None) -> None:
    cmd = [sys.executable, "-m", "supervisor"]
    if config.path:
        cmd += ["--config", config.path]
    cmd += ["start", "--foreground", "--no-log-to-stderr"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    offset = os.path.getsize(paths.log_file) if os.path.exists(paths.log_file) else 0
    with open(paths.log_file, "ab") as out:
        # A new session (setsid): the daemon outlives this command and its terminal.
        daemon = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                  start_new_session=True)
    deadline = time.monotonic() + config.supervisor.start_timeout
    while True:
        code = daemon.poll()
        if code is not None:
            lines = _log_since(paths.log_file, offset)
            for line in lines:
                if "startup failed: " in line:  # the daemon's own account of why
                    fail(1, line.split("startup failed: ", 1)[1])
            fail(1, f"the daemon exited with code {code} while starting; "
                 f"see {paths.log_file}", lines)
        status = _try_status(config, paths)
        if status is not None:
            states = [w["state"] for w in status["workers"]]
            fatal = [w for w in status["workers"] if w["state"] == "FATAL"]
            if fatal:
                _stop_started(config, paths, daemon)
                w = fatal[0]
                fail(1, f"worker slot {w['slot']} failed to start: {w['reason']}",
                     w["stderr_tail"])
            if all(s in ("READY", "BUSY") for s in states):
                click.echo(f"docbrain started (pid {daemon.pid}, {len(states)} workers READY)")
                return
        if time.monotonic() > deadline:
            _stop_started(config, paths, daemon)
            fail(1, f"workers not READY within {config.supervisor.start_timeout:g} s "
                 f"(states: {', '.join(states) if status else 'no answer'}); "
                 f"see {paths.log_file}")
        time.sleep(POLL)


def _try_status(config: Config, paths: StatePaths) -> dict[str, Any] | None:
    if not os.path.exists(paths.socket("control")):
        return None
    try:
        return control.call(paths.endpoint("control"), "status", timeout=1.0)
    except control.ControlError:
        return None


def _stop_started(config: Config, paths: StatePaths, daemon: subprocess.Popen[bytes]) -> None:
    """A start that failed leaves nothing running."""
    try:
        control.call(paths.endpoint("control"), "stop", timeout=2.0)
        daemon.wait(config.workers.stop_timeout + 10)
    except (control.ControlError, subprocess.TimeoutExpired):
        daemon.kill()
        daemon.wait()


def _log_since(path: str, offset: int, limit: int = 15) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    return lines[-limit:]


@click.command()
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds workers get after SIGTERM before SIGKILL "
                   "(default: workers.stop_timeout).")
@click.pass_context
def stop(ctx: click.Context, timeout: float | None) -> None:
    """Stop the workers (SIGTERM, then SIGKILL) and the daemon."""
    config = _config(ctx)
    paths = _paths(config)
    pid = running_pid(paths.pidfile)
    if pid is None:  # as systemctl stop: nothing to do is done
        click.echo(_not_running(paths))
        return
    _call(config, "stop", **({} if timeout is None else {"timeout": timeout}))
    _wait_gone(pid, paths, (timeout or config.workers.stop_timeout) + 10)
    click.echo(f"docbrain stopped (pid {pid})")


def _wait_gone(pid: int, paths: StatePaths, limit: float) -> None:
    deadline = time.monotonic() + limit
    # A daemon in another PID namespace: its pid means nothing here; its lock does.
    ours = pid_is_ours(paths.pidfile)
    while running_pid(paths.pidfile) is not None or (ours and _alive(pid)):
        if time.monotonic() > deadline:
            fail(1, f"the daemon (pid {pid}) did not exit within {limit:g} s")
        time.sleep(POLL)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@click.command()
@click.option("--workers", type=WORKERS, default=None, help=help_of("workers", "count"))
@click.pass_context
def restart(ctx: click.Context, workers: int | None) -> None:
    """Stop the daemon if it runs, then start it (this also clears FATAL slots)."""
    config = _config(ctx, workers)
    paths = _paths(config)
    pid = running_pid(paths.pidfile)
    if pid is not None:
        _call(config, "stop")
        _wait_gone(pid, paths, config.workers.stop_timeout + 10)
        click.echo(f"docbrain stopped (pid {pid})")
    paths.create()
    _start_detached(config, paths, workers)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for programs.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the daemon and its workers."""
    config = _config(ctx)
    _running(_paths(config))
    data = _call(config, "status")
    click.echo(json.dumps(data, indent=2) if as_json else render.status(data))


@click.command("config")
@click.option("--example", is_flag=True, help="Print the example file: every key, commented.")
@click.pass_context
def config_cmd(ctx: click.Context, example: bool) -> None:
    """Check the configuration and print it as it is in force (or the example file)."""
    if example:
        click.echo(render_example(envguard.guard_defaults(cores=1, workers=1)), nl=False)
        return
    config = _config(ctx)
    data = config.to_dict()
    data["env"] = envguard.guards(config)
    click.echo(json.dumps({"path": config.path, **data}, indent=2))




COMMANDS = (start, stop, restart, status, config_cmd)
