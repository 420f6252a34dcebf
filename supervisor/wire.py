"""Every frame that crosses a ZeroMQ socket, in one place.

A message is two frames, or three for a message that carries a JSON document (a job's
payload or result) verbatim. ROUTER sockets add the peer's routing id (and REQ peers an
empty delimiter) in front, which the socket owner strips before `decode`::

    +---------------------------+-------------------------+-------------------------------+
    | header: 2 bytes           | body: UTF-8 JSON object | data (only if carries_data):  |
    | VERSION | Command (uint8) | the message's fields    | a JSON document, as bytes     |
    +---------------------------+-------------------------+-------------------------------+

Worker channel (worker DEALER -> daemon ROUTER ``workers.sock``; routing id "slot:pid",
and "slot:pid:hb" for the worker's heartbeat thread):
    worker -> daemon: Loading, Ready, Heartbeat, Result(+result), Retiring
    daemon -> worker: Heartbeat, Job(+payload)
Queue channel (client DEALER -> daemon ROUTER ``queue.sock``):
    client -> daemon: Submit(+payload), Wait
    daemon -> client: Accepted, Rejected, JobResult(+result)
Control channel (docbrainctl REQ -> daemon ROUTER ``control.sock``):
    client -> daemon: Request        daemon -> client: Reply

Anything else -- a wrong version, an unknown command, a body or data frame over its limit,
a field of the wrong type -- raises `ProtocolError`; socket owners drop such input and
count it. Whether a data frame is valid JSON is checked where it matters (at submit).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

import zmq

VERSION = 1
MAX_BODY = 1 << 20   # bytes of a message's JSON body
MAX_DATA = 64 << 20  # bytes of a data frame, unless the socket owner sets its own limit


# Besides the sockets: before a worker runs jobs it writes this line, with their ids, to its
# stderr pipe. A write to a pipe is in the kernel at once, so it survives the worker's
# sudden death (a message queued on a ZeroMQ socket may not), and the daemon knows which
# jobs were running when a worker died.
START_MARK = b"\x1edocbrain-start "


class ProtocolError(ValueError):
    """A frame that is not a valid message of this protocol."""


class Command(IntEnum):
    LOADING = 1
    READY = 2
    HEARTBEAT = 3
    JOB = 4
    RESULT = 5
    RETIRING = 6
    SUBMIT = 8
    ACCEPTED = 9
    REJECTED = 10
    WAIT = 11
    JOB_RESULT = 12
    REQUEST = 16
    REPLY = 17


@dataclass(frozen=True)
class Loading:
    command: ClassVar[Command] = Command.LOADING
    slot: int
    pid: int


@dataclass(frozen=True)
class Ready:
    command: ClassVar[Command] = Command.READY
    # task name -> {"timeout": seconds or None, "retryable": bool}
    tasks: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Heartbeat:
    command: ClassVar[Command] = Command.HEARTBEAT


@dataclass(frozen=True)
class Job:
    command: ClassVar[Command] = Command.JOB
    carries_data: ClassVar[bool] = True
    id: str
    task: str
    data: bytes = b"null"  # the payload, JSON


@dataclass(frozen=True)
class Result:
    command: ClassVar[Command] = Command.RESULT
    carries_data: ClassVar[bool] = True
    id: str
    ok: bool
    error: dict[str, Any] | None = None  # {"type", "message", "traceback"} when not ok
    data: bytes = b"null"  # the result, JSON


@dataclass(frozen=True)
class Retiring:
    """The worker passed a recycling limit: it takes no more jobs and exits once its
    results are out; the daemon replaces it."""
    command: ClassVar[Command] = Command.RETIRING
    reason: str


@dataclass(frozen=True)
class Submit:
    command: ClassVar[Command] = Command.SUBMIT
    carries_data: ClassVar[bool] = True
    id: str              # chosen by the client: a resent Submit is not a second job
    task: str
    wait: bool = False   # push the JobResult when the job ends
    data: bytes = b"null"


@dataclass(frozen=True)
class Accepted:
    command: ClassVar[Command] = Command.ACCEPTED
    id: str


@dataclass(frozen=True)
class Rejected:
    command: ClassVar[Command] = Command.REJECTED
    id: str
    error: str


@dataclass(frozen=True)
class Wait:
    command: ClassVar[Command] = Command.WAIT
    id: str


@dataclass(frozen=True)
class JobResult:
    command: ClassVar[Command] = Command.JOB_RESULT
    carries_data: ClassVar[bool] = True
    id: str
    state: str                             # done, failed, dead, or unknown
    error: dict[str, Any] | None = None    # failed: type, message, traceback; dead: reason
    data: bytes = b"null"


@dataclass(frozen=True)
class Request:
    command: ClassVar[Command] = Command.REQUEST
    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    command: ClassVar[Command] = Command.REPLY
    ok: bool
    result: dict[str, Any] | None = None
    error: str | None = None


Message = (Loading | Ready | Heartbeat | Job | Result | Retiring | Submit | Accepted
           | Rejected | Wait | JobResult | Request | Reply)
_BY_COMMAND: dict[int, type] = {cls.command: cls for cls in typing.get_args(Message)}
# Per class: field name -> type hint, without the data frame; resolved once.
_HINTS: dict[type, dict[str, Any]] = {
    cls: {k: v for k, v in typing.get_type_hints(cls).items()
          if k in {f.name for f in dataclasses.fields(cls)} and k != "data"}
    for cls in _BY_COMMAND.values()
}
_REQUIRED: dict[type, frozenset[str]] = {
    cls: frozenset(f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING)
    for cls in _BY_COMMAND.values()
}
_DUMPS = json.JSONEncoder(separators=(",", ":")).encode


def encode(message: Message, max_data: int = MAX_DATA) -> list[bytes]:
    cls = type(message)
    body = _DUMPS({k: getattr(message, k) for k in _HINTS[cls]}).encode()
    if len(body) > MAX_BODY:
        raise ProtocolError(f"{cls.__name__} body is {len(body)} bytes (limit {MAX_BODY})")
    frames = [bytes((VERSION, message.command)), body]
    if getattr(cls, "carries_data", False):
        data: bytes = message.data  # type: ignore[union-attr]
        if len(data) > max_data:
            raise ProtocolError(f"{cls.__name__} data is {len(data)} bytes (limit {max_data})")
        frames.append(data)
    return frames


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return isinstance(value, hint)


def decode(frames: list[bytes], max_data: int = MAX_DATA) -> Message:
    """Parse the frames of a message, or raise ProtocolError saying what is wrong."""
    if len(frames) not in (2, 3):
        raise ProtocolError(f"expected 2 or 3 frames, got {len(frames)}")
    header, body = frames[0], frames[1]
    if len(header) != 2:
        raise ProtocolError(f"header is {len(header)} bytes, expected 2")
    if header[0] != VERSION:
        raise ProtocolError(f"protocol version {header[0]}, expected {VERSION}")
    cls = _BY_COMMAND.get(header[1])
    if cls is None:
        raise ProtocolError(f"unknown command {header[1]}")
    carries_data = getattr(cls, "carries_data", False)
    if len(frames) != (3 if carries_data else 2):
        raise ProtocolError(f"{cls.__name__}: expected {3 if carries_data else 2} frames, "
                            f"got {len(frames)}")
    if carries_data and len(frames[2]) > max_data:
        raise ProtocolError(f"{cls.__name__} data is {len(frames[2])} bytes (limit {max_data})")
    if len(body) > MAX_BODY:
        raise ProtocolError(f"body is {len(body)} bytes (limit {MAX_BODY})")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("body is not a JSON object")
    hints = _HINTS[cls]
    for key, value in data.items():
        hint = hints.get(key)
        if hint is None:
            raise ProtocolError(f"{cls.__name__}: unknown field {key!r}")
        if not _matches(value, hint):
            raise ProtocolError(f"{cls.__name__}.{key}: wrong type {type(value).__name__}")
    missing = _REQUIRED[cls] - data.keys()
    if missing:
        raise ProtocolError(f"{cls.__name__}: missing field(s) {', '.join(sorted(missing))}")
    if carries_data:
        data["data"] = frames[2]
    return typing.cast(Message, cls(**data))


def waiting(sock: zmq.Socket) -> Iterator[list[bytes]]:
    """Every multipart message already waiting on the socket, without blocking."""
    while True:
        try:
            yield sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
