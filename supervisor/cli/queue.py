"""docbrainctl's operations on jobs in the queue: cancel."""

from __future__ import annotations

import click

from supervisor.cli.common import _config, _paths, _running, fail
from supervisor.jobs.cancel import NATS_CANCEL
from supervisor.proto import control


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
    config = _config(ctx)
    if config.queue.backend == "nats":
        fail(2, NATS_CANCEL)
    paths = _paths(config)
    _running(paths)
    try:
        answer = control.call(paths.endpoint("control"), "cancel",
                              {"ids": list(job_ids), "terminate": terminate},
                              timeout=config.supervisor.control_timeout)
    except control.ControlTimeout as exc:
        fail(1, str(exc))
    except control.ControlError as exc:
        fail(2, str(exc))
    terminated = set(answer.get("terminated", []))
    for job_id in answer.get("cancelled", []):
        click.echo(f"{job_id} cancelled" + (" (its worker was stopped)"
                                            if job_id in terminated else ""))


COMMANDS = (cancel,)
