"""Telling the service manager how the daemon is doing: systemd's sd_notify protocol.

systemd (Type=notify) puts the path of a datagram socket in NOTIFY_SOCKET; each message
is one datagram of newline-separated ``KEY=VALUE`` lines: READY=1, STATUS=..., WATCHDOG=1,
RELOADING=1 (with MONOTONIC_USEC, which Type=notify-reload requires), STOPPING=1. A path
starting with "@" is in the abstract namespace. WATCHDOG_USEC asks for a WATCHDOG=1 at
least that often; WATCHDOG_PID, when set, says which process it is meant for.

The variables are removed from the environment once read, so that spawned workers do not
inherit them: only the daemon speaks for the service. Without NOTIFY_SOCKET (launchd, a
terminal) every method does nothing. Sending never raises and never blocks: a Unix datagram
queue holds few messages (net.unix.max_dgram_qlen, 10 by default) and a blocking send to a
reader that is behind would stop the daemon's loop. What does not fit is kept and sent by
`flush`, in order, except watchdog pings (the next one is due soon) and a STATUS= that a
newer one replaces.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping

log = logging.getLogger("supervisor.service")
NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# A ping every third of the watchdog period: one late loop pass does not trip it.
WATCHDOG_FRACTION = 3
MAX_UNSENT = 100  # messages kept for a reader that is behind; the oldest go first


class Notifier:
    def __init__(self, environ: MutableMapping[str, str] | None = None,
                 pid: int | None = None) -> None:
        env = os.environ if environ is None else environ
        values = {name: env.pop(name, None) for name in NOTIFY_VARS}
        pid = os.getpid() if pid is None else pid
        self.address: str | None = None
        self.watchdog_interval: float | None = None
        self._sock: socket.socket | None = None
        self._next_ping = 0.0
        self._last_status: str | None = None
        self._unsent: list[str] = []
        path = values["NOTIFY_SOCKET"]
        if path:
            if path.startswith("@"):
                self.address = "\0" + path[1:]
            elif path.startswith("/"):
                self.address = path
            else:  # vsock: and other transports are for virtual machines, not for us
                log.warning("NOTIFY_SOCKET=%s: unsupported address; not notifying", path)
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
            self.watchdog_interval = _watchdog_interval(values["WATCHDOG_USEC"],
                                                        values["WATCHDOG_PID"], pid)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        """One datagram; False if there is nobody to tell or it was not sent (yet)."""
        if self._sock is None:
            return False
        message = "\n".join(lines)
        if message.startswith("STATUS="):  # a newer status replaces one still waiting
            self._unsent = [m for m in self._unsent if not m.startswith("STATUS=")]
        if message != "WATCHDOG=1":
            self._unsent.append(message)
            del self._unsent[:-MAX_UNSENT]
        elif self._unsent:
            return False  # behind: this ping is not worth queueing
        else:
            return self._sendto(message)
        return self.flush()

    def flush(self) -> bool:
        """Send what is waiting, in order; True when nothing is left."""
        while self._unsent:
            if not self._sendto(self._unsent[0]):
                return False
            self._unsent.pop(0)
        return True

    def _sendto(self, message: str) -> bool:
        assert self._sock is not None and self.address is not None
        try:
            self._sock.sendto(message.encode(), self.address)
        except BlockingIOError:
            return False  # the reader is behind; flush tries again
        except OSError as exc:
            log.debug("sd_notify %s: %s", message.split("\n", 1)[0], exc)
            if self._unsent and self._unsent[0] == message:
                self._unsent.pop(0)  # gone for good (no listener): do not retry it
            return False
        return True

    def ready(self, status: str) -> None:
        self._last_status = status
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> None:
        """STATUS= only when it changed."""
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def watchdog(self, now: float) -> None:
        """WATCHDOG=1 if one is due (call it from the main loop when the daemon is healthy)."""
        if self.watchdog_interval is not None and now >= self._next_ping:
            self._next_ping = now + self.watchdog_interval
            self.send("WATCHDOG=1")

    def next_deadline(self) -> float | None:
        return self._next_ping if self.watchdog_interval is not None else None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(usec: str | None, for_pid: str | None, pid: int) -> float | None:
    if not usec:
        return None
    try:
        period = int(usec)
        if for_pid and int(for_pid) != pid:
            return None  # the watchdog is meant for another process
    except ValueError:
        log.warning("WATCHDOG_USEC=%r / WATCHDOG_PID=%r: not numbers; no watchdog pings",
                    usec, for_pid)
        return None
    return period / 1e6 / WATCHDOG_FRACTION if period > 0 else None
