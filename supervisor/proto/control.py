"""The control channel: docbrainctl's REQ socket to the daemon's ROUTER, over ipc://.

The daemon side answers each request in its poll loop, so it keeps answering while
workers crash-loop; the client side waits with a deadline and never hangs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import zmq

from supervisor.proto import wire

log = logging.getLogger("supervisor.proto")
Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlError(Exception):
    """The daemon refused a request, or did not answer in time (ControlTimeout)."""


class ControlTimeout(ControlError, TimeoutError):
    """The daemon did not answer in time, or its answer was not one."""


class RequestError(Exception):
    """Raised by a handler for a bad request: sent back to the client as the error."""


class ControlServer:
    def __init__(self, ctx: zmq.Context, endpoint: str, handlers: dict[str, Handler]) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.handlers = handlers
        self.dropped = 0

    def drain(self) -> None:
        """Answer every request waiting on the socket."""
        for frames in wire.waiting(self.sock):
            # REQ peers send [routing id, empty delimiter, header, body].
            if len(frames) < 3 or frames[1] != b"":
                self.dropped += 1
                continue
            envelope, body = frames[:2], frames[2:]
            try:
                request = wire.decode(body)
                if not isinstance(request, wire.Request):
                    raise wire.ProtocolError(f"expected a Request, got {type(request).__name__}")
            except wire.ProtocolError as exc:
                self.dropped += 1
                log.debug("control: dropped a malformed request: %s", exc)
                self._reply(envelope, wire.Reply(ok=False, error=f"malformed request: {exc}"))
                continue
            self._reply(envelope, self._dispatch(request))

    def _dispatch(self, request: wire.Request) -> wire.Reply:
        handler = self.handlers.get(request.name)
        if handler is None:
            return wire.Reply(ok=False, error=f"unknown request {request.name!r}")
        try:
            return wire.Reply(ok=True, result=handler(request.args))
        except RequestError as exc:
            return wire.Reply(ok=False, error=str(exc))
        except Exception as exc:  # a bug must not take the control channel down
            log.exception("control: %s failed", request.name)
            return wire.Reply(ok=False, error=f"internal error: {type(exc).__name__}: {exc}")

    def _reply(self, envelope: list[bytes], reply: wire.Reply) -> None:
        try:
            self.sock.send_multipart(envelope + wire.encode(reply), zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the client went away
            log.debug("control: reply not sent: %s", exc)

    def close(self) -> None:
        self.sock.close(linger=0)


def call(endpoint: str, name: str, args: dict[str, Any] | None = None,
         timeout: float = 5.0) -> dict[str, Any]:
    """One request/reply; raises ControlError on refusal or time-out."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(wire.encode(wire.Request(name=name, args=args or {})))
        if not sock.poll(int(timeout * 1000)):
            raise ControlTimeout(f"the daemon did not answer {name!r} within {timeout:g} s")
        try:
            reply = wire.decode(sock.recv_multipart())
        except wire.ProtocolError as exc:
            raise ControlTimeout(f"malformed reply from the daemon: {exc}") from None
    finally:
        sock.close(linger=0)
    if not isinstance(reply, wire.Reply):
        raise ControlTimeout(f"unexpected {type(reply).__name__} from the daemon")
    if not reply.ok:
        raise ControlError(reply.error or "request refused")
    return reply.result or {}
