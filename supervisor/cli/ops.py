"""docbrainctl reload and scale: change a running daemon without stopping it; cleanup:
end the workers a dead daemon left behind."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from supervisor.cli.common import POLL, WORKERS, _call, _config, _paths, _running, fail
from supervisor.conf.settings import Config
from supervisor.pool import stale
from supervisor.proto.marker import MARKER_ENV, DaemonState


def _wait(config: Config, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """Poll the daemon's status until `done`; fail after start_timeout."""
    limit = config.supervisor.start_timeout
    deadline = time.monotonic() + limit
    while True:
        status = _call(config, "status")
        if done(status):
            return status
        if time.monotonic() > deadline:
            fail(1, f"{what} not finished within {limit:g} s; see docbrainctl status")
        time.sleep(POLL)


@click.command()
@click.option("--no-wait", is_flag=True, help="Return once the daemon accepted the reload.")
@click.pass_context
def reload(ctx: click.Context, no_wait: bool) -> None:
    """Read the configuration again and apply it (as SIGHUP does).

    Workers are replaced one at a time when what they are started with changed (tasks,
    environment, models, worker settings); no job is lost. If the first new worker dies
    before it is ready, the previous configuration is put back and this exits 1.
    """
    config = _config(ctx)  # a file that does not load is reported here, exit 2
    _running(_paths(config))
    reply = _call(config, "reload")
    generation = reply["generation"]
    if reply.get("queued"):
        click.echo("a reload is in progress; this one runs when it ends")
    if no_wait:
        for line in reply["changes"]:
            click.echo(f"  {line}")
        click.echo(f"reload {generation} accepted")
        return

    def ended(status: dict[str, Any]) -> bool:
        state = status["supervisor"]["reload"]
        return bool(state["generation"] > generation or (
            state["generation"] == generation and state["state"] in ("done", "failed")))

    state = _wait(config, ended, "the reload")["supervisor"]["reload"]
    for line in state["changes"]:
        click.echo(f"  {line}")
    if state["generation"] == generation and state["state"] == "failed":
        fail(1, f"reload failed: {state['error']}; the previous configuration stays in force")
    click.echo("reloaded" if state["changes"] else "reloaded: no changes")


@click.command()
@click.argument("count", type=WORKERS)
@click.option("--no-wait", is_flag=True, help="Return without waiting for the workers.")
@click.pass_context
def scale(ctx: click.Context, count: int, no_wait: bool) -> None:
    """Run COUNT workers until the next reload or restart (SIGTTIN/SIGTTOU: one more/less).

    New workers start at once; removed ones finish the job they run, and the jobs they
    held go back to the queue.
    """
    config = _config(ctx)
    _running(_paths(config))
    reply = _call(config, "scale", count=count)
    if not no_wait:
        def settled(status: dict[str, Any]) -> bool:
            workers = status["workers"]
            return len(workers) == count and all(
                w["state"] in ("READY", "BUSY", "FATAL") for w in workers)
        _wait(config, settled, f"scaling to {count} workers")
    click.echo(f"scaled to {count} worker{'' if count == 1 else 's'} (was {reply['was']})")


@click.command()
@click.option("--all", "every", is_flag=True,
              help="Orphans of every state_dir of this user, not only this one's.")
@click.option("--pid", "pids", type=int, multiple=True,
              help="End this marked worker although its daemon cannot be seen (it ran in "
                   "another PID namespace); repeatable.")
@click.option("--dry-run", is_flag=True, help="Print what would be ended; end nothing.")
@click.pass_context
def cleanup(ctx: click.Context, every: bool, pids: tuple[int, ...], dry_run: bool) -> None:
    """End orphaned workers: those whose daemon is gone (SIGTERM, 5 s, SIGKILL).

    Without options, the orphans of this state_dir, as `start` ends them. A worker whose
    marker comes from another PID namespace (a daemon in a container, seen from the host)
    is ended only when named with --pid: whether its daemon runs cannot be told from here.
    """
    state_dir = _paths(_config(ctx)).state_dir
    found = stale.survey()
    if pids:
        by_pid = {p.pid: p for p in found.processes}
        for pid in pids:  # every pid is checked before any is ended
            item = by_pid.get(pid)
            if item is None:
                fail(2, f"pid {pid} is not a docbrain worker of this user "
                     f"(no {MARKER_ENV} marker)")
            if item.daemon is DaemonState.ALIVE:
                fail(2, f"pid {pid} is a worker of the running daemon "
                     f"{item.marker.daemon_pid} (state_dir {item.marker.state_dir}): "
                     "stop that daemon instead")
        chosen = [by_pid[pid] for pid in dict.fromkeys(pids)]
    else:
        chosen = found.stale(None if every else state_dir)
    if dry_run:
        for item in chosen:
            click.echo(f"would end pid {item.pid} (daemon {item.marker.daemon_pid}, "
                       f"state_dir {item.marker.state_dir}): {item.cmdline}")
    elif chosen:
        _terminate_echoed(chosen)
    left = [p for p in found.unknown() if p not in chosen]
    if left:
        click.echo(f"left alone: {len(left)} worker(s) of a daemon in another PID namespace: "
                   + ", ".join(f"pid {p.pid} (state_dir {p.marker.state_dir})" for p in left)
                   + "; --pid PID ends one")
    if not pids and not every:
        others = [p for p in found.stale() if p not in chosen]
        if others:
            click.echo(f"left alone: {len(others)} orphaned worker(s) of other state_dirs; "
                       "--all ends them too")
    verb = "would end" if dry_run else "ended"
    click.echo(f"{verb} {len(chosen)} worker(s)" if chosen else "no orphaned workers to end")


def _terminate_echoed(chosen: list[stale.MarkedProcess]) -> None:
    """stale.terminate, its log lines (one per signal, with the pid) printed on stdout."""
    logger = stale.log
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        stale.terminate(chosen)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


COMMANDS = (reload, scale, cleanup)
