"""docbrainctl's operations on the jobs of the queue: cancel, retry, purge. Each is one
control request, applied by the daemon to all the jobs it names or to none; on the NATS
backend docbrainctl makes them itself (supervisor.jobs.natscancel, natsupkeep)."""

from __future__ import annotations

import time
from typing import Any

import click

from supervisor.client import QueueUnreachable, SharedClient
from supervisor.cli.common import Duration, _config, _paths, _running, fail
from supervisor.conf.settings import Config
from supervisor.jobs import natscancel
from supervisor.jobs.natsupkeep import UpkeepError
from supervisor.jobs.upkeep import PURGEABLE, RETRYABLE
from supervisor.proto import control


def _request(config: Config, name: str, args: dict[str, Any]) -> Any:
    """The daemon's answer (on NATS, docbrainctl's own: `_shared`); a refusal is exit 2
    (nothing changed), no answer exit 1."""
    if config.queue.backend == "nats":
        return _shared(config, name, args)
    paths = _paths(config)
    _running(paths)
    try:
        return control.call(paths.endpoint("control"), name, args,
                            timeout=config.supervisor.control_timeout)
    except control.ControlTimeout as exc:
        fail(1, str(exc))
    except control.ControlError as exc:
        fail(2, str(exc))


def _shared(config: Config, name: str, args: dict[str, Any]) -> Any:
    """Cancel, retry or purge on the queue shared on NATS, made here (supervisor.jobs.
    natscancel, natsupkeep)."""
    try:
        client = SharedClient(config)
    except QueueUnreachable as exc:
        fail(1, str(exc))
    try:
        if name == "cancel":
            done, stopped = client.link.call(
                natscancel.cancel(client.layout, args["ids"], args["terminate"]),
                natscancel.CANCEL_TIMEOUT)
            return {"cancelled": done, "terminated": stopped}
        if name == "retry":
            return {"retried": client.retry_jobs(args["ids"], args["state"], args["task"])}
        before = None if args["older_than"] is None else time.time() - args["older_than"]
        return {"count": client.purge_jobs(args["state"], args["task"], before,
                                           args["apply"])}
    except (UpkeepError, natscancel.CancelError) as exc:
        fail(2, str(exc))
    except (QueueUnreachable, TimeoutError) as exc:
        fail(1, str(exc))
    finally:
        client.close()


@click.command()
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True)
@click.option("--terminate", is_flag=True,
              help="Also cancel running jobs: their workers are stopped (SIGKILL) and "
                   "replaced; the jobs are not run again.")
@click.pass_context
def cancel(ctx: click.Context, job_ids: tuple[str, ...], terminate: bool) -> None:
    """Cancel jobs: each ends `cancelled` (its waiters are told). A running job only with
    --terminate. All or none: if any ID is unknown, ended already, or running without
    --terminate, the line says which, nothing is cancelled, exit 2."""
    answer = _request(_config(ctx), "cancel", {"ids": list(job_ids), "terminate": terminate})
    terminated = set(answer.get("terminated", []))
    for job_id in answer.get("cancelled", []):
        click.echo(f"{job_id} cancelled" + (" (its worker was stopped)"
                                            if job_id in terminated else ""))


@click.command()
@click.argument("job_ids", metavar="[ID...]", nargs=-1)
@click.option("--state", type=click.Choice(RETRYABLE), default=None,
              help="Retry every job in this state (instead of IDs).")
@click.option("--task", default=None, help="With --state: only the jobs of this task.")
@click.pass_context
def retry(ctx: click.Context, job_ids: tuple[str, ...], state: str | None,
          task: str | None) -> None:
    """Run failed, dead or cancelled jobs again: pending, with the same id, payload and
    priority, their attempts reset; `job ID` keeps what they came to before in its history.
    All or none: an unknown ID or a job in another state is named, nothing changes, exit 2."""
    if job_ids and state:
        fail(2, "give either IDs or --state, not both")
    if not job_ids and not state:
        fail(2, "give the IDs of the jobs to retry, or --state")
    if task is not None and not state:
        fail(2, "--task needs --state")
    answer = _request(_config(ctx), "retry", {"ids": list(job_ids), "state": state,
                                              "task": task})
    retried = answer.get("retried", [])
    for job_id in retried:
        click.echo(f"{job_id} pending again")
    if state:
        click.echo(f"{len(retried):,} {state} job(s) retried", err=True)


@click.command()
@click.option("--state", type=click.Choice(PURGEABLE), default=None,
              help="The state of the jobs to remove (pending: those waiting, not running).")
@click.option("--task", default=None, help="Only the jobs of this task.")
@click.option("--older-than", "older_than", type=Duration(), default=None,
              help="Only jobs that ended (pending: were submitted) longer ago than this: "
                   "90s, 15m, 2h, 7d.")
@click.option("--yes", is_flag=True, help="Remove them; without it, only count them.")
@click.pass_context
def purge(ctx: click.Context, state: str | None, task: str | None, older_than: float | None,
          yes: bool) -> None:
    """Remove jobs of a state (--state, required) from the queue and the journal, for
    good. Without --yes it prints how many it would remove and changes nothing."""
    if state is None:
        fail(2, f"purge needs --state: one of {', '.join(PURGEABLE)}")
    answer = _request(_config(ctx), "purge", {"state": state, "task": task,
                                              "older_than": older_than, "apply": yes})
    count = int(answer.get("count", 0))
    if yes:
        click.echo(f"removed {count:,} {state} job(s)")
    else:
        click.echo(f"would remove {count:,} {state} job(s); run again with --yes to remove "
                   "them")


COMMANDS = (cancel, retry, purge)
