"""Service units: rendering, checked line by line, by plistlib and as supervisord reads
its files, where they go and how they are enabled. systemd-analyze's verdict and
install-service itself are in tests/system/test_units.py.
"""

from __future__ import annotations

import configparser
import dataclasses
import plistlib
import shlex
import sys
from pathlib import Path
from types import MappingProxyType

import pytest
from conftest import REPO
from helpers_units import VENV_CTL, params

from supervisor.service import units
from supervisor.service.units import Target


# -- the examples in etc/ ------------------------------------------------------------------

@pytest.mark.parametrize("relative", sorted(units.example_files()))
def test_example_files_are_generated_by_the_code(relative: str) -> None:
    assert (REPO / "etc" / relative).read_text() == units.example_files()[relative], \
        "run `make example-config`"


def test_systemd_unit_lines(tmp_path: Path) -> None:
    p = params(tmp_path)
    lines = units.render_systemd(p, user_unit=False).splitlines()
    config = str(tmp_path / "my config%%.toml")
    assert f'ExecStart={VENV_CTL} --config "{config}" start --foreground' in lines
    for line in ("Type=notify", "NotifyAccess=main",
                 f'ExecReload={VENV_CTL} --config "{config}" reload',
                 "WatchdogSec=30", "Restart=on-failure", "RestartSec=2",
                 "RestartPreventExitStatus=2", "KillMode=mixed",
                 "TimeoutStartSec=150", "TimeoutStopSec=37.5", "User=docbrain",
                 "Group=docbrain", "WantedBy=multi-user.target",
                 'Environment="EMPTY="', 'Environment="SPACED=a b  c"',
                 'Environment="QUOTED=say \\"hi\\""', 'Environment="SLASHED=a\\\\b"',
                 'Environment="PERCENT=50%%"', 'Environment="DOLLAR=$HOME"',
                 'Environment="OMP_NUM_THREADS=2"'):
        assert line in lines, line
    user_lines = units.render_systemd(p, user_unit=True).splitlines()
    assert "WantedBy=default.target" in user_lines
    assert not [line for line in user_lines if line.startswith(("User=", "Group="))]
    as_root = units.render_systemd(dataclasses.replace(p, user="root"), user_unit=False)
    assert "User=" not in as_root and "Group=" not in as_root


def test_exec_start_quotes_what_systemd_would_expand(tmp_path: Path) -> None:
    p = params(tmp_path, program=("/opt/my venv/bin/docbrainctl",), config_path="/a/$b%c.toml")
    exec_start = [line for line in units.render_systemd(p, False).splitlines()
                  if line.startswith("ExecStart=")]
    assert exec_start == ['ExecStart="/opt/my venv/bin/docbrainctl" --config "/a/$$b%%c.toml" '
                          'start --foreground']


def test_without_a_config_file_there_is_no_config_option(tmp_path: Path) -> None:
    p = params(tmp_path, config_path=None)
    assert p.argv() == [VENV_CTL, "start", "--foreground"]


def test_program_falls_back_to_the_interpreter(tmp_path: Path) -> None:
    python = str(tmp_path / "bin" / "python3")  # no docbrainctl next to it
    assert units.program_for(python) == (python, "-m", "supervisor")
    assert units.program_for(sys.executable) == (VENV_CTL,)


# -- launchd -------------------------------------------------------------------------------

@pytest.mark.parametrize("system", [False, True], ids=["agent", "daemon"])
def test_launchd_plist(tmp_path: Path, system: bool) -> None:
    p = params(tmp_path)
    plist = plistlib.loads(units.render_launchd(p, system=system).encode())
    log = str(tmp_path / "state dir" / "logs" / "launchd.log")
    expected = {
        "Label": "com.docbrain.supervisor",
        "ProgramArguments": [VENV_CTL, "--config", str(tmp_path / "my config%.toml"),
                             "start", "--foreground", "--no-log-to-stderr"],
        "EnvironmentVariables": dict(p.env),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "StandardOutPath": log,
        "StandardErrorPath": log,
        "ExitTimeOut": 38,
        "ProcessType": "Standard",
        **({"UserName": "docbrain", "GroupName": "docbrain"} if system else {}),
    }
    assert plist == expected
    assert plist["EnvironmentVariables"]["EMPTY"] == ""
    assert plist["ExitTimeOut"] > p.stop_timeout


# -- supervisord ---------------------------------------------------------------------------

def _supervisord_split(text: str) -> list[str]:
    """How supervisord 4.3 reads command=: %(name)s expansion (%% is a %), then POSIX shell
    words (process.py)."""
    return shlex.split(text.replace("%%", "%"))


def _supervisord_environment(text: str) -> dict[str, str]:
    """How supervisord 4.3 reads environment= (datatypes.dict_of_key_value_pairs): after
    expansion, a non-POSIX shlex; each value loses the quote characters at its ends."""
    lexer = shlex.shlex(text.replace("%%", "%"))
    lexer.wordchars += "/.+-():"
    tokens = list(lexer)
    assert all(sep == "," for sep in tokens[3::4]) and tokens[1::4] == ["="] * len(tokens[::4])
    return {k: v.strip("'\"") for k, v in zip(tokens[::4], tokens[2::4])}


def test_supervisord_program(tmp_path: Path) -> None:
    # A value that ends in a quote cannot be written: supervisord strips quotes off the ends.
    with pytest.raises(units.UnitError, match="QUOTED='say \"hi\"' cannot be written"):
        units.render_supervisord(params(tmp_path))
    env = {k: v for k, v in params(tmp_path).env.items() if k != "QUOTED"}
    p = params(tmp_path, env=MappingProxyType({**env, "INNER": 'a "b" c', "COMMA": "x,y=z"}))
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read_string(units.render_supervisord(p))
    assert parser.sections() == ["program:docbrain"]
    program = dict(parser["program:docbrain"])
    assert _supervisord_split(program["command"]) == [*p.argv(), "--no-log-to-stderr"]
    assert _supervisord_environment(program["environment"]) == dict(p.env)  # awkward too
    assert program["stopsignal"] == "TERM"
    assert program["stopwaitsecs"] == "38"  # stop_timeout 7.5 s + 30 s, rounded up
    assert program["killasgroup"] == "true" and program["stopasgroup"] == "false"
    assert program["autorestart"] == "unexpected" and program["exitcodes"] == "0"
    assert int(program["startsecs"]) >= 10
    assert program["user"] == "docbrain"
    as_root = units.render_supervisord(dataclasses.replace(p, user="root"))
    assert "user=" not in as_root


# -- where it goes and how it is enabled ---------------------------------------------------

def test_install_paths() -> None:
    home = "/home/ann"
    assert (units.install_path(Target("systemd", user=False), home)
            == "/etc/systemd/system/docbrain.service")
    assert (units.install_path(Target("systemd", user=True), home)
            == "/home/ann/.config/systemd/user/docbrain.service")
    assert (units.install_path(Target("systemd", user=True), home, "/x/conf")
            == "/x/conf/systemd/user/docbrain.service")
    assert (units.install_path(Target("launchd", user=True), home)
            == "/home/ann/Library/LaunchAgents/com.docbrain.supervisor.plist")
    assert (units.install_path(Target("launchd", user=False), home)
            == "/Library/LaunchDaemons/com.docbrain.supervisor.plist")
    assert (units.install_path(Target("supervisord", user=False), home)
            == "/etc/supervisor/conf.d/docbrain.conf")


def test_enable_commands() -> None:
    def first(target: Target, uid: int) -> str:
        return units.enable_commands(target, "/P", uid, "ann")[0][1]
    assert (first(Target("systemd", False), 0)
            == "systemctl daemon-reload && systemctl enable --now docbrain.service")
    assert (first(Target("systemd", False), 501)
            == "sudo systemctl daemon-reload && sudo systemctl enable --now docbrain.service")
    assert (first(Target("systemd", True), 501) == "systemctl --user daemon-reload && "
            "systemctl --user enable --now docbrain.service")
    assert "loginctl enable-linger ann" in [
        c for _, c in units.enable_commands(Target("systemd", True), "/P", 501, "ann")]
    assert first(Target("launchd", True), 501) == "launchctl bootstrap gui/501 /P"
    assert first(Target("launchd", False), 501) == "sudo launchctl bootstrap system /P"
    assert (first(Target("supervisord", False), 501)
            == "sudo supervisorctl reread && sudo supervisorctl update docbrain")
