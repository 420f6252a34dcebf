"""Stale cleanup: orphans of a dead daemon are killed; decoys are never touched."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from conftest import Instance, pid_gone, wait_for

from supervisor.marker import MARKER_ENV, InstanceMarker

# Every planted process runs this same command line; only the environment differs.
SCRIPT = """\
import os, signal, sys, time
if os.environ.get("STUBBORN"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("up", flush=True)
time.sleep(600)
"""


def _plant(env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, "docbrain-worker"],
                            env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    return proc


def test_stale_cleanup_kills_orphans_and_spares_decoys(instance: Instance) -> None:
    dead_daemon = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_daemon.wait()
    dead = InstanceMarker(dead_daemon.pid, time.time() - 60, str(instance.state_dir)).encode()
    # A live instance: this test process plays its daemon.
    live = InstanceMarker.for_process(os.getpid(), "/elsewhere/state").encode()
    base = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
    planted = {
        "orphan": _plant({**base, MARKER_ENV: dead}),
        "stubborn orphan": _plant({**base, MARKER_ENV: dead, "STUBBORN": "1"}),
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
            assert (f"stale worker pid {planted[name].pid} of dead daemon {dead_daemon.pid}"
                    in log)
        assert "cmdline: " + sys.executable + " -c " in log
        assert f"stale worker pid {planted['stubborn orphan'].pid} survived SIGTERM" in log
        assert "cleaned up 2 stale worker(s)" in log
        status = instance.wait_ready(1)
        assert status["workers"][0]["pid"] not in {p.pid for p in planted.values()}
    finally:
        for proc in planted.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            assert proc.stdout is not None
            proc.stdout.close()
    assert all(pid_gone(p.pid) for p in planted.values())
