"""docbrainctl reload and scale: change a running daemon without stopping it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from supervisor.cli import POLL, _call, _config, _paths, _running, cli, fail
from supervisor.settings import MAX_WORKERS, Config


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


@cli.command()
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


@cli.command()
@click.argument("count", type=click.IntRange(1, MAX_WORKERS))
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
    click.echo(f"scaled to {count} workers (was {reply['was']})")
