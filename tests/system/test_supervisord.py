"""The daemon as a supervisord program: the section `install-service --supervisord` writes,
run by a real supervisord (4.3, from its own venv: its import name is ours too, `supervisor`).

supervisord starts it, says RUNNING after startsecs, stops it with SIGTERM and leaves
nothing; a bad file is a failed start, retried a few times and then FATAL, not a loop.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, Instance, pid_gone, wait_for

SUPERVISORD_BIN = Path(os.environ.get("DOCBRAIN_TEST_SUPERVISORD_BIN")
                       or REPO / ".venv-supervisord" / "bin")
MAIN_CONF = """\
[unix_http_server]
file=%(here)s/s.sock
[supervisord]
logfile=%(here)s/supervisord.log
pidfile=%(here)s/supervisord.pid
childlogdir=%(here)s
nodaemon=true
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://%(here)s/s.sock
[include]
files = %(here)s/conf.d/*.conf
"""


class Supervisord:
    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.conf = root / "supervisord.conf"
        self.conf.write_text(MAIN_CONF)
        (root / "conf.d").mkdir()
        self.program = root / "conf.d" / "docbrain.conf"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([str(SUPERVISORD_BIN / "supervisord"), "-c", str(self.conf)],
                                     env=self.env, cwd=self.conf.parent,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for(lambda: self.ctl("pid").returncode == 0, 60, "supervisord to answer")

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SUPERVISORD_BIN / "supervisorctl"), "-c", str(self.conf),
                               *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def state(self) -> str:
        out = self.ctl("status", "docbrain").stdout.split()
        return out[1] if len(out) > 1 else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # supervisord stops its programs first
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


@pytest.fixture
def supervisord(instance: Instance, tmp_path: Path) -> Iterator[Supervisord]:
    if not (SUPERVISORD_BIN / "supervisord").exists():
        pytest.skip(f"no supervisord in {SUPERVISORD_BIN} (`make test` installs it there; "
                    "pip could not?)")
    # Not our PYTHONPATH: the repository's `supervisor` package would shadow supervisord's.
    env = {k: v for k, v in instance.env.items() if k != "PYTHONPATH"}
    root = tmp_path / "sv"
    root.mkdir()
    manager = Supervisord(root, env)
    try:
        yield manager
    finally:
        manager.close()


def test_supervisord_runs_stops_and_gives_up_on_a_bad_file(
        instance: Instance, supervisord: Supervisord) -> None:
    instance.write_config(workers=2)
    section = instance.ctl("install-service", "--supervisord", "--dry-run")
    assert section.returncode == 0, section.stderr
    assert "would write /etc/supervisor/conf.d/docbrain.conf" in section.stderr
    supervisord.program.write_text(section.stdout)
    supervisord.start()

    # RUNNING comes after startsecs; READY workers are docbrainctl's to tell.
    wait_for(lambda: supervisord.state() == "RUNNING", 120, "supervisord's RUNNING")
    status = instance.wait_ready(2)
    daemon = status["supervisor"]["pid"]
    assert supervisord.ctl("pid", "docbrain").stdout.strip() == str(daemon)
    workers = [w["pid"] for w in status["workers"]]
    env = Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0")
    assert b"PYTHONDONTWRITEBYTECODE=1" in env and b"TOKENIZERS_PARALLELISM=false" in env

    stopped = supervisord.ctl("stop", "docbrain")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped
    assert supervisord.state() == "STOPPED"
    assert all(pid_gone(pid) for pid in [daemon, *workers])
    assert instance.daemon_pid() is None and instance.marked_pids() == []
    assert "SIGTERM: stopping" in instance.log_text

    # A bad file: each start fails at once (exit 2), a few retries, then FATAL.
    good = instance.config_path.read_text()
    instance.config_path.write_text(good.replace("count = 2\n", "count = 0\n"))
    supervisord.ctl("start", "docbrain")
    wait_for(lambda: supervisord.state() == "FATAL", 120, "supervisord to give up")
    assert "workers.count: must be at least 1, got 0" in \
        supervisord.ctl("tail", "docbrain").stdout
    assert instance.daemon_pid() is None
