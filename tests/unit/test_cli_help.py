"""`docbrainctl --help` and the `--help` of every subcommand: each command module adds its
commands to the group (supervisor.cli.main), and none is left out or broken."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from supervisor.cli import daemon, doctor, jobs, ops, queue, service
from supervisor.cli.main import cli

EXPECTED = {"start", "stop", "restart", "status", "config", "reload", "scale", "cleanup",
            "submit", "jobs", "job", "cancel", "retry", "purge", "install-service", "doctor",
            "logs"}


def test_the_group_has_every_command_of_every_module() -> None:
    modules = (daemon, doctor, jobs, ops, queue, service)
    added = {command.name for module in modules for command in module.COMMANDS}
    assert added == EXPECTED == set(cli.commands)


def test_top_level_help() -> None:
    result = CliRunner().invoke(cli, ["--help"], prog_name="docbrainctl")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: docbrainctl [OPTIONS] COMMAND [ARGS]...")
    for name in EXPECTED:
        assert f"  {name} " in result.output


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_subcommand_help(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"], prog_name="docbrainctl")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: docbrainctl {name} ")
    assert (cli.commands[name].help or "").split("\n")[0][:30] in result.output
    short = CliRunner().invoke(cli, [name, "-h"], prog_name="docbrainctl")
    assert short.exit_code == 0 and short.output == result.output
