"""docbrainctl: start, stop, restart and inspect the DocBrain supervisor.

Exit codes: 0 ok; 1 failed; 2 usage or configuration error; 3 no daemon running
(`status`, `stop`), as LSB init scripts do. Errors are one line on stderr.
"""

from __future__ import annotations

import sys

import click

from supervisor.cli import daemon, doctor, jobs, ops, queue, service
from supervisor.cli.common import CliExit
from supervisor.conf.config import ConfigError
from supervisor.proto.paths import StateDirError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Configuration file (TOML). Default: $DOCBRAIN_CONFIG, else built-in defaults.")
@click.version_option(package_name="docbrain-supervisor", prog_name="docbrainctl")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Run DocBrain's machine-learning workers: spawned, supervised, restarted."""
    ctx.obj = {"config_path": config_path}



for _module in (daemon, jobs, queue, ops, service, doctor):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    try:
        code = cli.main(prog_name="docbrainctl", standalone_mode=False)
    except CliExit as exc:
        if exc.message:
            click.echo(f"docbrainctl: {exc.message}", err=True)
        for line in exc.details:
            click.echo(f"  {line}", err=True)
        sys.exit(exc.code)
    except (ConfigError, StateDirError) as exc:
        # A state_dir that cannot be used is a configuration error too: it will not go
        # away by trying again (and systemd's RestartPreventExitStatus=2 stops retrying).
        click.echo(f"docbrainctl: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("docbrainctl: aborted", err=True)
        sys.exit(1)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx else ""
        click.echo(f"docbrainctl: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


