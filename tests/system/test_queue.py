"""Integration: the durable job queue against real daemons and real spawned workers.

No mocks. Each test writes a task module (`qtasks`) whose tasks append one line per
execution to a file, so the test can count how often each job really ran; jobs go in
through `supervisor.client.Client` and raw ZeroMQ sockets; workers and daemons are killed
with real signals. Every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import Instance, pid_gone, wait_for

from supervisor.client import Client, JobDead, JobFailed, JobRejected
from supervisor.proto import control, wire
from supervisor.proto.paths import StatePaths

TASKS = '''\
import json, os, resource, signal, time
from workers import task

LOG = %r


def record(name, value):
    """One line per execution; O_APPEND writes of a short line do not interleave."""
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps([name, value]) + "\\n").encode())
    finally:
        os.close(fd)


@task("square")
def square(x):
    return x * x + 1


@task("chaos")
def chaos(x):
    time.sleep(0.004)
    record("chaos", x)
    return x * 2


@task("sleepy")
def sleepy(x):
    time.sleep(0.01)
    record("sleepy", x)
    return x * 2


@task("suicide")
def suicide(x):
    signum, tag = x
    record("suicide", tag)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file for SIGSEGV
    os.kill(os.getpid(), signum)
    time.sleep(30)  # the signal is delivered before this returns


@task("crash_once")
def crash_once(tag):
    """Kills its worker the first time it runs, as soon as it can; then returns."""
    try:
        os.close(os.open(f"{LOG}.crashed.{tag}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        record("crash_once", tag)
        return tag
    os.kill(os.getpid(), signal.SIGKILL)


@task("big")
def big(x):
    record("big", x)
    return "x" * 900_000


@task("slow")
def slow(x):
    time.sleep(1.0)
    record("slow", x)
    return x


@task("boom")
def boom(x):
    record("boom", x)
    raise ValueError(f"bad payload {x}")


@task("flaky", retryable=True)
def flaky(x):
    record("flaky", x)
    raise RuntimeError(f"flaky {x}")


@task("stuck", timeout=1.0)
def stuck(x):
    record("stuck", x)
    time.sleep(30)
'''

FAST_RESTARTS = """\
    [restart]
    backoff_start = 0.05
    backoff_max = 0.5
    flap_limit = 100
    """


def start(instance: Instance, log: Path, extra: str = FAST_RESTARTS, workers: int = 2) -> None:
    instance.write_task_module("qtasks", TASKS % str(log))
    instance.write_config('tasks = ["qtasks"]\n' + extra, workers=workers)
    result = instance.ctl("start")
    assert result.returncode == 0, result.stderr


def executions(log: Path) -> Counter[tuple[str, Any]]:
    """(task, payload) -> how many times it ran."""
    if not log.exists():
        return Counter()
    return Counter(tuple(json.loads(line)) for line in log.read_text().splitlines())


def endpoint(instance: Instance, name: str) -> str:
    return StatePaths.for_state_dir(str(instance.state_dir)).endpoint(name)


def call(instance: Instance, name: str, **args: Any) -> dict[str, Any]:
    """A control request straight over the socket (cheaper than running docbrainctl)."""
    return control.call(endpoint(instance, "control"), name, args, timeout=15)


def job(instance: Instance, job_id: str) -> dict[str, Any]:
    return call(instance, "job", id=job_id)["job"]


def client(instance: Instance) -> Client:
    return Client(str(instance.config_path))


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n{text}")


# -- throughput and order ------------------------------------------------------------------

def test_a_thousand_results_come_back_in_order(instance: Instance, tmp_path: Path) -> None:
    start(instance, tmp_path / "runs.log")
    with client(instance) as c:
        results = list(c.map("square", range(1000), timeout=60))
    assert results == [x * x + 1 for x in range(1000)]
    status = instance.wait_status(lambda s: s["queue"]["done"] == 1000, 30, "1000 done")
    assert status["queue"] == {"pending": 0, "retrying": 0, "scheduled": 0, "running": 0,
                               "done": 1000,
                               "failed": 0, "dead": 0, "cancelled": 0,
                               "duplicate_runs": 0}
    assert sum(w["jobs_done"] for w in status["workers"]) == 1000
    assert all(w["current_job"] is None for w in status["workers"])


# -- workers killed under load -------------------------------------------------------------

class WorkerKiller(threading.Thread):
    """Kills a serving worker with SIGKILL each time the done count passes a threshold."""

    def __init__(self, instance: Instance, thresholds: list[int], seed: int) -> None:
        super().__init__(name="worker-killer", daemon=True)
        self.instance = instance
        self.thresholds = sorted(thresholds)
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.killed: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while self.thresholds and not self.stop.wait(0.05):
                status = call(self.instance, "status")
                if status["queue"]["done"] < self.thresholds[0]:
                    continue
                serving = [w for w in status["workers"] if w["state"] in ("READY", "BUSY")
                           and w["pid"] and w["pid"] not in self.killed]  # not yet reaped
                busy = [w for w in serving if w["state"] == "BUSY"]
                if not serving:
                    continue  # both are restarting; the next pass will find one
                victim = self.rng.choice(busy or serving)["pid"]
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    continue  # it died and was reaped since the status was read
                self.killed.append(victim)
                self.thresholds.pop(0)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


def test_jobs_survive_workers_killed_at_random(instance: Instance, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "runs.log"
    start(instance, log)
    rng = random.Random(20240607)
    n = 2000
    killer = WorkerKiller(instance, rng.sample(range(150, 1750, 50), 7), seed=7)
    killer.start()
    try:
        with client(instance) as c:
            results = list(c.map("chaos", range(n), timeout=60))
    finally:
        killer.stop.set()
        killer.join(30)
    assert killer.error is None, killer.error
    assert results == [2 * x for x in range(n)]  # each job exactly once, done, in order

    kills = len(killer.killed)
    assert kills >= 5, f"only {kills} kills landed during the run"
    assert all(pid_gone(pid) for pid in killer.killed)
    runs = executions(log)
    assert set(runs) == {("chaos", x) for x in range(n)}
    duplicates = sum(runs.values()) - n
    status = instance.wait_status(lambda s: s["queue"]["done"] == n, 30, f"{n} done")
    queue = status["queue"]
    assert (queue["pending"], queue["running"], queue["failed"], queue["dead"]) == (0, 0, 0, 0)
    jobs = call(instance, "jobs", limit=n + 10)["jobs"]
    assert len(jobs) == n and all(j["state"] == "done" for j in jobs)
    # duplicate_runs counts every hand-out beyond a job's first (a job requeued from a
    # killed worker's credit was handed out twice though it ran once), so it is at least
    # the executions beyond one and equal to what the journal recorded.
    assert queue["duplicate_runs"] == sum(j["runs"] - 1 for j in jobs)
    assert queue["duplicate_runs"] >= duplicates
    report(capsys, f"{n} jobs, {kills} worker kills: {duplicates} duplicate executions, "
                   f"duplicate_runs {queue['duplicate_runs']}, "
                   f"lost attempts {sum(j['attempts'] for j in jobs)}")
    assert duplicates <= kills


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
def test_job_that_kills_its_worker_goes_dead_after_three_attempts(
        instance: Instance, tmp_path: Path, signum: int) -> None:
    log = tmp_path / "runs.log"
    start(instance, log)
    with client(instance) as c:
        before = [c.submit_nowait("sleepy", i) for i in range(25)]
        bad = c.submit_nowait("suicide", [int(signum), "bad"])
        after = [c.submit_nowait("sleepy", i) for i in range(25, 50)]
        with pytest.raises(JobDead) as dead:
            c.result(bad, timeout=60)
        values = [c.result(job_id, timeout=60) for job_id in before + after]
    assert values == [2 * i for i in range(50)]
    name = signal.Signals(signum).name
    assert "3 attempts" in dead.value.reason
    assert f"killed by {name}" in dead.value.reason
    info = job(instance, bad)
    assert (info["state"], info["attempts"]) == ("dead", 3)
    # Only it kills workers, and each of its runs was charged to it: exactly 3 runs.
    assert executions(log)[("suicide", "bad")] == info["runs"] == 3
    instance.wait_status(
        lambda s: s["queue"]["done"] == 50 and s["queue"]["dead"] == 1
        and sum(w["restarts"] for w in s["workers"]) == info["runs"], 30,
        "50 done, 1 dead, a restart per run of the bad job")


def test_lost_attempt_is_charged_to_the_job_that_was_running(
        instance: Instance, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    start(instance, log, workers=1)
    with client(instance) as c:
        # Each pair: a job with a big result, then one that kills the worker at once.
        # Stops at the first misattribution: it shows within a few pairs on this machine.
        for k in range(20):
            done, crash = c.submit_nowait("big", k), c.submit_nowait("crash_once", k)
            assert c.result(done, timeout=30) == "x" * 900_000
            assert c.result(crash, timeout=30) == k
            assert job(instance, done)["attempts"] == 0, f"pair {k}: the finished job charged"
            assert job(instance, crash)["attempts"] == 1, f"pair {k}: the crash not charged"
            # Its result can die with the worker (queued in ZeroMQ, not yet sent): then it
            # runs again -- at-least-once -- but without being charged an attempt.
            assert executions(log)[("big", k)] <= 2, f"pair {k}: the finished job ran 3 times"


def test_stopped_worker_is_killed_and_its_job_finished_elsewhere(
        instance: Instance, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    start(instance, log)  # heartbeat 0.2 s x liveness 10: silent for 2 s means hung
    stopped: int | None = None
    try:
        with client(instance) as c:
            job_id = c.submit("slow", 41)
            status = instance.wait_status(
                lambda s: any(w["current_job"] == job_id and w["state"] == "BUSY"
                              for w in s["workers"]), 30, "the slow job on a BUSY worker")
            worker = next(w for w in status["workers"] if w["current_job"] == job_id)
            stopped = worker["pid"]
            os.kill(stopped, signal.SIGSTOP)
            t0 = time.monotonic()
            assert c.result(job_id, timeout=10) == 41
            elapsed = time.monotonic() - t0
        assert elapsed < 10
        wait_for(lambda: pid_gone(stopped), 10, "the stopped worker to be reaped")
        after = instance.wait_status(
            lambda s: s["workers"][worker["slot"]]["pid"] not in (None, stopped)
            and s["workers"][worker["slot"]]["state"] == "READY", 30, "the slot refilled")
        slot = after["workers"][worker["slot"]]
        assert slot["last_exit"].startswith("killed by SIGKILL (no heartbeat for 2 s")
        info = job(instance, job_id)
        assert (info["state"], info["attempts"], info["runs"]) == ("done", 1, 2)
        assert executions(log)[("slow", 41)] == 1  # the stopped run never got past its sleep
    finally:
        if stopped is not None and not pid_gone(stopped):
            os.kill(stopped, signal.SIGCONT)
            os.kill(stopped, signal.SIGKILL)


# -- the daemon killed under load ----------------------------------------------------------

def test_daemon_killed_twice_every_accepted_job_ends_done(
        instance: Instance, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "runs.log"
    start(instance, log)
    n = 300
    with client(instance) as c:
        accepted = [c.submit("sleepy", i) for i in range(n)]  # each returns once committed
    daemons = []
    finished_early: list[str] = []
    for _ in range(2):
        floor = call(instance, "status")["queue"]["done"]
        status = wait_for(lambda: (s := call(instance, "status"))["queue"]["done"] >= floor + 30
                          and s, 60, "more jobs done before the kill")
        if not finished_early:
            finished_early = [j["id"] for j in call(instance, "jobs", state="done")["jobs"]]
        daemon = status["supervisor"]["pid"]
        workers = [w["pid"] for w in status["workers"] if w["pid"]]
        assert status["queue"]["done"] < n, "the run finished before the daemon was killed"
        os.kill(daemon, signal.SIGKILL)
        daemons.append(daemon)
        wait_for(lambda: pid_gone(daemon) and all(pid_gone(p) for p in workers), 30,
                 "the killed daemon and its workers gone")
        result = instance.ctl("start")
        assert result.returncode == 0, result.stderr
    status = instance.wait_status(lambda s: s["queue"]["done"] == n, 60, f"all {n} done")
    assert status["supervisor"]["pid"] not in daemons
    assert (status["queue"]["pending"], status["queue"]["running"]) == (0, 0)
    assert (status["queue"]["failed"], status["queue"]["dead"]) == (0, 0)
    with client(instance) as c:  # a fresh client: nothing cached from the submits
        assert [c.result(job_id, timeout=30) for job_id in accepted] == [2 * i for i in range(n)]
        assert finished_early
        assert [c.result(j, timeout=30) for j in finished_early] == \
            [2 * accepted.index(j) for j in finished_early]
    assert all(job(instance, j)["state"] == "done" for j in accepted[::25])
    runs = executions(log)
    assert set(runs) == {("sleepy", i) for i in range(n)}
    report(capsys, f"{n} jobs, daemon killed twice: "
                   f"{sum(runs.values()) - n} duplicate executions")


# -- malformed input -----------------------------------------------------------------------

def garbage(rng: random.Random) -> list[bytes]:
    """One malformed (or wrong-channel) multipart message."""
    command = rng.choice(list(wire.Command))
    header = bytes((wire.VERSION, command))
    blob = lambda: rng.randbytes(rng.randrange(0, 64))  # noqa: E731
    kind = rng.randrange(9)
    if kind == 0:
        return [blob() for _ in range(rng.randrange(1, 4))]
    if kind == 1:
        return [header, blob(), blob()][:rng.choice((2, 3))]
    if kind == 2:  # a valid header, a JSON body of the wrong shape
        body = rng.choice(['[]', '"x"', '17', 'null', '{"id": 5}', '{"id": "x", "ok": "no"}',
                           '{"nope": 1}', '{"slot": true, "pid": 1}', '{"tasks": []}',
                           '{"name": 3}', '{"id": "x", "task": null}', '{}'])
        return [header, body.encode(), b"null"][:rng.choice((2, 3))]
    if kind == 3:
        return [bytes((rng.choice((0, 2, 255)), command)), b'{"id": "x"}', b"null"]
    if kind == 4:
        return [header, b"{}", *[blob() for _ in range(rng.randrange(2, 8))]]
    if kind == 5:
        return [b""] * rng.randrange(1, 4)
    if kind == 6:
        return [header, b"[" * 100_000, b"null"]
    if kind == 7:
        return [header + blob()[:3], b"{}"]
    return [bytes((wire.VERSION, rng.choice((0, 6, 7, 13, 99, 255)))), b"{}"]


def counted(frames: list[bytes], channel: str, max_data: int = wire.MAX_DATA) -> bool:
    """Would the daemon count this message as dropped on this channel?"""
    if channel == "workers":
        return True  # malformed, or from a routing id that is no worker of ours
    try:
        message = wire.decode(frames, max_data)
    except wire.ProtocolError:
        return True
    return not isinstance(message, (wire.Submit, wire.Wait))


def test_malformed_input_at_every_socket_is_dropped_and_counted(
        instance: Instance, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start(instance, tmp_path / "runs.log")
    before = call(instance, "status")
    dropped_before = before["supervisor"]["frames_dropped"]
    worker_pids = [w["pid"] for w in before["workers"]]
    rng = random.Random(1234)
    ctx = zmq.Context.instance()
    sockets: list[zmq.Socket] = []

    def dealer(name: str, routing_id: bytes | None = None) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 2000)
        if routing_id is not None:
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
        sock.connect(endpoint(instance, name))
        sockets.append(sock)
        return sock

    expected = 0
    try:
        queue, workers, ctl = dealer("queue"), dealer("workers"), dealer("control")
        # A foreign peer that looks like a worker of slot 0, with a pid no worker has.
        lookalike = dealer("workers", b"0:1")
        crafted = [
            wire.encode(wire.Result(ids=["no-such-job"], oks=[True], errors=[None],
                                    seconds=[0.1], data=[b"1"])),
            wire.encode(wire.Result(ids=["no-such-job"], oks=[False], errors=[{"type": "X"}],
                                    seconds=[0.1], data=[b"null"])),
            wire.encode(wire.Ready(tasks={"echo": {"timeout": -1, "retryable": "yes"}})),
            wire.encode(wire.Heartbeat()),
            wire.encode(wire.Loading(slot=0, pid=1)),
        ]
        for frames in crafted:
            for sock in (workers, lookalike):
                sock.send_multipart(frames)
                expected += 1
        # Valid messages on the wrong channel, and a Result on the queue channel.
        for frames in (crafted[0], wire.encode(wire.Job(ids=["j"], tasks=["echo"], data=[b"1"])),
                       wire.encode(wire.Reply(ok=True)), wire.encode(wire.Heartbeat())):
            queue.send_multipart(frames)
            expected += 1
        for _ in range(300):
            frames = garbage(rng)
            workers.send_multipart(frames)
            expected += counted(frames, "workers")
            frames = garbage(rng)
            queue.send_multipart(frames)
            expected += counted(frames, "queue", 1 << 20)
            frames = garbage(rng)
            if frames[0] == b"":  # keep it from looking like a REQ envelope
                frames[0] = b"\x00"
            ctl.send_multipart(frames)
            expected += 1
        # Submits the daemon must answer, not drop: not JSON, unknown task, bad id; a Wait.
        answered = [
            wire.Submit(ids=["bad-json"], task="echo", data=[b"{not json"]),
            wire.Submit(ids=["no-task"], task="no_such_task", data=[b"1"]),
            wire.Submit(ids=[""], task="echo", data=[b"1"]),
            wire.Submit(ids=["x" * 129], task="echo", data=[b"1"]),
            wire.Wait(ids=["never-submitted"]),
        ]
        for message in answered:
            queue.send_multipart(wire.encode(message))
        replies: dict[str, wire.Message] = {}

        def all_answered() -> bool:
            while queue.poll(0):
                reply = wire.decode(queue.recv_multipart())
                for job_id in getattr(reply, "ids", None) or [getattr(reply, "id")]:
                    replies[job_id] = reply
            return len(replies) == len(answered)
        wait_for(all_answered, 30, "answers to the raw submits")
        assert isinstance(replies["bad-json"], wire.Rejected)
        assert "not JSON" in replies["bad-json"].error
        assert isinstance(replies["no-task"], wire.Rejected)
        assert "unknown task" in replies["no-task"].error
        assert isinstance(replies[""], wire.Rejected)
        assert isinstance(replies["x" * 129], wire.Rejected)
        never = replies["never-submitted"]
        assert isinstance(never, wire.JobResult) and never.states == ["unknown"]

        # A REQ peer gets an answer to every malformed or odd request, and stays usable.
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(endpoint(instance, "control"))
        sockets.append(req)
        requests = [
            [bytes((wire.VERSION, wire.Command.REQUEST)), b"\xff\xfe"],
            [bytes((wire.VERSION, wire.Command.REQUEST)), b'{"name": 7}'],
            [bytes((wire.VERSION, wire.Command.REPLY)), b'{"ok": true}'],
            [b"\x01", b"{}"],
            *[[rng.randbytes(2), rng.randbytes(rng.randrange(40))] for _ in range(20)],
        ]
        odd = [wire.encode(wire.Request(name=name, args=args)) for name, args in [
            ("no_such_request", {}), ("job", {"id": 5}), ("job", {"id": "nope"}),
            ("jobs", {"state": "sideways"}), ("jobs", {"limit": 0}),
            ("jobs", {"limit": True}), ("jobs", {"limit": 2 ** 70})]]
        for frames in requests + odd:
            req.send_multipart(frames)
            assert req.poll(10_000), f"no answer to {frames!r}"
            reply = wire.decode(req.recv_multipart())
            assert isinstance(reply, wire.Reply) and not reply.ok, (frames, reply)
        expected += len(requests)
        lookalike.send_multipart(wire.encode(wire.Heartbeat()))  # still connected, still foreign
        expected += 1

        status = instance.wait_status(
            lambda s: s["supervisor"]["frames_dropped"] - dropped_before >= expected, 30,
            f"{expected} dropped frames counted")
    finally:
        for sock in sockets:
            sock.close(linger=0)
    dropped = status["supervisor"]["frames_dropped"] - dropped_before
    assert status["supervisor"]["pid"] == before["supervisor"]["pid"]
    assert status["supervisor"]["state"] == "running"
    assert [w["pid"] for w in status["workers"]] == worker_pids
    assert status["queue"] == before["queue"]  # nothing was accepted
    with client(instance) as c:
        assert list(c.map("echo", [{"i": i} for i in range(200)], timeout=60)) == \
            [{"i": i} for i in range(200)]
    final = call(instance, "status")
    assert final["queue"]["done"] == before["queue"]["done"] + 200
    assert final["supervisor"]["pid"] == before["supervisor"]["pid"]
    report(capsys, f"malformed input: {expected} messages expected dropped, {dropped} counted")


# -- bad input at submit -------------------------------------------------------------------

def test_unknown_task_and_bad_payload_are_rejected_and_change_nothing(
        instance: Instance, tmp_path: Path) -> None:
    start(instance, tmp_path / "runs.log", FAST_RESTARTS + "[queue]\nmax_payload_bytes = 1000\n")
    before = call(instance, "status")["queue"]
    with client(instance) as c:
        with pytest.raises(JobRejected) as unknown:
            c.submit("no_such_task", 1, timeout=10)
        assert "unknown task 'no_such_task'" in str(unknown.value)
        assert "square" in str(unknown.value)  # it says which tasks there are
        with pytest.raises(TypeError):
            c.submit("echo", {1, 2}, timeout=10)  # not JSON: nothing is sent
        assert call(instance, "status")["queue"] == before
        assert call(instance, "jobs")["jobs"] == []
        with pytest.raises(control.ControlError, match="no such job"):
            job(instance, unknown.value.job_id)
        # A payload of exactly the limit is accepted.
        exact = "x" * 998
        assert len(json.dumps(exact)) == 1000
        assert c.result(c.submit("echo", exact, timeout=10), timeout=30) == exact
    assert call(instance, "status")["queue"]["done"] == before["done"] + 1


def test_oversized_payload_is_rejected(instance: Instance, tmp_path: Path) -> None:
    start(instance, tmp_path / "runs.log", FAST_RESTARTS + "[queue]\nmax_payload_bytes = 1000\n")
    before = call(instance, "status")["queue"]
    with client(instance) as c:
        with pytest.raises(JobRejected) as big:
            c.submit("echo", "x" * 999, timeout=5)
        assert "payload is 1001 bytes (limit 1000)" in str(big.value)
    assert call(instance, "status")["queue"] == before
    assert call(instance, "jobs")["jobs"] == []


# -- failing tasks -------------------------------------------------------------------------

def test_raising_task_fails_once_and_retryable_task_is_retried(
        instance: Instance, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    start(instance, log, FAST_RESTARTS + "[queue]\nmax_attempts = 4\n")
    with client(instance) as c:
        boom = c.submit("boom", 7)
        with pytest.raises(JobFailed) as failed:
            c.result(boom, timeout=30)
        assert failed.value.type == "ValueError"
        assert failed.value.message == "bad payload 7"
        assert failed.value.traceback.startswith("Traceback (most recent call last):")
        assert 'raise ValueError(f"bad payload {x}")' in failed.value.traceback
        assert "qtasks.py" in failed.value.traceback
        assert executions(log)[("boom", 7)] == 1
        flaky = c.submit("flaky", 8)
        with pytest.raises(JobFailed) as retried:
            c.result(flaky, timeout=30)
        assert (retried.value.type, retried.value.message) == ("RuntimeError", "flaky 8")
        assert executions(log)[("flaky", 8)] == 4
        # The failures are stored: asked again, the same answers come back.
        with pytest.raises(JobFailed, match="bad payload 7"):
            c.result(boom, timeout=10)
    assert job(instance, boom)["state"] == "failed"
    assert job(instance, boom)["runs"] == 1
    info = job(instance, flaky)
    assert (info["state"], info["runs"], info["attempts"]) == ("failed", 4, 0)
    assert info["error"]["type"] == "RuntimeError"
    status = call(instance, "status")
    assert status["queue"]["failed"] == 2
    assert all(w["restarts"] == 0 for w in status["workers"])  # a raise kills nobody


def test_retryable_job_keeps_its_retries_when_workers_die_before_running_it(
        instance: Instance, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    start(instance, log, workers=1)
    with client(instance) as c:
        poison = c.submit_nowait("suicide", [int(signal.SIGKILL), "poison"])
        retried = c.submit_nowait("flaky", 5)  # held behind the poison job each time
        with pytest.raises(JobDead):
            c.result(poison, timeout=60)
        with pytest.raises(JobFailed, match="flaky 5"):
            c.result(retried, timeout=60)
    assert executions(log)[("flaky", 5)] == 3  # max_attempts runs, as without the deaths


def test_job_past_its_time_limit_is_killed_retried_then_dead(
        instance: Instance, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    start(instance, log)
    with client(instance) as c:
        stuck = c.submit_nowait("stuck", 99)
        others = [c.submit_nowait("sleepy", i) for i in range(20)]
        t0 = time.monotonic()
        with pytest.raises(JobDead) as dead:
            c.result(stuck, timeout=50)
        elapsed = time.monotonic() - t0
        assert [c.result(j, timeout=30) for j in others] == [2 * i for i in range(20)]
    assert "passed its time limit of 1 s" in dead.value.reason
    assert "3 attempts" in dead.value.reason
    assert "killed by SIGKILL" in dead.value.reason
    assert elapsed > 3  # three runs of at least the 1 s limit each
    assert executions(log)[("stuck", 99)] == 3
    info = job(instance, stuck)
    assert (info["state"], info["attempts"], info["runs"]) == ("dead", 3, 3)
    instance.wait_status(
        lambda s: (s["queue"]["done"], s["queue"]["dead"]) == (20, 1)
        and sum(w["restarts"] for w in s["workers"]) == 3, 30, "20 done, 1 dead, 3 restarts")
