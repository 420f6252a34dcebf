"""Payloads over the size limit, and NaN or Infinity, at every door: the Client, docbrainctl
and the daemon give one clear rejection and change nothing; no submit waits forever.

A payload frame over the daemon's ZeroMQ MAXMSGSIZE used to make ZeroMQ drop the client's
connection unseen, so the client waited for an answer that never came. The checks that need
no daemon are in tests/unit/test_payload_limits.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import zmq
from conftest import Instance, wait_for
from helpers_payload_limits import NOT_JSON_FLOAT

from supervisor.client import Client, JobFailed, JobRejected, NotAcknowledged, PayloadError
from supervisor.conf.config import load_config
from supervisor.proto import control, wire
from supervisor.proto.paths import StatePaths

TASKS = """\
import time
from workers import task

@task("as_float")
def as_float(text):
    return {"value": float(text)}

@task("nap")
def nap(seconds):
    time.sleep(seconds)
    return seconds
"""
DEFAULT_LIMIT = 1 << 20  # queue.max_payload_bytes


def start(instance: Instance, extra: str = "") -> None:
    instance.write_task_module("ptasks", TASKS)
    instance.write_config('tasks = ["ptasks"]\n' + extra, workers=1)
    result = instance.ctl("start")
    assert result.returncode == 0, result.stderr


def endpoint(instance: Instance, name: str) -> str:
    return StatePaths.for_state_dir(str(instance.state_dir)).endpoint(name)


def status(instance: Instance) -> dict[str, Any]:
    return control.call(endpoint(instance, "control"), "status", {}, timeout=15)


def string_of(size: int) -> str:
    """A string whose JSON is `size` bytes."""
    return "x" * (size - 2)


@contextmanager
def raw_queue(instance: Instance) -> Iterator[zmq.Socket]:
    """A client that sends what it is told, unchecked, as another program might."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint(instance, "queue"))
    try:
        yield sock
    finally:
        sock.close(linger=0)


def answers(sock: zmq.Socket, ids: set[str], timeout: float) -> dict[str, wire.Message]:
    """The Accepted or Rejected for each id; fails (never hangs) if one does not come."""
    got: dict[str, wire.Message] = {}

    def all_in() -> bool:
        while sock.poll(0):
            reply = wire.decode(sock.recv_multipart())
            if isinstance(reply, wire.Accepted):
                got.update(dict.fromkeys(reply.ids, reply))
            elif isinstance(reply, wire.Rejected):
                got[reply.id] = reply
        return ids <= got.keys()
    wait_for(all_in, timeout, f"answers to {sorted(ids)}")
    return got


# -- a daemon ----------------------------------------------------------------------------

def test_every_size_over_the_limit_gets_the_same_rejection(instance: Instance) -> None:
    start(instance)
    before = status(instance)
    big = string_of(2_500_000)
    with Client(str(instance.config_path)) as client:
        # Checked here, before sending: 2.0 MB was rejected by the daemon before the fix,
        # and over about 2 MiB the client waited forever.
        for size in (DEFAULT_LIMIT + 1, 2_000_000, 2_500_000, 10_000_000, 50_000_000):
            t0 = time.monotonic()
            with pytest.raises(PayloadError) as refused:
                client.submit("echo", string_of(size), timeout=10)
            assert str(refused.value) == f"payload is {size} bytes (limit {DEFAULT_LIMIT})"
            assert isinstance(refused.value, JobRejected)
            assert isinstance(refused.value, ValueError)
            assert time.monotonic() - t0 < 5
        with pytest.raises(PayloadError, match=r"^payloads\[1\]: payload is 2500000 bytes"):
            client.submit_many_nowait("echo", [1, big, 3])  # nothing sent, not even 1
        # A map rejects it in its place, and runs the others.
        outcomes = list(client.map("echo", [1, big, 3], timeout=60, return_exceptions=True))
        assert outcomes[0] == 1 and outcomes[2] == 3
        assert isinstance(outcomes[1], PayloadError)
        assert str(outcomes[1]) == f"payload is 2500000 bytes (limit {DEFAULT_LIMIT})"
        results = client.map("echo", [4, big], timeout=60)
        assert next(results) == 4
        with pytest.raises(PayloadError):
            next(results)

    # The daemon checks too, at every size, for clients that do not (or think the limit is
    # higher): they get a Rejected, not a dropped connection.
    with raw_queue(instance) as sock:
        sizes = {"r-2.5": 2_500_000, "r-50": 50_000_000, "r-limit+1": DEFAULT_LIMIT + 1}
        for job_id, size in sizes.items():
            sock.send_multipart(wire.encode(wire.Submit(
                ids=[job_id], task="echo", data=[json.dumps(string_of(size)).encode()])))
        # Many jobs in one message: only each frame is bounded, not their sum (2.7 MB).
        fits = [json.dumps(string_of(900_000)).encode()] * 3
        sock.send_multipart(wire.encode(wire.Submit(ids=["ok-1", "ok-2", "ok-3"], task="echo",
                                                    data=fits)))
        got = answers(sock, {*sizes, "ok-1", "ok-2", "ok-3"}, 30)
    for job_id, size in sizes.items():
        reply = got[job_id]
        assert isinstance(reply, wire.Rejected), (job_id, reply)
        assert reply.error == f"payload is {size} bytes (limit {DEFAULT_LIMIT})"
    assert all(isinstance(got[j], wire.Accepted) for j in ("ok-1", "ok-2", "ok-3"))

    config = load_config(str(instance.config_path))
    lax = dataclasses.replace(config, queue=dataclasses.replace(config.queue,
                                                                max_payload_bytes=64 << 20))
    with Client(lax) as client:
        with pytest.raises(JobRejected) as rejected:
            client.submit("echo", string_of(3_000_000), timeout=30)
        assert not isinstance(rejected.value, PayloadError)  # the daemon said it
        assert str(rejected.value) == f"payload is 3000000 bytes (limit {DEFAULT_LIMIT})"

    after = instance.wait_status(
        lambda s: s["queue"]["done"] == before["queue"]["done"] + 6, 60,
        "the 6 jobs that fit done")
    assert sum(after["queue"].values()) == sum(before["queue"].values()) + 6  # no other job
    assert after["supervisor"]["frames_dropped"] == before["supervisor"]["frames_dropped"]
    assert after["supervisor"]["pid"] == before["supervisor"]["pid"]


def test_submit_many_nowait_splits_what_one_message_cannot_carry(instance: Instance) -> None:
    start(instance)
    count = wire.MAX_BODY // 34 + 1000  # ids of 32 hex digits, quoted, comma: over MAX_BODY
    with Client(str(instance.config_path)) as client:
        ids = client.submit_many_nowait("noop", [None] * count)  # was a ProtocolError
        assert client.result(ids[-1], timeout=120) is None
        assert client.result(ids[0], timeout=60) is None
    instance.wait_status(lambda s: s["queue"]["done"] == count, 120, f"{count} jobs done")


def test_nan_and_infinity_are_refused_as_payloads_and_results(instance: Instance) -> None:
    start(instance)
    before = status(instance)["queue"]
    with Client(str(instance.config_path)) as client:
        for value in (float("nan"), float("inf"), -float("inf"), {"a": [1.0, float("nan")]}):
            with pytest.raises(PayloadError, match=f"^{NOT_JSON_FLOAT}$") as refused:
                client.submit("echo", value, timeout=10)
            assert isinstance(refused.value, ValueError)
        assert status(instance)["queue"] == before  # nothing was sent
        with raw_queue(instance) as sock:
            bad = {"nan": b"NaN", "inf": b"[1, Infinity]", "-inf": b'{"a": -Infinity}'}
            for job_id, data in {**bad, "string": b'"NaN"'}.items():
                sock.send_multipart(wire.encode(wire.Submit(ids=[job_id], task="echo",
                                                            data=[data])))
            got = answers(sock, {*bad, "string"}, 30)
        for job_id, name in (("nan", "NaN"), ("inf", "Infinity"), ("-inf", "-Infinity")):
            reply = got[job_id]
            assert isinstance(reply, wire.Rejected), (job_id, reply)
            assert reply.error == f"payload is not JSON: {name} is not a JSON value"
        assert isinstance(got["string"], wire.Accepted)  # a string "NaN" is fine
        assert client.result("string", timeout=30) == "NaN"
        # A task whose result has NaN fails, with the reason.
        for text in ("nan", "inf", "-inf"):
            with pytest.raises(JobFailed) as failed:
                client.result(client.submit("as_float", text), timeout=30)
            assert (failed.value.type, failed.value.message) == \
                ("ValueError", "result is not JSON: NaN and Infinity are not JSON values")
        assert client.result(client.submit("as_float", "1.5"), timeout=30) == {"value": 1.5}
    after = status(instance)["queue"]
    assert (after["done"], after["failed"]) == (before["done"] + 2, before["failed"] + 3)


def test_a_submit_never_answered_is_an_error_not_a_hang(instance: Instance) -> None:
    start(instance)
    pid = instance.daemon_pid()
    assert pid
    with Client(str(instance.config_path), ack_timeout=2.0) as client:
        os.kill(pid, signal.SIGSTOP)  # alive, holding its pidfile, answering nothing
        try:
            t0 = time.monotonic()
            with pytest.raises(NotAcknowledged) as unanswered:
                client.submit("echo", 1)
            assert 2.0 <= time.monotonic() - t0 < 10
            message = str(unanswered.value)
            assert unanswered.value.job_id in message
            assert "the daemon runs but did not answer" in message
            assert isinstance(unanswered.value, TimeoutError)
            job_id = client.submit_nowait("echo", 2)
            with pytest.raises(NotAcknowledged, match=job_id):
                client.result(job_id)  # no timeout: waits for a result, not for an ack
            t0 = time.monotonic()
            with pytest.raises(NotAcknowledged):
                list(client.map("echo", range(10)))
            assert time.monotonic() - t0 < 10
        finally:
            os.kill(pid, signal.SIGCONT)
        # Once the daemon answers again, so does the client.
        assert client.result(client.submit("echo", 3, timeout=60), timeout=60) == 3
        assert instance.ctl("stop").returncode == 0
        with pytest.raises(NotAcknowledged, match="the daemon is not running"):
            client.submit("echo", 4)


def test_docbrainctl_submit_refuses_bad_payloads_in_one_line(instance: Instance) -> None:
    start(instance, "[queue]\nmax_payload_bytes = 100000\n")
    before = status(instance)["queue"]
    not_float = "PAYLOAD_JSON is not JSON: {} is not a JSON value"
    cases = [
        (("echo", "NaN", "--wait"), not_float.format("NaN")),
        (("echo", "Infinity"), not_float.format("Infinity")),
        (("echo", "--wait", "--", "-Infinity"), not_float.format("-Infinity")),
        (("echo", '{"a": [1, NaN]}'), not_float.format("NaN")),
        (("echo", json.dumps(string_of(100_001)), "--wait"),
         "rejected: payload is 100001 bytes (limit 100000)"),
    ]
    big = instance.root / "big.jsonl"
    big.write_text(f'1\n{json.dumps(string_of(2_500_000))}\n3\n')
    nan = instance.root / "nan.jsonl"
    nan.write_text("1\n[NaN]\n")
    cases += [
        (("echo", "--input", str(big)),
         f"rejected: {big} line 2: payload is 2500000 bytes (limit 100000)"),
        (("echo", "--input", str(nan)), f"{nan} line 2 is not JSON: NaN is not a JSON value"),
    ]
    for args, message in cases:
        result = instance.ctl("submit", *args, timeout=60)
        assert result.returncode == 2, (args[:2], result.stderr[-2000:])
        assert result.stderr.strip() == f"docbrainctl: {message}", args[:2]
    assert status(instance)["queue"] == before  # no job at all: line 1 was not sent either

    # A wait that runs out, with --input too, is one line and exit 1, not a traceback.
    slow = instance.root / "slow.jsonl"
    slow.write_text("3\n")
    result = instance.ctl("submit", "nap", "--input", str(slow), "--timeout", "0.5")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "docbrainctl: timed out after 0.5 s waiting for the result of ")
    assert "Traceback" not in result.stderr
