"""Fixtures for integration tests: real daemons in temporary state_dirs.

Every process a test starts is ended by pid at teardown, even when the test fails: the
daemon (from its pidfile or Popen object) and every process carrying the instance marker
of that test's state_dir.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from supervisor.proto.marker import MARKER_ENV, InstanceMarker
from supervisor.proto.pidfile import running_pid

pytest.register_assert_rewrite("tests.nats_servers")  # a plugin, imported here first
from tests.nats_servers import wait_until  # noqa: E402

# The fixtures nats_server and nats_cluster: real NATS JetStream servers.
pytest_plugins = ["tests.nats_servers"]

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], T], timeout: float, what: str,
             interval: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    return wait_until(condition, timeout, what, interval)


class Instance:
    """One daemon's state_dir, configuration and the means to drive it with docbrainctl."""

    def __init__(self, root: Path, state_dir: Path) -> None:
        self.root = root
        self.state_dir = state_dir
        self.config_path = root / "docbrain.toml"
        self.tasks_dir = root / "tasks"
        self.tasks_dir.mkdir(exist_ok=True)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("DOCBRAIN_") and k != MARKER_ENV}
        self.env["PYTHONPATH"] = os.pathsep.join([str(self.tasks_dir), str(REPO)])
        self.popens: list[subprocess.Popen[bytes]] = []
        self.write_config()

    def write_config(self, text: str = "", workers: int = 2, models: str = "") -> None:
        """The test's configuration: `text` lands in [workers] (it may open more sections);
        `models` is the [models] table's body (default: no model, so no torch import)."""
        self.config_path.write_text(textwrap.dedent(f"""\
            [supervisor]
            state_dir = "{self.state_dir}"
            start_timeout = 120
            [models]
            """) + textwrap.dedent(models) + textwrap.dedent(f"""\
            [workers]
            count = {workers}
            heartbeat_interval = 0.2
            heartbeat_liveness = 10
            stop_timeout = 5
            """) + textwrap.dedent(text))

    def write_task_module(self, name: str, source: str) -> None:
        (self.tasks_dir / f"{name}.py").write_text(textwrap.dedent(source))

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor", "--config", str(self.config_path), *args],
            env=self.env, capture_output=True, text=True, timeout=timeout)

    def start_foreground(self, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "--config", str(self.config_path),
             "start", "--foreground", "--no-log-to-stderr", *args],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        self.popens.append(proc)
        return proc

    def status(self) -> dict[str, Any] | None:
        """`status --json`, or None while no daemon answers."""
        result = self.ctl("status", "--json", timeout=30)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], timeout: float,
                    what: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.status()
            return status if status is not None and predicate(status) else None
        return wait_for(check, timeout, what, interval=0.1)

    def wait_ready(self, count: int, timeout: float = 60) -> dict[str, Any]:
        return self.wait_status(
            lambda s: [w["state"] for w in s["workers"]] == ["READY"] * count,
            timeout, f"{count} READY workers")

    @property
    def log_text(self) -> str:
        path = self.state_dir / "logs" / "docbrain.log"
        return path.read_text() if path.exists() else ""

    def daemon_pid(self) -> int | None:
        """The pid of the daemon holding this state_dir's pidfile lock, if one does and that
        pid is it here: a daemon in another PID namespace wrote a pid of its own namespace,
        which names some other process (or none) in ours."""
        pidfile = str(self.state_dir / "docbrain.pid")
        pid = running_pid(pidfile)
        proc = _process(pid) if pid and pid > 0 else None
        try:
            real = os.path.realpath(pidfile)
            if proc is not None and any(os.path.realpath(f.path) == real
                                        for f in proc.open_files()):
                return pid
        except psutil.Error:
            pass
        return None

    def marked_pids(self) -> list[int]:
        """Processes carrying the marker of a daemon of this state_dir."""
        found = []
        for proc in psutil.process_iter():
            try:
                value = proc.environ().get(MARKER_ENV)
            except psutil.Error:
                continue
            marker = InstanceMarker.decode(value) if value else None
            if marker and marker.state_dir == str(self.state_dir) and _running(proc):
                found.append(proc.pid)
        return found

    def cleanup(self) -> None:
        pids = set(self.marked_pids())
        daemon = self.daemon_pid()
        if daemon:
            pids.add(daemon)
        for popen in self.popens:
            if popen.poll() is None:
                pids.add(popen.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for popen in self.popens:
            popen.wait(30)
            if popen.stderr:
                popen.stderr.close()
        psutil.wait_procs([p for p in map(_process, pids) if p], timeout=10)


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[Instance]:
    inst = Instance(tmp_path, tmp_path / "state")
    try:
        yield inst
    finally:
        inst.cleanup()


def pid_gone(pid: int) -> bool:
    proc = _process(pid)
    return proc is None or not _running(proc)
