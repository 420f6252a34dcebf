"""docbrainctl doctor's checks on made-up facts: the cases no real process here can
produce. Real daemons and a planted orphan are in tests/system/test_doctor.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from supervisor.conf import envguard
from supervisor.conf.settings import Config, SupervisorSettings
from supervisor.doctor.checks import (OUR_PACKAGE, Facts, Probe, ProcessInfo, Status, check_control,
                                      check_daemon, check_guards, check_import_name, check_orphans,
                                      check_start_method, check_state_dir, check_torch,
                                      guard_differences, spawn_problems)
from supervisor.doctor.facts import is_celery_worker, is_daemon_cmdline
from supervisor.proto.paths import StatePaths

SPAWN_CMDLINE = (sys.executable, "-c", "from multiprocessing.spawn import spawn_main; "
                 "spawn_main(tracker_fd=5, pipe_handle=7)", "--multiprocessing-fork")


# -- fakes: the cases a real daemon here does not produce ------------------------------------

def _facts(tmp_path: Path, **kwargs: Any) -> Facts:
    config = Config(supervisor=SupervisorSettings(state_dir=str(tmp_path / "state")))
    return Facts(config, StatePaths.for_state_dir(str(tmp_path / "state")), **kwargs)


def _daemon_facts(tmp_path: Path, env: dict[str, str], *workers: ProcessInfo) -> Facts:
    status = {"supervisor": {"pid": 100}, "workers": [], "env": env}
    return _facts(tmp_path, daemon_pid=100, status=status, workers=workers)


def test_guard_comparison() -> None:
    problems = guard_differences({"A": "1", "B": "x", "C": ""},
                                 {"A": "2", "C": "", "OBJC_DISABLE_INITIALIZE_FORK_SAFETY": "YES"},
                                 "worker pid 7")
    assert problems == ["A='2' in worker pid 7, expected '1'", "B missing in worker pid 7",
                        "OBJC_DISABLE_INITIALIZE_FORK_SAFETY is set in worker pid 7"]


def test_guards_check_with_fakes(tmp_path: Path) -> None:
    guards = envguard.guards(_facts(tmp_path).config)
    good = ProcessInfo(7, SPAWN_CMDLINE, 100, {**guards, "HOME": "/x"}, slot=0)
    ok = check_guards(_daemon_facts(tmp_path, guards, good))
    assert ok.status is Status.PASS and "worker pid 7 carry all" in ok.detail

    lacking = {k: v for k, v in guards.items() if k != "OMP_NUM_THREADS"}
    missing = check_guards(_daemon_facts(tmp_path, guards, ProcessInfo(8, environ=lacking, slot=0)))
    assert missing.status is Status.FAIL
    assert missing.detail == "OMP_NUM_THREADS missing in worker pid 8"

    forbidden = {**guards, "OBJC_DISABLE_INITIALIZE_FORK_SAFETY": "YES"}
    bad = check_guards(_daemon_facts(tmp_path, guards, ProcessInfo(9, environ=forbidden, slot=0)))
    assert bad.status is Status.FAIL and "OBJC_DISABLE_INITIALIZE_FORK_SAFETY" in bad.detail

    other = {**guards, "TOKENIZERS_PARALLELISM": "true"}
    stale_config = check_guards(_daemon_facts(tmp_path, other, ProcessInfo(9, environ=other, slot=0)))
    assert stale_config.status is Status.FAIL
    assert stale_config.detail.startswith("TOKENIZERS_PARALLELISM='true' in the daemon")
    assert "docbrainctl reload" in stale_config.advice

    no_daemon = check_guards(_facts(tmp_path, environ={"OBJC_DISABLE_INITIALIZE_FORK_SAFETY": "1"}))
    assert no_daemon.status is Status.FAIL and "this environment" in no_daemon.detail


def test_start_method_check_with_fakes(tmp_path: Path) -> None:
    spawned = ProcessInfo(7, SPAWN_CMDLINE, 100, slot=0)
    assert check_start_method(_daemon_facts(tmp_path, {}, spawned)).status is Status.PASS
    forked = ProcessInfo(8, (sys.executable, "-m", "celery", "worker"), 100, slot=1)
    adopted = ProcessInfo(9, SPAWN_CMDLINE, 1, slot=-1)
    assert spawn_problems([spawned, forked, adopted], 100) == [
        f"slot 1 pid 8 is not a spawned process: {sys.executable} -m celery worker",
        "standby pid 9 has parent 1, not the daemon 100"]
    verdict = check_start_method(_daemon_facts(tmp_path, {}, spawned, forked))
    assert verdict.status is Status.FAIL and verdict.advice


def test_daemon_check_counts_workers_by_state(tmp_path: Path) -> None:
    def status(*states: str) -> dict[str, Any]:
        return {"supervisor": {"pid": 100, "state": "running", "uptime_s": 61.2},
                "workers": [{"slot": i, "state": s} for i, s in enumerate(states)]}
    one = check_daemon(_facts(tmp_path, daemon_pid=100, status=status("READY")))
    assert one.status is Status.PASS
    assert one.detail == "pid 100 answers: running, up 61 s, 1 worker: 1 READY"
    mixed = check_daemon(_facts(tmp_path, daemon_pid=100,
                                status=status("READY", "FATAL", "READY")))
    assert mixed.status is Status.WARN
    assert mixed.detail == "pid 100 answers: running, up 61 s, 3 workers: 1 FATAL, 2 READY"


def test_orphans_check_with_fakes(tmp_path: Path) -> None:
    assert check_orphans(_facts(tmp_path)).status is Status.PASS
    own_dir = str(tmp_path / "state")
    foreign = ProcessInfo(7, state_dir="/in/a/container", daemon_pid=1)
    warned = check_orphans(_facts(tmp_path, foreign=(foreign,)))
    assert warned.status is Status.WARN
    assert warned.detail == ("1 worker(s) of a daemon in another PID namespace, which cannot "
                             "be seen from here: pid 7 (daemon 1, state_dir /in/a/container)")
    assert "`docbrainctl cleanup --pid PID` ends them (7)" in warned.advice
    orphan = ProcessInfo(8, state_dir="/elsewhere", daemon_pid=5)
    failed = check_orphans(_facts(tmp_path, orphans=(orphan,), foreign=(foreign,)))
    assert failed.status is Status.FAIL
    assert failed.detail.startswith("1 orphaned worker(s) whose daemon is gone: pid 8 "
                                    "(daemon 5, state_dir /elsewhere); 1 worker(s) of a daemon")
    assert failed.advice == "`docbrainctl cleanup --all` ends them all (pid 8)"
    own = ProcessInfo(9, state_dir=own_dir, daemon_pid=5)
    assert check_orphans(_facts(tmp_path, orphans=(own,))).advice.startswith(
        "`docbrainctl start` ends this state_dir's first")


def test_state_dir_permissions(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "run").mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    assert check_state_dir(_facts(tmp_path)).status is Status.PASS
    state.chmod(0o755)
    opened = check_state_dir(_facts(tmp_path))
    assert opened.status is Status.WARN
    assert f"state_dir {state} is mode 0755" in opened.detail
    assert f"chmod 700 {state}" in opened.advice
    (state / "run").rmdir()
    (state / "run").write_text("")
    assert check_state_dir(_facts(tmp_path)).status is Status.FAIL


def test_torch_import_name_and_control_with_fakes(tmp_path: Path) -> None:
    threads = envguard.guards(_facts(tmp_path).config)["OMP_NUM_THREADS"]
    fine = Probe(supervisor_dir=OUR_PACKAGE, torch_version="2.x", torch_import_s=1.0,
                 torch_threads=int(threads))
    assert check_torch(_facts(tmp_path, probe=fine)).status is Status.PASS
    more = Probe(torch_version="2.x", torch_threads=int(threads) + 1)
    assert check_torch(_facts(tmp_path, probe=more)).status is Status.WARN
    broken = Probe(torch_error="ModuleNotFoundError: No module named 'torch'")
    verdict = check_torch(_facts(tmp_path, probe=broken))
    assert verdict.status is Status.FAIL and "No module named 'torch'" in verdict.detail

    assert check_import_name(_facts(tmp_path, probe=fine)).status is Status.PASS
    shadowed = check_import_name(_facts(tmp_path, probe=Probe(
        supervisor_dir="/usr/lib/python3/dist-packages/supervisor")))
    assert shadowed.status is Status.FAIL and "supervisord" in shadowed.advice
    both = check_import_name(_facts(tmp_path, probe=fine, supervisor_dist="4.2.5"))
    assert both.status is Status.WARN and "4.2.5" in both.detail

    assert check_control(_facts(tmp_path)).status is Status.WARN
    left = check_control(_facts(tmp_path, socket_present=True, ping_error="no answer"))
    assert left.status is Status.FAIL and "present but nothing answers" in left.detail


def test_recognises_daemons_and_celery_by_command_line() -> None:
    py = sys.executable
    assert is_daemon_cmdline([py, "-m", "supervisor", "--config", "a.toml", "start",
                              "--foreground", "--no-log-to-stderr"])
    assert is_daemon_cmdline([py, "/venv/bin/docbrainctl", "start"])
    assert is_daemon_cmdline(["/venv/bin/docbrainctl", "--config", "start", "start"])
    assert not is_daemon_cmdline([py, "-m", "supervisor", "start"])  # the detaching starter
    assert not is_daemon_cmdline([py, "-m", "supervisor", "--config", "start", "doctor"])
    assert not is_daemon_cmdline(["/usr/bin/supervisord", "-n"])
    assert not is_daemon_cmdline([py, "-m", "pytest", "start", "--foreground"])
    assert is_celery_worker(["/venv/bin/celery", "-A", "docbrain", "worker", "-l", "info"])
    assert not is_celery_worker(["/venv/bin/celery", "-A", "docbrain", "beat"])
    assert os.path.isfile(os.path.join(OUR_PACKAGE, "__init__.py"))
