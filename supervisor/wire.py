"""Every frame that crosses a ZeroMQ socket, in one place.

A message is two frames; ROUTER sockets add the peer's routing id (and REQ peers an empty
delimiter) in front, which the socket owner strips before `decode`::

    +---------------------------+----------------------------+
    | header: 2 bytes           | body: UTF-8 JSON object    |
    | VERSION | Command (uint8) | the message's fields       |
    +---------------------------+----------------------------+

Worker channel (worker DEALER -> daemon ROUTER ``workers.sock``; routing id "slot:pid"):
    worker -> daemon: Loading, Ready, Heartbeat
    daemon -> worker: Heartbeat
Control channel (docbrainctl REQ -> daemon ROUTER ``control.sock``):
    client -> daemon: Request        daemon -> client: Reply

Anything else -- a wrong version, an unknown command, a body over MAX_BODY, a field of the
wrong type -- raises `ProtocolError`; socket owners drop such input and count it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

VERSION = 1
MAX_BODY = 1 << 20  # bytes


class ProtocolError(ValueError):
    """A frame that is not a valid message of this protocol."""


class Command(IntEnum):
    LOADING = 1
    READY = 2
    HEARTBEAT = 3
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
    tasks: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Heartbeat:
    command: ClassVar[Command] = Command.HEARTBEAT


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


Message = Loading | Ready | Heartbeat | Request | Reply
_BY_COMMAND: dict[int, type] = {cls.command: cls for cls in typing.get_args(Message)}


def encode(message: Message) -> list[bytes]:
    body = json.dumps(dataclasses.asdict(message), separators=(",", ":")).encode()
    if len(body) > MAX_BODY:
        raise ProtocolError(f"{type(message).__name__} body is {len(body)} bytes "
                            f"(limit {MAX_BODY})")
    return [bytes((VERSION, message.command)), body]


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


def decode(frames: list[bytes]) -> Message:
    """Parse the two frames of a message, or raise ProtocolError saying what is wrong."""
    if len(frames) != 2:
        raise ProtocolError(f"expected 2 frames, got {len(frames)}")
    header, body = frames
    if len(header) != 2:
        raise ProtocolError(f"header is {len(header)} bytes, expected 2")
    if header[0] != VERSION:
        raise ProtocolError(f"protocol version {header[0]}, expected {VERSION}")
    cls = _BY_COMMAND.get(header[1])
    if cls is None:
        raise ProtocolError(f"unknown command {header[1]}")
    if len(body) > MAX_BODY:
        raise ProtocolError(f"body is {len(body)} bytes (limit {MAX_BODY})")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("body is not a JSON object")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in fields:
            raise ProtocolError(f"{cls.__name__}: unknown field {key!r}")
        if not _matches(value, hints[key]):
            raise ProtocolError(f"{cls.__name__}.{key}: wrong type {type(value).__name__}")
    try:
        return typing.cast(Message, cls(**data))
    except TypeError as exc:  # a required field is missing
        raise ProtocolError(f"{cls.__name__}: {exc}") from None
