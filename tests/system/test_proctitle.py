"""Process titles: `docbrain: supervisor (STATE_DIR)` and `docbrain: worker slot N
(STATE_DIR)` in ps, while everything that finds our processes still finds them: the
instance marker in /proc/PID/environ (stale cleanup), doctor's command-line checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import psutil
import pytest
from conftest import REPO, Instance, pid_gone, wait_for

from supervisor.doctor.checks import ProcessInfo, spawn_problems
from supervisor.doctor.facts import _scan, is_daemon_cmdline
from supervisor.pool import stale
from supervisor.proto import proctitle
from supervisor.proto.marker import MARKER_ENV, DaemonState, InstanceMarker, pid_namespace

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the titles are checked through /proc")
SPAWN_CMDLINE = (sys.executable, "-c", "from multiprocessing.spawn import spawn_main; "
                 "spawn_main(tracker_fd=5, pipe_handle=7)", "--multiprocessing-fork")


def _cmdline(pid: int) -> str:
    """What ps shows: the command line as one string, the title's NUL padding left out."""
    return " ".join(proctitle.trimmed(psutil.Process(pid).cmdline()))


def _as_shown(pid: int, title: str) -> str:
    """`title` as far as the process's argv area holds it (all of it, unless the temporary
    directory makes the state_dir longer than the original command line): setproctitle
    ends it with a NUL inside the area, which ends with one too."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return title[:len(f.read()) - 2]


def _marked(pid: int) -> stale.MarkedProcess | None:
    """The process as the stale scan (the project's own marker reading) sees it."""
    return next((p for p in stale.survey().processes if p.pid == pid), None)


# -- the titles and the matchers -------------------------------------------------------------

def test_titles() -> None:
    assert proctitle.supervisor_title("/srv/s") == "docbrain: supervisor (/srv/s)"
    assert proctitle.worker_title(3, "/srv/s") == "docbrain: worker slot 3 (/srv/s)"
    assert proctitle.worker_title(-1, "/srv/s") == "docbrain: worker standby (/srv/s)"
    assert proctitle.worker_title(0, "") == "docbrain: worker slot 0"
    # psutil reads a title as one argument and the NUL padding as empty ones.
    assert proctitle.trimmed(["docbrain: worker slot 0 (/s)", "", ""]) == \
        ("docbrain: worker slot 0 (/s)",)
    assert proctitle.trimmed(["python", "", "-c"]) == ("python", "", "-c")
    assert proctitle.title_state_dir(["docbrain: supervisor (/a (b)/c)"]) == "/a (b)/c"
    assert proctitle.title_state_dir(["docbrain: supervisor (/a/very/long/pa"]) is None  # cut
    assert proctitle.title_state_dir(["python", "x (y)"]) is None


def test_doctor_recognises_the_titles_and_the_old_command_lines() -> None:
    for title in (["docbrain: supervisor (/srv/s)"], ["docbrain: supervisor (/srv/s)", ""],
                  ["docbrain:", "supervisor", "(/srv/s)"], ["docbrain: supervisor (/srv/lo"]):
        assert is_daemon_cmdline(title), title
    assert is_daemon_cmdline([sys.executable, "-m", "supervisor", "start", "--foreground"])
    assert not is_daemon_cmdline(["docbrain: worker slot 0 (/srv/s)"])
    assert not is_daemon_cmdline([sys.executable, "-c", "print('docbrain: supervisor (x)')"])

    titled = ProcessInfo(7, ("docbrain: worker slot 0 (/srv/s)",), 100, slot=0)
    standby = ProcessInfo(8, ("docbrain: worker standby (/srv/s)",), 100, slot=-1)
    spawned = ProcessInfo(9, SPAWN_CMDLINE, 100, slot=1)
    # A forked copy of the daemon would show the daemon's title: not a spawned worker.
    forked = ProcessInfo(10, ("docbrain: supervisor (/srv/s)",), 100, slot=2)
    assert spawn_problems([titled, standby, spawned, forked], 100) == [
        "slot 2 pid 10 is not a spawned process: docbrain: supervisor (/srv/s)"]


# -- a real process: the title does not touch the environment --------------------------------

TITLED = """\
import os, sys
from supervisor.proto import proctitle
print(proctitle.set_title(os.environ["TITLE"]), flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("length", ["short", "longer than its command line"])
def test_a_titled_process_keeps_its_marker(length: str) -> None:
    """The title replaces the command line (cut to its length), and the environment, with
    the marker in it, is what it was: SPT_NOENV keeps setproctitle off it."""
    marker = InstanceMarker.for_process(os.getpid(), "/srv/titled").encode()
    title = "docbrain: worker slot 0 (/srv/titled)"
    if length != "short":
        title = f"docbrain: worker slot 0 ({'/deep' * 100})"
    env = {k: v for k, v in os.environ.items() if k not in (MARKER_ENV, "SPT_NOENV")}
    proc = subprocess.Popen([sys.executable, "-c", TITLED],  # the title is not in argv
                            env={**env, MARKER_ENV: marker, "PYTHONPATH": str(REPO),
                                 "TITLE": title},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "True\n"
        shown = _cmdline(proc.pid)
        if length == "short":
            assert shown == title
        else:  # as long as the command line was, no longer: the environment is not used
            assert shown == _as_shown(proc.pid, title)
            assert len("docbrain: worker slot 0 (") < len(shown) < len(title)
        assert psutil.Process(proc.pid).name() == title[:15]  # /proc/PID/comm
        assert psutil.Process(proc.pid).environ()[MARKER_ENV] == marker
        found = _marked(proc.pid)
        assert found is not None and found.marker.encode() == marker
        assert found.cmdline == shown
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(30)
        proc.stdout.close()


def test_without_setproctitle_nothing_is_renamed() -> None:
    script = ("import sys; sys.modules['setproctitle'] = None  # import fails\n"
              "from supervisor.proto import proctitle\n"
              "print(proctitle.set_title('docbrain: supervisor (/x)'), "
              "proctitle.name_worker(0, '/x'), flush=True)\n"
              "sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ,
                            "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "False False\n"
        assert psutil.Process(proc.pid).cmdline() == [sys.executable, "-c", script]
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(30)
        proc.stdout.close()


# -- a real daemon ---------------------------------------------------------------------------

def _titles(instance: Instance, status: dict[str, Any]) -> dict[int, str]:
    state_dir = str(instance.state_dir)
    expected = {status["supervisor"]["pid"]: proctitle.supervisor_title(state_dir)}
    for worker in status["workers"]:
        expected[worker["pid"]] = proctitle.worker_title(worker["slot"], state_dir)
    standby = status["supervisor"].get("standby")
    if standby:
        expected[standby["pid"]] = proctitle.worker_title(-1, state_dir)
    return expected


def _standby_ready(status: dict[str, Any]) -> bool:
    return bool((status["supervisor"]["standby"] or {}).get("ready"))


def _named(expected: dict[int, str]) -> bool:
    return all(_cmdline(pid) == _as_shown(pid, title) for pid, title in expected.items())


def _shown(expected: dict[int, str]) -> dict[int, str]:
    """The titles as ps shows them; each at least says what the process is."""
    shown = {pid: _as_shown(pid, title) for pid, title in expected.items()}
    for pid, title in shown.items():
        assert title.startswith(expected[pid].split(" (")[0] + " ("), title
    return shown


def test_named_and_still_found(instance: Instance) -> None:
    instance.write_config("standby = 1\n", workers=2)
    started = instance.ctl("start")
    assert started.returncode == 0, started.stderr
    status = instance.wait_status(lambda s: _standby_ready(s)
                                  and [w["state"] for w in s["workers"]] == ["READY"] * 2,
                                  60, "2 READY workers and a loaded standby")
    daemon = status["supervisor"]["pid"]
    expected = _titles(instance, status)
    assert len(expected) == 4
    wait_for(lambda: _named(expected), 30, "every process named")
    expected = _shown(expected)
    for pid, title in expected.items():
        assert psutil.Process(pid).name() == title[:15]
    # The markers are still in the workers' environments: the stale scan sees them all.
    workers = [pid for pid in expected if pid != daemon]
    assert sorted(instance.marked_pids()) == sorted(workers)
    for pid in workers:
        found = _marked(pid)
        assert found is not None, pid
        assert found.marker.daemon_pid == daemon and found.daemon is DaemonState.ALIVE
        assert found.marker.state_dir == str(instance.state_dir)
        assert found.cmdline == expected[pid]
    # doctor finds the daemon by its title (`named` empty: no help from the markers).
    others, _ = _scan(None, {})
    assert [(os.path.realpath(p.state_dir or ""), p.cmdline) for p in others
            if p.pid == daemon] == [(os.path.realpath(instance.state_dir), (expected[daemon],))]
    doctor = instance.ctl("doctor", "--json")
    assert doctor.returncode in (0, 1), doctor.stderr
    checks = {c["check"]: c for c in json.loads(doctor.stdout)["checks"]}
    for name in ("daemon", "guards", "start-method", "control"):
        assert checks[name]["status"] == "PASS", checks[name]
    assert checks["start-method"]["detail"] == \
        f"3 worker(s) are spawn children of the daemon (pid {daemon})"
    assert f"pid {daemon} " not in checks["instances"]["detail"]  # ours is no "other"

    # The standby takes over slot 1 and is renamed; a new standby is named as one.
    spare = status["supervisor"]["standby"]["pid"]
    os.kill(status["workers"][1]["pid"], signal.SIGKILL)
    after = instance.wait_status(
        lambda s: s["workers"][1]["pid"] == spare and s["workers"][1]["state"] == "READY"
        and _standby_ready(s), 60,
        "the standby in slot 1 and a new standby")
    assert after["supervisor"]["standby"]["pid"] != spare
    wait_for(lambda: _named(_titles(instance, after)), 30, "the renamed standby")
    assert _cmdline(spare) == _as_shown(spare, proctitle.worker_title(1, str(instance.state_dir)))

    stopped = instance.ctl("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert all(pid_gone(pid) for pid in _titles(instance, after))


# Workers that outlive a daemon killed with -9: at import (after the worker asked for
# PR_SET_PDEATHSIG), this module takes that request back.
SURVIVE = """\
import ctypes
ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG: none
"""


def test_named_orphans_found(instance: Instance) -> None:
    """Stale detection by marker still finds named workers after a daemon killed with -9."""
    instance.write_task_module("survive", SURVIVE)
    instance.write_config('tasks = ["survive"]\n', workers=2)
    # Nor do they exit when the daemon falls silent, for as long as the test needs.
    instance.env["DOCBRAIN_WORKERS_HEARTBEAT_LIVENESS"] = "1500"  # x 0.2 s
    started = instance.ctl("start")
    assert started.returncode == 0, started.stderr
    status = instance.wait_ready(2)
    daemon, state_dir = status["supervisor"]["pid"], str(instance.state_dir)
    expected = {w["pid"]: proctitle.worker_title(w["slot"], state_dir)
                for w in status["workers"]}
    wait_for(lambda: _named(expected), 30, "the workers named")
    expected = _shown(expected)
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: pid_gone(daemon), 30, "the daemon to die")
    assert not any(pid_gone(pid) for pid in expected)

    assert pid_namespace() is not None
    for pid in expected:
        found = _marked(pid)
        assert found is not None and found.daemon is DaemonState.GONE, pid
    dry = instance.ctl("cleanup", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    for pid, title in expected.items():
        assert f"would end pid {pid} (daemon {daemon}, state_dir {state_dir}): {title}\n" \
            in dry.stdout, dry.stdout
    doctor = instance.ctl("doctor", "--json")
    orphans = {c["check"]: c for c in json.loads(doctor.stdout)["checks"]}["orphans"]
    assert orphans["status"] == "FAIL"
    for pid in expected:
        assert f"pid {pid} (daemon {daemon}, state_dir {state_dir})" in orphans["detail"]
    assert not any(pid_gone(pid) for pid in expected)  # a dry run and doctor only look

    # The next start ends them, logging each one's title.
    again = instance.ctl("start")
    assert again.returncode == 0, again.stderr
    wait_for(lambda: all(pid_gone(pid) for pid in expected), 30, "the orphans ended")
    log = instance.log_text
    for pid, title in expected.items():
        assert f"stale worker pid {pid} of dead daemon {daemon} ({state_dir}): SIGTERM; " \
               f"cmdline: {title}\n" in log
    new = instance.wait_ready(2)
    wait_for(lambda: _named(_titles(instance, new)), 30, "the new daemon and workers named")
    assert instance.ctl("stop").returncode == 0
