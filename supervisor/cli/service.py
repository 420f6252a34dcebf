"""docbrainctl install-service: write a systemd unit, a launchd plist or a supervisord
program for this machine.

It writes the file and says which command enables it; it never runs systemctl, launchctl
or supervisorctl itself, so that nothing starts behind the user's back and the command
works in a chroot or an image build as well.
"""

from __future__ import annotations

import grp
import os
import pwd
import sys
import tempfile

import click

from supervisor.cli.common import _config, fail
from supervisor.conf.config import default_state_dir
from supervisor.conf.settings import Config
from supervisor.proto.paths import StatePaths
from supervisor.service import units


def _default_init() -> str:
    if sys.platform.startswith("linux"):
        return "systemd"
    if sys.platform == "darwin":
        return "launchd"
    fail(2, f"no init system known for {sys.platform}; give --systemd or --launchd")


def _account(name: str | None, user_scope: bool) -> pwd.struct_passwd:
    """The account the unit runs as: --run-as, else whoever ran this (for a system unit,
    through sudo too: `sudo docbrainctl install-service` is for the one who typed it)."""
    where = f"--run-as {name}"
    if user_scope:
        return pwd.getpwuid(os.geteuid())
    if name is None:
        name = os.environ.get("SUDO_USER")
        if os.geteuid() != 0 or not name:
            return pwd.getpwuid(os.geteuid())
        where = f"SUDO_USER={name}"
    try:
        return pwd.getpwnam(name)
    except KeyError:
        fail(2, f"{where}: no such user")


def _group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _state_dir_for(config: Config, account: pwd.struct_passwd) -> str:
    """state_dir as the service's account will have it: a default derived from our own
    home means the default in *its* home when the unit runs as someone else."""
    ours = os.path.abspath(default_state_dir(os.environ))
    if account.pw_uid != os.geteuid() and config.supervisor.state_dir == ours:
        return default_state_dir({"HOME": account.pw_dir})
    return config.supervisor.state_dir


def _write_atomically(path: str, text: str) -> None:
    """Temp file in the same directory, then rename: the init system never reads half a file."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".docbrain-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            # 0644: launchd refuses a LaunchDaemon plist that others may write.
            os.fchmod(fh.fileno(), 0o644)
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


def _prepare_launchd_logs(params: units.UnitParams, account: pwd.struct_passwd) -> None:
    """launchd opens StandardErrorPath itself and does not create its directory."""
    if account.pw_uid == os.geteuid():
        StatePaths.for_state_dir(params.state_dir).create()
        return
    if os.geteuid() == 0:  # a LaunchDaemon for another account: make the directories its own
        for path in (params.state_dir, params.log_dir):
            os.makedirs(path, mode=0o700, exist_ok=True)
            os.chown(path, account.pw_uid, account.pw_gid)


@click.command("install-service")
@click.option("--systemd", "use_systemd", is_flag=True,
              help="A systemd unit (the default on Linux).")
@click.option("--launchd", "use_launchd", is_flag=True,
              help="A launchd plist (the default on macOS).")
@click.option("--supervisord", "use_supervisord", is_flag=True,
              help=f"A supervisord [program:docbrain], in {units.SUPERVISORD_CONF}.")
@click.option("--user", "user_scope", is_flag=True,
              help="For your own service manager (systemctl --user, a LaunchAgent): "
                   "runs as you and needs no root. Default: a system-wide unit.")
@click.option("--run-as", metavar="USER", default=None,
              help="The account a system-wide unit runs as (default: you, also through sudo; "
                   "root: no User= line).")
@click.option("--dry-run", is_flag=True, help="Print the unit instead of writing it.")
@click.pass_context
def install_service(ctx: click.Context, use_systemd: bool, use_launchd: bool,
                    use_supervisord: bool, user_scope: bool, run_as: str | None,
                    dry_run: bool) -> None:
    """Write a service unit that runs the daemon under systemd, launchd or supervisord.

    It runs `docbrainctl start --foreground` with this config, state_dir and environment
    guards, and prints the command that enables it (it does not run it).
    """
    chosen = [name for name, flag in (("systemd", use_systemd), ("launchd", use_launchd),
                                      ("supervisord", use_supervisord)) if flag]
    if len(chosen) > 1:
        fail(2, "give one of " + ", ".join(f"--{name}" for name in chosen))
    if user_scope and run_as is not None:
        fail(2, "--run-as is for a system-wide unit; a --user unit runs as you")
    if user_scope and use_supervisord:
        fail(2, "--user: supervisord has no per-user programs; --dry-run prints the section "
             "for a supervisord of your own")
    init = chosen[0] if chosen else _default_init()
    target = units.Target(init, user=user_scope)
    config = _config(ctx)
    account = _account(run_as, user_scope)
    params = units.UnitParams.for_config(
        config, units.program_for(sys.executable), user=account.pw_name,
        group=_group_name(account.pw_gid), state_dir=_state_dir_for(config, account))
    try:
        text = units.render(target, params)
    except units.UnitError as exc:
        fail(2, str(exc))
    home = os.environ.get("HOME") or os.path.expanduser("~")
    path = units.install_path(target, home, os.environ.get("XDG_CONFIG_HOME") or None)
    me = pwd.getpwuid(os.geteuid()).pw_name
    commands = units.enable_commands(target, path, os.geteuid(), me,
                                     replacing=not dry_run and os.path.exists(path))

    if dry_run:
        click.echo(text, nl=False)
        # The unit alone on stdout, so that `--dry-run > FILE` gives a usable file.
        click.echo(f"would write {path} (--dry-run: nothing written)", err=True)
        for what, command in commands:
            click.echo(f"{what}: {command}", err=True)
        return
    try:
        if init == "launchd":
            _prepare_launchd_logs(params, account)
        _write_atomically(path, text)
    except OSError as exc:
        hint = "" if user_scope else "; run it as root, or use --user for a unit of your own"
        fail(1, f"cannot write {path}: {exc.strerror or exc}{hint}")
    click.echo(f"wrote {path}")
    for what, command in commands:
        click.echo(f"{what}:\n  {command}")


COMMANDS = (install_service,)
