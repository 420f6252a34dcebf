"""The daemon as a service: the sd_notify protocol, against a real datagram socket of the
test's own. The daemon itself and the metrics endpoint of a real run are in
tests/system/test_service.py."""

from __future__ import annotations

import socket

import pytest
from helpers_service import notify_socket, received  # noqa: F401 (a fixture)

from supervisor.service.notify import Notifier


# -- the protocol, against a socket of the test's own ---------------------------------------

def test_notifier_sends_datagrams_and_takes_the_variables_out_of_the_environment(
        notify_socket: socket.socket) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "3000000",
           "WATCHDOG_PID": "4242", "OTHER": "kept"}
    notifier = Notifier(env, pid=4242)
    assert env == {"OTHER": "kept"}  # workers spawned later do not inherit them
    assert notifier.enabled and notifier.watchdog_interval == pytest.approx(1.0)
    notifier.ready("2/2 workers ready")
    notifier.status("2/2 workers ready")  # unchanged: not sent again
    notifier.status("1/2 workers ready")
    notifier.watchdog(100.0)
    notifier.watchdog(100.5)  # not due yet
    notifier.watchdog(101.0)
    notifier.reloading()
    notifier.stopping()
    got = received(notify_socket)
    assert got[:5] == ["READY=1\nSTATUS=2/2 workers ready", "STATUS=1/2 workers ready",
                       "WATCHDOG=1", "WATCHDOG=1", got[4]]
    assert got[4].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert int(got[4].split("\n")[1].split("=")[1]) > 0
    assert got[5:] == ["STOPPING=1\nSTATUS=stopping"]
    notifier.close()


def test_notifier_never_blocks_on_a_reader_that_is_behind(
        notify_socket: socket.socket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.getsockname()}, pid=1)
    sent = sum(notifier.send("WATCHDOG=1") for _ in range(1000))  # nobody reads meanwhile
    assert 0 < sent < 1000  # the queue filled up; the rest were dropped, not waited for
    notifier.status("1/2 workers ready")
    notifier.ready("2/2 workers ready")
    notifier.status("2/2 workers ready, 5 jobs queued")
    notifier.status("2/2 workers ready, 9 jobs queued")  # replaces the one before
    assert received(notify_socket) == ["WATCHDOG=1"] * sent
    assert notifier.flush()
    # In order; of the STATUS= lines that waited, only the newest is worth sending.
    assert received(notify_socket) == ["READY=1\nSTATUS=2/2 workers ready",
                                       "STATUS=2/2 workers ready, 9 jobs queued"]


def test_notifier_without_a_socket_or_for_another_pid() -> None:
    quiet = Notifier({}, pid=1)
    assert not quiet.enabled and not quiet.send("READY=1")
    other = Notifier({"NOTIFY_SOCKET": "@abstract-name", "WATCHDOG_USEC": "1000000",
                      "WATCHDOG_PID": "99"}, pid=1)
    assert other.address == "\0abstract-name"
    assert other.watchdog_interval is None  # the watchdog is for pid 99
    assert Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}, pid=1).enabled is False
    assert Notifier({"NOTIFY_SOCKET": "/nonexistent/sock"}, pid=1).send("READY=1") is False
