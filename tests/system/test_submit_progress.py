"""docbrainctl submit --input: progress on stderr, and Ctrl-C, against a real daemon."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from conftest import Instance, wait_for

TASKS = """\
import time
from workers import task

@task("prog.work")
def work(x):
    time.sleep(0.02)
    if x == "boom":
        raise ValueError("no boom")
    return x

@task("prog.slow")
def slow(x):
    time.sleep(0.1)
    return x
"""
SUMMARY = re.compile(r"^(\d[\d,]*) done, (\d[\d,]*) failed in \d+\.\d s$")
LINE = re.compile(r"^prog\.work: (\d[\d,]*)/100 finished, (\d+) failed, \d+\.\d/s, "
                  r"ETA (\d+ s|\d+ min \d\d s|unknown)$")
INTERRUPTED = re.compile(r"^docbrainctl: interrupted: ([\d,]+) of 3,000 jobs submitted, "
                         r"([\d,]+) finished \(their lines are in (.+)\); "
                         r"([\d,]+) were not submitted$")
OTHERS = re.compile(r"^  the other ([\d,]+) run on in the daemon; follow them with: "
                    r"docbrainctl jobs --state pending \(or running\), docbrainctl job ID$")


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def _started(instance: Instance) -> None:
    instance.write_task_module("prog_tasks", TASKS)
    instance.write_config('tasks = ["prog_tasks"]\n', workers=2)
    result = instance.ctl("start")
    assert result.returncode == 0, result.stderr


def _inputs(instance: Instance, name: str, payloads: list[object]) -> Path:
    path = instance.root / name
    path.write_text("".join(json.dumps(p) + "\n" for p in payloads))
    return path


def _ctl(instance: Instance, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """instance.ctl, with more environment variables."""
    return subprocess.run(
        [sys.executable, "-m", "supervisor", "--config", str(instance.config_path), *args],
        env={**instance.env, **env}, capture_output=True, text=True, timeout=120)


def _submit_in_background(instance: Instance, source: Path, out: Path,
                          **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`submit prog.slow --input`, its stderr to a file; ended by pid at teardown."""
    err = instance.root / f"{out.stem}.stderr"
    with open(err, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "--config", str(instance.config_path),
             "submit", "prog.slow", "--input", str(source), "--output", str(out)],
            env={**instance.env, **env}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=fh)
    instance.popens.append(proc)
    return proc, err


def _output_lines(stdout: str) -> list[dict[str, object]]:
    """Every line is one job's, exactly as before: progress never lands there."""
    lines = [json.loads(line) for line in stdout.splitlines()]
    for line in lines:
        assert set(line) in ({"id", "state", "result"}, {"id", "state", "error"}), line
    return lines


def test_progress_lines_off_a_terminal_and_the_summary(instance: Instance) -> None:
    _started(instance)
    payloads: list[object] = [*range(97), "boom", "boom", "boom"]
    source = _inputs(instance, "in.jsonl", payloads)

    # Off a terminal: a plain line every interval, then the summary; exit 1 (3 failed).
    run = _ctl(instance, "submit", "prog.work", "--input", str(source),
               DOCBRAIN_PROGRESS_INTERVAL="0.1")
    assert run.returncode == 1, run.stderr
    lines = _output_lines(run.stdout)
    assert [line.get("result") for line in lines] == [*range(97), None, None, None]
    assert [line["state"] for line in lines[-3:]] == ["failed"] * 3
    err = run.stderr.splitlines()
    assert err[-1] == "docbrainctl: some jobs did not end done; see their lines in the output"
    summary = SUMMARY.match(err[-2])
    assert summary and summary.groups() == ("97", "3"), err[-2]
    periodic = [LINE.match(line) for line in err[:-2]]
    assert periodic and all(periodic), err  # 100 jobs of 20 ms on 2 workers: over 0.1 s
    counts = [_number(m.group(1)) for m in periodic if m]
    assert counts == sorted(counts) and counts[-1] <= 100

    # --no-progress: nothing but the summary.
    quiet = _ctl(instance, "submit", "prog.work", "--input", str(source), "--no-progress",
                 DOCBRAIN_PROGRESS_INTERVAL="0.01")
    assert quiet.returncode == 1
    assert len(_output_lines(quiet.stdout)) == 100
    quiet_err = quiet.stderr.splitlines()
    assert len(quiet_err) == 2 and SUMMARY.match(quiet_err[0]), quiet.stderr

    # --progress: the bar even off a terminal, on stderr only; all done: exit 0.
    good = _inputs(instance, "good.jsonl", list(range(100)))
    out = instance.root / "out.jsonl"
    bar = _ctl(instance, "submit", "prog.work", "--input", str(good), "--output", str(out),
               "--progress")
    assert bar.returncode == 0, bar.stderr
    assert bar.stdout == ""
    assert [line["result"] for line in _output_lines(out.read_text())] == list(range(100))
    assert "prog.work:" in bar.stderr and "/100 [" in bar.stderr  # (text: \r read as \n)
    last = bar.stderr.splitlines()[-1]
    assert SUMMARY.match(last) and last.startswith("100 done, 0 failed in"), bar.stderr

    # Bad use: one line, exit 2, nothing submitted.
    before = sum(instance.status()["queue"].values())  # type: ignore[index]
    for args, env, message in [
        (("1", "--progress"), {}, "docbrainctl: --progress needs --input"),
        (("1", "--no-progress"), {}, "docbrainctl: --no-progress needs --input"),
        (("--input", str(good)), {"DOCBRAIN_PROGRESS_INTERVAL": "soon"},
         "docbrainctl: DOCBRAIN_PROGRESS_INTERVAL: expected a number of seconds over 0, "
         "got 'soon'"),
    ]:
        refused = _ctl(instance, "submit", "prog.work", *args, **env)
        assert refused.returncode == 2 and refused.stderr == message + "\n", refused.stderr
    assert sum(instance.status()["queue"].values()) == before  # type: ignore[index]


def test_a_bar_on_a_terminal(instance: Instance) -> None:
    _started(instance)
    source = _inputs(instance, "in.jsonl", list(range(100)))
    out = instance.root / "out.jsonl"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    with open(out, "wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "--config", str(instance.config_path),
             "submit", "prog.work", "--input", str(source)],
            env=instance.env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=slave)
    instance.popens.append(proc)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # read all it writes: a full pty would block it
            if select.select([master], [], [], 0.1)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child's end is closed
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
    assert proc.wait(60) == 0, seen
    text = seen.decode()
    assert "prog.work:" in text and "/100 [" in text and "job/s" in text, text
    assert SUMMARY.match(text.replace("\r", "\n").strip().splitlines()[-1]), text
    assert [line["result"] for line in _output_lines(out.read_text())] == list(range(100))


def test_ctrl_c_keeps_finished_lines_and_submits_no_more(instance: Instance) -> None:
    _started(instance)
    source = _inputs(instance, "in.jsonl", list(range(3000)))  # 100 ms each on 2 workers
    out = instance.root / "out.jsonl"
    proc, err = _submit_in_background(instance, source, out)
    wait_for(lambda: out.exists() and out.read_text().count("\n") >= 1, 120,
             "a first output line")
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(60) == 130
    text = err.read_text()
    assert "Traceback" not in text
    message = text.splitlines()
    assert len(message) == 2, text
    first, second = INTERRUPTED.match(message[0]), OTHERS.match(message[1])
    assert first and second, text
    submitted, finished = _number(first.group(1)), _number(first.group(2))
    assert first.group(3) == str(out)
    assert _number(first.group(4)) == 3000 - submitted > 0
    assert _number(second.group(1)) == submitted - finished > 0

    # The output: every line that finished, complete, in input order.
    raw = out.read_text()
    assert raw.endswith("\n")
    lines = _output_lines(raw)
    assert len(lines) == finished >= 1
    assert [line["result"] for line in lines] == list(range(finished))
    # The daemon has exactly the jobs submitted (the process is gone: no more can come).
    queue = instance.status()["queue"]  # type: ignore[index]
    assert sum(queue[s] for s in ("pending", "running", "done", "failed", "dead")) == submitted
    assert queue["done"] >= finished


def test_a_second_ctrl_c_quits_at_once(instance: Instance) -> None:
    """A daemon that does not answer (stopped with SIGSTOP) keeps the wrap-up waiting for
    it to confirm the submits sent; a second Ctrl-C then quits at once."""
    _started(instance)
    daemon = instance.daemon_pid()
    assert daemon is not None
    source = _inputs(instance, "in.jsonl", list(range(3000)))
    out = instance.root / "out.jsonl"
    os.kill(daemon, signal.SIGSTOP)
    try:
        proc, err = _submit_in_background(instance, source, out,
                                          DOCBRAIN_PROGRESS_INTERVAL="0.05")
        # A progress line: the client has sent its first submits and waits.
        wait_for(lambda: "prog.slow: 0/3,000 finished" in err.read_text(), 120,
                 "a progress line")
        os.kill(proc.pid, signal.SIGINT)
        wait_for(lambda: "(Ctrl-C again to quit now)" in err.read_text(), 60,
                 "the wrap-up waiting for the daemon")
        os.kill(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        assert proc.wait(60) == 130
        assert time.monotonic() - sent < 5  # the wrap-up would have waited 5 s
    finally:
        os.kill(daemon, signal.SIGCONT)
    text = err.read_text()
    assert "Traceback" not in text
    tail = text.splitlines()[-2:]
    assert re.fullmatch(r"docbrainctl: interrupted; waiting up to 5 s for the daemon to "
                        r"confirm [\d,]+ submits \(Ctrl-C again to quit now\)", tail[0]), text
    assert tail[1] == "docbrainctl: interrupted again: quitting now"
    assert out.read_text() == ""  # nothing finished: no line, not even a partial one
