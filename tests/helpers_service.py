"""What tests/unit/test_service.py and tests/system/test_service.py share: a datagram
socket that plays systemd's notify socket."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture
def notify_socket() -> Iterator[socket.socket]:
    """A datagram socket as systemd owns one: a short path (sun_path is ~100 bytes)."""
    directory = tempfile.mkdtemp(prefix="dbn-", dir="/tmp")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.path.join(directory, "notify"))
    sock.settimeout(0.1)
    try:
        yield sock
    finally:
        sock.close()
        os.unlink(os.path.join(directory, "notify"))
        os.rmdir(directory)


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting now."""
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            return out
