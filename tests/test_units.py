"""Service units: rendering (checked by systemd-analyze and plistlib) and install-service.

Nothing here writes to /etc or /Library: system-wide units are only rendered or printed
with --dry-run; --user installs go to a HOME under tmp_path.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import plistlib
import pwd
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from conftest import Instance

from supervisor import envguard, units
from supervisor.units import STATE_DIR_VAR, Target, UnitParams

REPO = Path(__file__).resolve().parent.parent
VENV_CTL = str(Path(sys.executable).parent / "docbrainctl")
SYSTEM_UNIT = Path("/etc/systemd/system/docbrain.service")
# Values that need quoting; the empty one must survive as an empty value.
AWKWARD_ENV = {"EMPTY": "", "SPACED": "a b  c", "QUOTED": 'say "hi"', "SLASHED": "a\\b",
               "PERCENT": "50%", "DOLLAR": "$HOME"}


def params(tmp_path: Path, **changes: Any) -> UnitParams:
    state_dir = str(tmp_path / "state dir")
    base = UnitParams(
        program=units.program_for(sys.executable),
        config_path=str(tmp_path / "my config%.toml"),
        state_dir=state_dir,
        env=MappingProxyType({**envguard.guard_defaults(cores=4, workers=2), **AWKWARD_ENV,
                              STATE_DIR_VAR: state_dir}),
        start_timeout=120.0, stop_timeout=7.5, user="docbrain", group="docbrain")
    return dataclasses.replace(base, **changes)


# -- the examples in etc/ ------------------------------------------------------------------

@pytest.mark.parametrize("relative", sorted(units.example_files()))
def test_example_files_are_generated_by_the_code(relative: str) -> None:
    assert (REPO / "etc" / relative).read_text() == units.example_files()[relative], \
        "run `make example-config`"


# -- systemd -------------------------------------------------------------------------------

def analyze(unit: Path, user: bool, tmp_path: Path) -> list[str]:
    """systemd-analyze verify's complaints about `unit` (it exits 0 on mere warnings)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    env = dict(os.environ)
    if user:  # the user manager it simulates needs a runtime directory
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(["--user"] if user else []), str(unit)],
        env=env, capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if unit.name in line or "docbrain" in line]
    if result.returncode != 0:
        problems.append(f"exit code {result.returncode}: {result.stderr.strip()}")
    return problems


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_systemd_unit_passes_verify(tmp_path: Path, user: bool) -> None:
    p = params(tmp_path)
    assert p.program == (VENV_CTL,)  # verify insists that ExecStart's program exists
    unit = tmp_path / "docbrain.service"
    unit.write_text(units.render_systemd(p, user_unit=user))
    assert analyze(unit, user, tmp_path) == []

    # The check can fail: the same unit with one bad value is reported.
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notified"))
    assert any("Type" in line or "service type" in line
               for line in analyze(unit, user, tmp_path))


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


# -- docbrainctl install-service -----------------------------------------------------------

GUARD_CONFIG = '[env]\nDOCBRAIN_TEST_GUARD = "two words"\nEMPTY_GUARD = ""\n'


@pytest.fixture
def home(instance: Instance, tmp_path: Path) -> Path:
    """An empty HOME for the command, so that a --user install lands under tmp_path."""
    path = tmp_path / "home"
    path.mkdir()
    instance.env["HOME"] = str(path)
    instance.env.pop("XDG_CONFIG_HOME", None)
    instance.env.pop("SUDO_USER", None)
    instance.write_config(GUARD_CONFIG, workers=1)
    return path


def _system_unit_state() -> tuple[bool, float]:
    return SYSTEM_UNIT.exists(), SYSTEM_UNIT.stat().st_mtime if SYSTEM_UNIT.exists() else 0.0


def test_dry_run_prints_and_writes_nothing(instance: Instance, home: Path) -> None:
    before = _system_unit_state()
    result = instance.ctl("install-service", "--systemd", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert _system_unit_state() == before
    assert list(home.iterdir()) == []
    assert not instance.state_dir.exists()
    out = result.stdout
    assert f"--config {instance.config_path} start --foreground" in out
    for line in ('Environment="DOCBRAIN_TEST_GUARD=two words"', 'Environment="EMPTY_GUARD="',
                 'Environment="TOKENIZERS_PARALLELISM=false"',
                 'Environment="PYTHONDONTWRITEBYTECODE=1"',
                 f'Environment="DOCBRAIN_SUPERVISOR_STATE_DIR={instance.state_dir}"'):
        assert line in out.splitlines(), line
    assert "would write /etc/systemd/system/docbrain.service" in result.stderr
    assert "systemctl daemon-reload && systemctl enable --now docbrain.service" in result.stderr


def test_dry_run_launchd_prints_a_plist(instance: Instance, home: Path) -> None:
    result = instance.ctl("install-service", "--launchd", "--dry-run")
    assert result.returncode == 0, result.stderr
    plist = plistlib.loads(result.stdout.encode())
    assert plist["ProgramArguments"][1:3] == ["--config", str(instance.config_path)]
    assert plist["EnvironmentVariables"]["DOCBRAIN_TEST_GUARD"] == "two words"
    assert plist["StandardErrorPath"] == str(instance.state_dir / "logs" / "launchd.log")
    assert list(home.iterdir()) == [] and not instance.state_dir.exists()


@pytest.mark.parametrize("xdg", [False, True], ids=["home", "xdg_config_home"])
def test_user_systemd_unit_is_written_where_systemd_looks(
        instance: Instance, home: Path, tmp_path: Path, xdg: bool) -> None:
    config_home = tmp_path / "xdg-config" if xdg else home / ".config"
    if xdg:
        instance.env["XDG_CONFIG_HOME"] = str(config_home)
    dry = instance.ctl("install-service", "--systemd", "--user", "--dry-run")
    result = instance.ctl("install-service", "--systemd", "--user")
    assert result.returncode == 0, result.stderr
    unit = config_home / "systemd" / "user" / "docbrain.service"
    assert unit.read_text() == dry.stdout
    assert unit.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in unit.parent.iterdir()] == ["docbrain.service"]  # no temp left
    assert f"wrote {unit}" in result.stdout
    assert "systemctl --user daemon-reload && systemctl --user enable --now" in result.stdout
    assert "loginctl enable-linger" in result.stdout
    assert analyze(unit, True, tmp_path) == []

    again = instance.ctl("install-service", "--systemd", "--user")
    assert again.returncode == 0 and "systemctl --user restart docbrain.service" in again.stdout


def test_user_launchd_plist_is_written_with_its_log_directory(
        instance: Instance, home: Path) -> None:
    result = instance.ctl("install-service", "--launchd", "--user")
    assert result.returncode == 0, result.stderr
    plist_path = home / "Library" / "LaunchAgents" / "com.docbrain.supervisor.plist"
    plist = plistlib.loads(plist_path.read_bytes())
    assert "UserName" not in plist
    assert (instance.state_dir / "logs").is_dir()  # launchd would not create it
    assert f"launchctl bootstrap gui/{os.geteuid()} {plist_path}" in result.stdout


def test_a_system_unit_runs_as_whoever_ran_sudo(instance: Instance, home: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("SUDO_USER counts only for root")
    other = next((p for p in pwd.getpwall() if p.pw_uid not in (0, 65534)), None)
    if other is None:
        pytest.skip("no account other than root here")
    instance.env["SUDO_USER"] = other.pw_name
    result = instance.ctl("install-service", "--systemd", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"User={other.pw_name}" in result.stdout.splitlines()
    as_root = instance.ctl("install-service", "--systemd", "--dry-run", "--run-as", "root")
    assert "User=" not in as_root.stdout


@pytest.mark.parametrize("args, message", [
    (["--systemd", "--launchd"], "give one of --systemd, --launchd"),
    (["--launchd", "--supervisord", "--dry-run"], "give one of --launchd, --supervisord"),
    (["--supervisord", "--user"], "supervisord has no per-user programs"),
    (["--user", "--run-as", "root"], "--run-as"),
    (["--run-as", "no-such-user-here", "--dry-run"], "no such user"),
])
def test_bad_arguments_exit_2_and_write_nothing(instance: Instance, home: Path,
                                                args: list[str], message: str) -> None:
    before = _system_unit_state()
    result = instance.ctl("install-service", *args)
    assert result.returncode == 2
    assert result.stderr.startswith("docbrainctl: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""
    assert _system_unit_state() == before and list(home.iterdir()) == []


def test_unwritable_place_is_one_line_and_exit_1(instance: Instance, home: Path,
                                                 tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    instance.env["XDG_CONFIG_HOME"] = str(blocker)  # its systemd/user cannot be created
    result = instance.ctl("install-service", "--systemd", "--user")
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"docbrainctl: cannot write {blocker}/systemd/user/docbrain.service: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


# -- the unit's commands, run for real ---------------------------------------------------

def _unit_command(unit: str, key: str) -> list[str]:
    """The argument vector of an Exec*= line, as systemd would split it (no $ or % in it)."""
    line = next(line for line in unit.splitlines() if line.startswith(f"{key}="))
    return shlex.split(line.split("=", 1)[1])


def test_exec_reload_reports_the_outcome_and_a_bad_file_stops_restarts(
        instance: Instance, home: Path) -> None:
    """`systemctl reload` runs ExecReload and is as good as its exit code; `Restart=` stops
    on the exit code that a configuration error gives."""
    instance.write_config(workers=1)
    unit = instance.ctl("install-service", "--systemd", "--dry-run").stdout
    reload_argv, start_argv = _unit_command(unit, "ExecReload"), _unit_command(unit, "ExecStart")
    assert reload_argv[-1] == "reload" and start_argv[-2:] == ["start", "--foreground"]
    prevent = int(next(line for line in unit.splitlines()
                       if line.startswith("RestartPreventExitStatus=")).split("=")[1])

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=instance.env, capture_output=True, text=True,
                              timeout=200)

    assert instance.ctl("start").returncode == 0
    instance.wait_ready(1)
    good = run(reload_argv)
    assert good.returncode == 0 and good.stdout.strip().endswith("no changes"), good
    good_config = instance.config_path.read_text()

    assert "count = 1\n" in good_config
    instance.config_path.write_text(good_config.replace("count = 1\n", "count = 0\n"))
    refused = run(reload_argv)
    assert refused.returncode == 2, refused
    assert refused.stderr == "docbrainctl: workers.count: must be at least 1, got 0\n"
    # The same file at start: the exit code that stops systemd's restarts.
    started = run(start_argv)
    assert started.returncode == prevent == 2 and started.stderr == refused.stderr

    instance.config_path.write_text(good_config.replace(
        "[workers]\n", '[workers]\ntasks = ["no_such_module_here"]\n'))
    failed = run(reload_argv)
    assert failed.returncode == 1, failed
    assert "reload failed: " in failed.stderr and "no_such_module_here" in failed.stderr
    assert instance.wait_ready(1)["supervisor"]["reload"]["state"] == "failed"
    assert instance.ctl("stop").returncode == 0
