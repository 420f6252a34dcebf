"""Every frame that crosses a ZeroMQ socket, in one place.

A message is two frames, followed, for the messages about jobs, by one data frame per job:
the job's payload or result, a JSON document carried verbatim. Those messages carry any
number of jobs at once (the lists named in `parallel` have one item per data frame), so a
busy pass of the daemon's loop sends one message where it would send hundreds. ROUTER
sockets add the peer's routing id (and REQ peers an empty delimiter) in front, which the
socket owner strips before `decode`::

    +---------------------------+-------------------------+-------------------------------+
    | header: 2 bytes           | body: UTF-8 JSON object | data 0 .. data N-1 (messages  |
    | VERSION | Command (uint8) | the message's fields    | about N jobs): JSON documents |
    +---------------------------+-------------------------+-------------------------------+

Worker channel (worker DEALER -> daemon ROUTER ``workers.sock``; routing id "slot:pid",
and "slot:pid:hb" for the worker's heartbeat thread):
    worker -> daemon: Loading, Ready, Heartbeat, Result(+result), Retiring, Revoked
    daemon -> worker: Heartbeat, Job(+payloads), Assign (to a standby worker), Revoke
Queue channel (client DEALER -> daemon ROUTER ``queue.sock``):
    client -> daemon: Submit(+payload), Wait
    daemon -> client: Accepted, Rejected, JobResult(+result)
Control channel (docbrainctl REQ -> daemon ROUTER ``control.sock``):
    client -> daemon: Request        daemon -> client: Reply

Anything else -- a wrong version, an unknown command, a body or data frame over its limit,
a field of the wrong type, lists that do not match the data frames -- raises `ProtocolError`; socket owners drop such input and
count it. Whether a data frame is valid JSON is checked where it matters (at submit).

JSON here is strict (RFC 8259): `dumps` and `loads` refuse NaN, Infinity and -Infinity, which
Python's json module writes and reads by default but no other JSON reader need accept. Bodies
are decoded with `loads`, so no message ever yields such a float.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar, TypeVar

import zmq

VERSION = 1
MAX_BODY = 1 << 20   # bytes of a message's JSON body
MAX_DATA = 64 << 20  # bytes of a data frame, unless the socket owner sets its own limit
MAX_ITEMS = 100_000  # data frames (jobs) in one message
# A job's priority: higher runs first, first in first out within a level.
MIN_PRIORITY, DEFAULT_PRIORITY, MAX_PRIORITY = 0, 5, 9
T = TypeVar("T")


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
    ASSIGN = 7
    SUBMIT = 8
    ACCEPTED = 9
    REJECTED = 10
    WAIT = 11
    JOB_RESULT = 12
    REVOKE = 13
    REVOKED = 14
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
    # task name -> {"timeout", "retry_backoff", "retry_backoff_max": seconds or None,
    # "retryable": bool}
    tasks: dict[str, Any] = field(default_factory=dict)
    devices: dict[str, Any] = field(default_factory=dict)  # model -> cpu, cuda:N or mps


@dataclass(frozen=True)
class Heartbeat:
    command: ClassVar[Command] = Command.HEARTBEAT
    gpu_memory: int | None = None  # bytes torch holds on this worker's GPU (a GPU worker)


@dataclass(frozen=True)
class Job:
    """Jobs for a worker: one data frame (the payload, JSON) per job. They are of one
    priority; a worker runs them before those of a lower one that it holds, and batches
    (tasks that take batches) only jobs that came in one message."""
    command: ClassVar[Command] = Command.JOB
    parallel: ClassVar[tuple[str, ...]] = ("ids", "tasks")
    ids: list[str]
    tasks: list[str]
    priority: int = DEFAULT_PRIORITY
    data: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class Result:
    """Results of jobs a worker ran: one data frame (the result, JSON) per job."""
    command: ClassVar[Command] = Command.RESULT
    parallel: ClassVar[tuple[str, ...]] = ("ids", "oks", "errors", "seconds")
    ids: list[str]
    oks: list[bool]
    # {"type", "message", "traceback"} where not ok
    errors: list[dict[str, Any] | None]
    seconds: list[float]  # how long each ran (a batch: the whole batch's time)
    data: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class Retiring:
    """The worker passed a recycling limit: it takes no more jobs and exits once its
    results are out; the daemon replaces it."""
    command: ClassVar[Command] = Command.RETIRING
    reason: str


@dataclass(frozen=True)
class Assign:
    """To a standby worker (spawned as slot -1, loaded, waiting): you are this slot now."""
    command: ClassVar[Command] = Command.ASSIGN
    slot: int


@dataclass(frozen=True)
class Revoke:
    """To a busy worker: give back these jobs, if you have not started them."""
    command: ClassVar[Command] = Command.REVOKE
    ids: list[str]


@dataclass(frozen=True)
class Revoked:
    """The answer to a Revoke: the jobs given back (never started, never to be); the worker
    has started the others it was asked for, and will report them."""
    command: ClassVar[Command] = Command.REVOKED
    ids: list[str]


@dataclass(frozen=True)
class Submit:
    """New jobs of one task: one data frame (the payload, JSON) per job."""
    command: ClassVar[Command] = Command.SUBMIT
    parallel: ClassVar[tuple[str, ...]] = ("ids",)
    ids: list[str]       # chosen by the client: a resent Submit is not a second job
    task: str
    wait: bool = False   # push each JobResult when the job ends
    priority: int = DEFAULT_PRIORITY  # MIN_PRIORITY .. MAX_PRIORITY: higher runs first
    not_before: float | None = None   # wall clock: the jobs do not start before then
    data: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class Accepted:
    command: ClassVar[Command] = Command.ACCEPTED
    ids: list[str]


@dataclass(frozen=True)
class Rejected:
    command: ClassVar[Command] = Command.REJECTED
    id: str
    error: str


@dataclass(frozen=True)
class Wait:
    command: ClassVar[Command] = Command.WAIT
    ids: list[str]


@dataclass(frozen=True)
class JobResult:
    """Ends of jobs: one data frame (the result, JSON; null unless done) per job."""
    command: ClassVar[Command] = Command.JOB_RESULT
    parallel: ClassVar[tuple[str, ...]] = ("ids", "states", "errors")
    ids: list[str]
    states: list[str]                          # done, failed, dead, or unknown
    # failed: type, message, traceback; dead or unknown: reason
    errors: list[dict[str, Any] | None]
    data: list[bytes] = field(default_factory=list)


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


Message = (Loading | Ready | Heartbeat | Job | Result | Retiring | Assign | Revoke | Revoked
           | Submit | Accepted | Rejected | Wait | JobResult | Request | Reply)
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
# ensure_ascii=False: a body is measured as sent, and decode's limit must hold for encode.
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


# Built once: json.loads(..., parse_constant=...) would build a decoder per call.
_STRICT_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_STRICT_ENCODER = json.JSONEncoder(allow_nan=False)


def loads(data: bytes | str) -> Any:
    """json.loads, refusing NaN, Infinity and -Infinity (ValueError)."""
    if isinstance(data, (bytes, bytearray)):
        # As json.loads does: UTF-8, -16 or -32, told apart by the first bytes.
        data = data.decode(json.detect_encoding(data), "surrogatepass")
    return _STRICT_DECODER.decode(data)


def dumps(value: Any) -> bytes:
    """json.dumps (its default spacing) as bytes; ValueError for a NaN or infinite float,
    TypeError for what JSON cannot carry at all."""
    try:
        return _STRICT_ENCODER.encode(value).encode()
    except ValueError as exc:
        if str(exc).startswith("Out of range float"):  # json's wording names no value
            raise ValueError("NaN and Infinity are not JSON values") from None
        raise


def priority_problem(priority: Any) -> str | None:
    """Why a job's priority is not one, if it is not."""
    if isinstance(priority, int) and not isinstance(priority, bool) and \
            MIN_PRIORITY <= priority <= MAX_PRIORITY:
        return None
    return f"priority must be an integer {MIN_PRIORITY}-{MAX_PRIORITY}, got {priority!r}"


def payload_limit(configured: int) -> int:
    """The largest payload accepted: `queue.max_payload_bytes`, but never more than a data
    frame may carry, or a worker could not read the Job that carries it."""
    return min(configured, MAX_DATA)


def encode(message: Message, max_data: int = MAX_DATA) -> list[bytes]:
    cls = type(message)
    body = _DUMPS({k: getattr(message, k) for k in _HINTS[cls]}).encode()
    if len(body) > MAX_BODY:
        raise ProtocolError(f"{cls.__name__} body is {len(body)} bytes (limit {MAX_BODY})")
    frames = [bytes((VERSION, message.command)), body]
    parallel = getattr(cls, "parallel", None)
    if parallel is not None:
        data: list[bytes] = message.data  # type: ignore[union-attr]
        _check_items(cls, {k: getattr(message, k) for k in parallel}, data, max_data)
        frames.extend(data)
    return frames


def _check_items(cls: type, lists: dict[str, list[Any]], data: list[bytes],
                 max_data: int) -> None:
    if len(data) > MAX_ITEMS:
        raise ProtocolError(f"{cls.__name__} has {len(data)} items (limit {MAX_ITEMS})")
    for name, values in lists.items():
        if len(values) != len(data):
            raise ProtocolError(f"{cls.__name__}.{name} has {len(values)} items for "
                                f"{len(data)} data frames")
    for item in data:
        if len(item) > max_data:
            raise ProtocolError(f"{cls.__name__} data is {len(item)} bytes (limit {max_data})")


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
    if len(frames) < 2:
        raise ProtocolError(f"expected at least 2 frames, got {len(frames)}")
    header, body = frames[0], frames[1]
    if len(header) != 2:
        raise ProtocolError(f"header is {len(header)} bytes, expected 2")
    if header[0] != VERSION:
        raise ProtocolError(f"protocol version {header[0]}, expected {VERSION}")
    cls = _BY_COMMAND.get(header[1])
    if cls is None:
        raise ProtocolError(f"unknown command {header[1]}")
    parallel = getattr(cls, "parallel", None)
    if parallel is None and len(frames) != 2:
        raise ProtocolError(f"{cls.__name__}: expected 2 frames, got {len(frames)}")
    if len(body) > MAX_BODY:
        raise ProtocolError(f"body is {len(body)} bytes (limit {MAX_BODY})")
    try:
        data = loads(body)
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
    if parallel is not None:
        data["data"] = frames[2:]
        _check_items(cls, {k: data[k] for k in parallel}, data["data"], max_data)
    return typing.cast(Message, cls(**data))


def encode_many(build: Callable[[list[T]], Message], items: list[T]) -> Iterator[list[bytes]]:
    """Encode `build(items)` as one message, or as several when the body would be too big."""
    if not items:
        return
    try:
        frames = encode(build(items))
    except ProtocolError:
        if len(items) == 1:
            raise
        half = len(items) // 2
        yield from encode_many(build, items[:half])
        yield from encode_many(build, items[half:])
        return
    yield frames


def waiting(sock: zmq.Socket) -> Iterator[list[bytes]]:
    """Every multipart message already waiting on the socket, without blocking."""
    while True:
        try:
            yield sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
