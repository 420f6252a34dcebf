"""Stale cleanup: orphans of a dead daemon are killed; decoys are never touched.

A worker is stale only when its daemon is proven gone: the marker comes from our own PID
namespace and names a pid that is absent or reused. Start cleans its own state_dir's;
`docbrainctl cleanup` does the rest on request.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Instance, pid_gone, wait_for

from supervisor.client import Client
from supervisor.proto.marker import MARKER_ENV, DaemonState, InstanceMarker, pid_namespace

# Every planted process runs this same command line; only the environment differs.
SCRIPT = """\
import os, signal, sys, time
if os.environ.get("STUBBORN"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("up", flush=True)
time.sleep(600)
"""
OWN_NS = pid_namespace()


def _plant(env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, "docbrain-worker"],
                            env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    return proc


def _dead_pid() -> int:
    dead_daemon = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_daemon.wait()
    return dead_daemon.pid


def _reap(planted: dict[str, subprocess.Popen[str]]) -> None:
    for proc in planted.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
    assert all(pid_gone(p.pid) for p in planted.values())


# -- the marker --------------------------------------------------------------------------

def test_marker_round_trip_carries_the_pid_namespace() -> None:
    marker = InstanceMarker(42, 1700000000.25, "/srv/a:b/state", 4026531836)
    assert marker.encode() == "42:1700000000.25:4026531836:/srv/a:b/state"
    assert InstanceMarker.decode(marker.encode()) == marker
    unknown = InstanceMarker(42, 1.0, "/x", None)
    assert unknown.encode() == "42:1.00:?:/x"
    assert InstanceMarker.decode(unknown.encode()) == unknown
    # An older version's marker has no namespace: it decodes, and proves nothing.
    assert InstanceMarker.decode("42:1.00:/srv/a:b") == InstanceMarker(42, 1.0, "/srv/a:b")
    for garbled in ("", "x", "42", "42:y:/x", "y:1.0:/x"):
        assert InstanceMarker.decode(garbled) is None


def test_daemon_state_is_proven_only_in_our_own_namespace() -> None:
    me = InstanceMarker.for_process(os.getpid(), "/s")
    assert me.pid_ns == OWN_NS is not None
    assert me.daemon_state() is DaemonState.ALIVE
    dead = InstanceMarker(_dead_pid(), time.time() - 60, "/s", OWN_NS)
    assert dead.daemon_state() is DaemonState.GONE
    reused = InstanceMarker(os.getpid(), me.daemon_started - 100, "/s", OWN_NS)
    assert reused.daemon_state() is DaemonState.GONE
    # The same dead pid, written in another namespace (or in none we know): unknown.
    assert OWN_NS is not None
    assert InstanceMarker(dead.daemon_pid, dead.daemon_started, "/s", OWN_NS + 1) \
        .daemon_state() is DaemonState.UNKNOWN
    assert InstanceMarker(dead.daemon_pid, dead.daemon_started, "/s") \
        .daemon_state() is DaemonState.UNKNOWN
    # Even a live pid of ours means nothing when another namespace wrote it.
    assert InstanceMarker(me.daemon_pid, me.daemon_started, "/s", OWN_NS + 1) \
        .daemon_state() is DaemonState.UNKNOWN


# -- start and cleanup -------------------------------------------------------------------

def test_start_cleans_its_own_orphans_and_spares_everything_else(instance: Instance) -> None:
    assert OWN_NS is not None
    dead_pid = _dead_pid()
    state = str(instance.state_dir)
    dead = InstanceMarker(dead_pid, time.time() - 60, state, OWN_NS).encode()
    other_dir = InstanceMarker(dead_pid, time.time() - 60, "/elsewhere/dead", OWN_NS).encode()
    # The same dead pid as seen from a container: that pid means nothing here.
    foreign = InstanceMarker(dead_pid, time.time() - 60, state, OWN_NS + 1).encode()
    old_format = f"{dead_pid}:{time.time() - 60:.2f}:{state}"
    # A live instance: this test process plays its daemon.
    live = InstanceMarker.for_process(os.getpid(), "/elsewhere/state").encode()
    base = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
    planted = {
        "orphan": _plant({**base, MARKER_ENV: dead}),
        "stubborn orphan": _plant({**base, MARKER_ENV: dead, "STUBBORN": "1"}),
        "decoy: orphan of another state_dir": _plant({**base, MARKER_ENV: other_dir}),
        "decoy: another PID namespace": _plant({**base, MARKER_ENV: foreign}),
        "decoy: an older marker": _plant({**base, MARKER_ENV: old_format}),
        "decoy without marker": _plant(base),
        "decoy of a live instance": _plant({**base, MARKER_ENV: live}),
        "decoy with a garbled marker": _plant({**base, MARKER_ENV: "not-a-marker"}),
    }
    try:
        result = instance.ctl("start", "--workers", "1")
        assert result.returncode == 0, result.stderr
        for name in ("orphan", "stubborn orphan"):
            wait_for(lambda: planted[name].poll() is not None, 30, f"{name} to die")
        assert planted["orphan"].returncode == -15          # SIGTERM was enough
        assert planted["stubborn orphan"].returncode == -9  # needed SIGKILL
        for name, proc in planted.items():
            if name.startswith("decoy"):
                assert proc.poll() is None, f"{name} was killed"
        log = instance.log_text
        for name in ("orphan", "stubborn orphan"):
            assert (f"stale worker pid {planted[name].pid} of dead daemon {dead_pid}"
                    in log)
        assert "cmdline: " + sys.executable + " -c " in log
        assert f"stale worker pid {planted['stubborn orphan'].pid} survived SIGTERM" in log
        assert "cleaned up 2 stale worker(s)" in log
        foreign_pid = planted["decoy: another PID namespace"].pid
        assert (f"left alone: worker pid {foreign_pid} of daemon {dead_pid} in another PID "
                f"namespace (state_dir {state})") in log
        old_pid = planted["decoy: an older marker"].pid
        assert (f"left alone: worker pid {old_pid} of daemon {dead_pid} whose marker names no "
                f"PID namespace (state_dir {state})") in log
        assert "/elsewhere/dead" in log and "docbrainctl cleanup --all" in log
        status = instance.wait_ready(1)
        assert status["workers"][0]["pid"] not in {p.pid for p in planted.values()}
    finally:
        _reap(planted)


def test_cleanup_command(instance: Instance) -> None:
    assert OWN_NS is not None
    dead_pid = _dead_pid()
    state = str(instance.state_dir)
    base = {k: v for k, v in os.environ.items() if k != MARKER_ENV}

    def marker(state_dir: str, ns: int) -> str:
        return InstanceMarker(dead_pid, time.time() - 60, state_dir, ns).encode()

    live = InstanceMarker.for_process(os.getpid(), "/elsewhere/live").encode()
    planted = {
        "own": _plant({**base, MARKER_ENV: marker(state, OWN_NS)}),
        "other": _plant({**base, MARKER_ENV: marker("/elsewhere/dead", OWN_NS)}),
        "foreign": _plant({**base, MARKER_ENV: marker("/in/a/container", OWN_NS + 1)}),
        "live": _plant({**base, MARKER_ENV: live}),
        "unmarked": _plant(base),
    }
    pid = {name: str(proc.pid) for name, proc in planted.items()}
    try:
        # --all is tried only as a dry run: other test runs on this machine have orphans too.
        dry = instance.ctl("cleanup", "--all", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"would end pid {pid['own']} " in dry.stdout
        assert f"would end pid {pid['other']} " in dry.stdout
        assert f"pid {pid['foreign']} (state_dir /in/a/container)" in dry.stdout
        assert f"would end pid {pid['foreign']}" not in dry.stdout
        assert f"would end pid {pid['live']}" not in dry.stdout
        assert all(p.poll() is None for p in planted.values())

        # Bad pids change nothing: every one is checked before any is ended.
        for bad, why in ((pid["unmarked"], "is not a docbrain worker"),
                         (pid["live"], "is a worker of the running daemon")):
            result = instance.ctl("cleanup", "--pid", pid["own"], "--pid", bad)
            assert result.returncode == 2
            assert result.stderr.startswith(f"docbrainctl: pid {bad} {why}"), result.stderr
            assert len(result.stderr.splitlines()) == 1
        assert all(p.poll() is None for p in planted.values())

        own = instance.ctl("cleanup")  # this state_dir's only, as start does
        assert own.returncode == 0, own.stderr
        wait_for(lambda: planted["own"].poll() is not None, 30, "this state_dir's orphan")
        assert f"stale worker pid {pid['own']} of dead daemon {dead_pid}" in own.stdout
        assert "1 orphaned worker(s) of other state_dirs; --all ends them too" in own.stdout
        assert planted["other"].poll() is None and planted["foreign"].poll() is None

        named = instance.ctl("cleanup", "--pid", pid["foreign"])
        assert named.returncode == 0, named.stderr
        wait_for(lambda: planted["foreign"].poll() is not None, 30, "the named worker")
        assert f"worker pid {pid['foreign']} of daemon {dead_pid} (/in/a/container)" \
            in named.stdout
        for name in ("other", "live", "unmarked"):
            assert planted[name].poll() is None, name
        nothing = instance.ctl("cleanup")
        assert nothing.returncode == 0 and "no orphaned workers to end" in nothing.stdout
    finally:
        _reap(planted)


# -- a real daemon in a PID namespace of its own ------------------------------------------

GATED = """\
import os, time
from workers import task

@task("ns.gated")
def gated(payload):
    # Simulated work: runs until the test opens the gate (bounded, so nothing hangs).
    deadline = time.monotonic() + 120
    while not os.path.exists(payload["gate"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"n": payload["n"]}
"""


def _unshare_refused() -> str | None:
    """Why a PID namespace cannot be made here, or None when it can."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "unshare(1) is not installed"
    try:
        probe = subprocess.run([unshare, "--pid", "--fork", "--mount-proc", "true"],
                               capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "unshare --pid did not return"
    if probe.returncode != 0:
        return f"unshare --pid is not permitted here: {probe.stderr.strip()}"
    return None


def test_a_daemon_in_another_pid_namespace_is_left_alone(tmp_path: Path) -> None:
    refused = _unshare_refused()
    if refused:
        pytest.skip(refused)
    for name in ("inner", "host"):
        (tmp_path / name).mkdir()
    inner = Instance(tmp_path / "inner", tmp_path / "inner" / "state")
    host = Instance(tmp_path / "host", tmp_path / "host" / "state")
    gate = tmp_path / "gate"
    inner.write_task_module("nstasks", GATED)
    inner.write_config('tasks = ["nstasks"]\n', workers=2)
    try:
        # The daemon is PID 1 of a new PID namespace (and /proc of its own), as in a
        # container; --kill-child: it dies with unshare, whatever happens to the test.
        contained = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable,
             "-m", "supervisor", "--config", str(inner.config_path), "start", "--foreground",
             "--no-log-to-stderr"],
            env=inner.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        inner.popens.append(contained)
        status = inner.wait_ready(2, timeout=120)
        assert status["supervisor"]["pid"] == 1  # its own pid, in its own namespace
        workers = sorted(inner.marked_pids())    # the same processes, by our pids
        assert len(workers) == 2
        with Client(str(inner.config_path)) as client:
            ids = [client.submit("ns.gated", {"gate": str(gate), "n": n}) for n in range(4)]
            # Both workers busy, the rest accepted (a job is not handed to a busy worker:
            # whether all 4 are held by workers depends on how fast the submits came).
            inner.wait_status(lambda s: all(w["current_job"] for w in s["workers"])
                              and s["queue"]["pending"] + s["queue"]["running"] == 4,
                              60, "both workers running a job")

            started = host.ctl("start", "--workers", "1")
            assert started.returncode == 0, started.stderr
            host.wait_ready(1)
            assert sorted(inner.marked_pids()) == workers, "the host's start killed them"
            for pid in workers:
                assert f"left alone: worker pid {pid} of daemon 1 in another PID namespace " \
                       f"(state_dir {inner.state_dir})" in host.log_text
            doctor = host.ctl("doctor", "--json")
            orphans = {c["check"]: c for c in json.loads(doctor.stdout)["checks"]}["orphans"]
            assert orphans["status"] in ("WARN", "FAIL"), orphans  # FAIL: others' orphans
            for pid in workers:
                assert f"pid {pid} (daemon 1, state_dir {inner.state_dir})" in orphans["detail"]
            cleaned = host.ctl("cleanup", "--all", "--dry-run")
            assert cleaned.returncode == 0, cleaned.stderr
            assert not any(f"would end pid {pid} " in cleaned.stdout for pid in workers)

            gate.touch()
            assert [client.result(job_id, timeout=60) for job_id in ids] == \
                [{"n": n} for n in range(4)]
        assert sorted(inner.marked_pids()) == workers
        assert inner.daemon_pid() is None  # the pidfile's "1" is not that daemon here
        # `stop` from the host waits on the pidfile's lock, not on the pid it names
        # (1: our own init, which never exits).
        stopped = inner.ctl("stop", timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip() == "docbrain stopped (pid 1)"
        assert contained.wait(60) == 0
        wait_for(lambda: not inner.marked_pids(), 30, "the contained workers to exit")
    finally:
        inner.cleanup()
        host.cleanup()
