"""Service units: checked by systemd-analyze, and install-service run as docbrainctl.

Nothing here writes to /etc or /Library: system-wide units are only rendered or printed
with --dry-run; --user installs go to a HOME under tmp_path. Rendering alone is checked in
tests/unit/test_units.py.
"""

from __future__ import annotations

import os
import plistlib
import pwd
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import Instance
from helpers_units import VENV_CTL, params

from supervisor.service import units

SYSTEM_UNIT = Path("/etc/systemd/system/docbrain.service")


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
