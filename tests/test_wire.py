"""The wire protocol: every message round-trips, and anything else is a ProtocolError."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest

from supervisor import wire
from supervisor.wire import (
    MAX_BODY,
    MAX_DATA,
    VERSION,
    Accepted,
    Command,
    Heartbeat,
    Job,
    JobResult,
    Loading,
    ProtocolError,
    Ready,
    Rejected,
    Reply,
    Request,
    Result,
    Retiring,
    Submit,
    Wait,
    decode,
    encode,
)

DATA_COMMANDS = {Command.JOB, Command.RESULT, Command.SUBMIT, Command.JOB_RESULT}
TRACEBACK = {"type": "ValueError", "message": "bad page", "traceback": "Traceback ...\n"}

MESSAGES: list[wire.Message] = [
    Loading(slot=0, pid=4242),
    Ready(),
    Ready(tasks={"ocr.run": {"timeout": 30, "retryable": True},
                 "embed.batch": {"timeout": None, "retryable": False}}),
    Heartbeat(),
    Job(id="j-1", task="ocr.run"),
    Job(id="j-2", task="ocr.run", data=b'{"pages": [1, 2, 3], "lang": "de"}'),
    Job(id="", task="", data=b""),
    Result(id="j-1", ok=True),
    Result(id="j-1", ok=True, data=b'{"text": "\xc3\xa9t\xc3\xa9"}'),
    Result(id="j-2", ok=False, error=TRACEBACK),
    Retiring(reason="500 jobs done (max_jobs_per_worker 500)"),
    Submit(id="c-1", task="ocr.run"),
    Submit(id="c-2", task="embed.batch", wait=True, data=b"[1,2,3]"),
    Submit(id="c-3", task="x", wait=False, data=b"\x00\xff not json at all \r\n"),
    Accepted(id="c-1"),
    Rejected(id="c-1", error="unknown task 'frob'"),
    Wait(id="c-2"),
    JobResult(id="c-2", state="done", data=b'{"vectors": [[0.1, 0.2]]}'),
    JobResult(id="c-3", state="failed", error=TRACEBACK),
    JobResult(id="c-4", state="dead", error={"reason": "worker killed 3 times"}),
    JobResult(id="c-5", state="unknown"),
    Request(name="status"),
    Request(name="stop", args={"timeout": 2.5, "nested": {"a": [1, None, True, "x"]}}),
    Reply(ok=True, result={"workers": [{"slot": 0, "state": "READY"}]}),
    Reply(ok=False, error="no such command: frob"),
    Reply(ok=True, result=None, error=None),
    Request(name="ünïcödé ✓", args={"path": "/tmp/é"}),
]
CLASSES: dict[int, type] = {type(m).command: type(m) for m in MESSAGES}


# -- round trip ----------------------------------------------------------------------------

@pytest.mark.parametrize("message", MESSAGES, ids=repr)
def test_round_trip(message: wire.Message) -> None:
    frames = encode(message)
    carries_data = type(message).command in DATA_COMMANDS
    assert len(frames) == (3 if carries_data else 2)
    assert all(isinstance(f, bytes) for f in frames)
    assert frames[0] == bytes((VERSION, message.command))
    body = json.loads(frames[1])
    assert isinstance(body, dict)
    assert "data" not in body  # the data frame never travels in the body
    if carries_data:
        assert frames[2] == message.data  # type: ignore[union-attr]
    decoded = decode(frames)
    assert decoded == message
    assert type(decoded) is type(message)
    assert encode(decoded) == frames


def test_every_command_has_a_message() -> None:
    assert {type(m).command for m in MESSAGES} == set(Command)


def test_carries_data_is_set_on_exactly_the_data_messages() -> None:
    for cls in CLASSES.values():
        assert getattr(cls, "carries_data", False) is (cls.command in DATA_COMMANDS), cls
        # carries_data is a class attribute, not a field that could travel in the body
        assert "carries_data" not in {f.name for f in dataclasses.fields(cls)}
        assert "command" not in {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("message", [Job(id="1", task="t"), Result(id="1", ok=True),
                                     Submit(id="1", task="t"), JobResult(id="1", state="done")],
                         ids=repr)
def test_data_defaults_to_json_null(message: wire.Message) -> None:
    assert message.data == b"null"  # type: ignore[union-attr]
    assert encode(message)[2] == b"null"


@pytest.mark.parametrize("data", [b"", b"null", b"\x00" * 7, bytes(range(256)),
                                  b"[" * 100_000, "é ✓".encode()], ids=repr)
def test_data_frame_travels_verbatim(data: bytes) -> None:
    """The data frame is not parsed: whatever bytes they are come back unchanged."""
    message = decode([bytes((VERSION, Command.RESULT)), b'{"id":"r","ok":true}', data])
    assert message == Result(id="r", ok=True, data=data)
    assert encode(message)[2] == data


def test_optional_fields_take_their_defaults() -> None:
    assert decode(frames(Command.SUBMIT, {"id": "a", "task": "t"}, b"1")) == \
        Submit(id="a", task="t", wait=False, data=b"1")
    assert decode(frames(Command.RESULT, {"id": "a", "ok": False}, b"")) == \
        Result(id="a", ok=False, error=None, data=b"")
    assert decode(frames(Command.READY, {})) == Ready(tasks={})
    assert decode(frames(Command.REQUEST, {"name": "n"})) == Request(name="n", args={})


def test_explicit_null_for_optional_fields() -> None:
    assert decode(frames(Command.JOB_RESULT, {"id": "a", "state": "done", "error": None},
                         b"{}")) == JobResult(id="a", state="done", data=b"{}")
    assert decode(frames(Command.REPLY, {"ok": True, "result": None, "error": None})) == \
        Reply(ok=True)


# -- helpers -------------------------------------------------------------------------------

def frames(command: int, body: Any, *data: bytes) -> list[bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return [bytes((VERSION, command)), raw, *data]


def protocol_error(data: list[bytes], **kwargs: Any) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(data, **kwargs)
    return str(info.value)


# -- frame count ---------------------------------------------------------------------------

HB = bytes((VERSION, Command.HEARTBEAT))
JOB = bytes((VERSION, Command.JOB))
JOB_BODY = b'{"id":"1","task":"t"}'


@pytest.mark.parametrize("data", [
    [],
    [HB],
    [JOB],
    [HB, b"{}", b"", b""],
    [JOB, JOB_BODY, b"null", b""],
    [b"", JOB, JOB_BODY, b"null"],  # an unstripped REQ delimiter in front of a 3-frame message
    [b"x"] * 10,
], ids=["0", "1-heartbeat", "1-job", "4-heartbeat", "4-job", "delimiter-job", "10"])
def test_frame_count_neither_two_nor_three(data: list[bytes]) -> None:
    assert protocol_error(data) == f"expected 2 or 3 frames, got {len(data)}"


@pytest.mark.parametrize(("command", "body"), [
    (Command.LOADING, {"slot": 1, "pid": 2}),
    (Command.READY, {}),
    (Command.HEARTBEAT, {}),
    (Command.ACCEPTED, {"id": "a"}),
    (Command.REJECTED, {"id": "a", "error": "e"}),
    (Command.WAIT, {"id": "a"}),
    (Command.REQUEST, {"name": "status"}),
    (Command.REPLY, {"ok": True}),
])
@pytest.mark.parametrize("extra", [b"", b"null"])
def test_three_frames_for_a_two_frame_message(command: Command, body: dict[str, Any],
                                              extra: bytes) -> None:
    assert decode(frames(command, body)).command == command  # valid as two frames
    name = CLASSES[command].__name__
    assert protocol_error(frames(command, body, extra)) == \
        f"{name}: expected 2 frames, got 3"


@pytest.mark.parametrize(("command", "body"), [
    (Command.JOB, {"id": "1", "task": "t"}),
    (Command.RESULT, {"id": "1", "ok": True}),
    (Command.SUBMIT, {"id": "1", "task": "t"}),
    (Command.JOB_RESULT, {"id": "1", "state": "done"}),
])
def test_two_frames_for_a_three_frame_message(command: Command, body: dict[str, Any]) -> None:
    assert decode(frames(command, body, b"null")).command == command  # valid as three frames
    name = CLASSES[command].__name__
    assert protocol_error(frames(command, body)) == f"{name}: expected 3 frames, got 2"


def test_unstripped_delimiter_before_a_two_frame_message() -> None:
    assert protocol_error([b"", HB, b"{}"]) == "header is 0 bytes, expected 2"


# -- header --------------------------------------------------------------------------------

@pytest.mark.parametrize("header", [b"", bytes((VERSION,)), bytes((VERSION, 3, 0))])
def test_wrong_header_length(header: bytes) -> None:
    assert protocol_error([header, b"{}"]) == f"header is {len(header)} bytes, expected 2"
    assert "header is" in protocol_error([header, JOB_BODY, b"null"])


@pytest.mark.parametrize("version", [0, 2, 255])
def test_wrong_version(version: int) -> None:
    expected = f"protocol version {version}, expected {VERSION}"
    assert protocol_error([bytes((version, Command.HEARTBEAT)), b"{}"]) == expected
    assert protocol_error([bytes((version, Command.JOB)), JOB_BODY, b"null"]) == expected


UNKNOWN_COMMANDS = [c for c in range(256) if c not in set(Command)]


@pytest.mark.parametrize("command", [0, 7, 13, 14, 15, 18, 255])
def test_unknown_command(command: int) -> None:
    assert command not in set(Command)
    assert protocol_error(frames(command, {})) == f"unknown command {command}"
    assert protocol_error(frames(command, {}, b"null")) == f"unknown command {command}"


def test_every_byte_that_is_not_a_command_is_unknown() -> None:
    assert len(UNKNOWN_COMMANDS) == 256 - len(Command)
    for command in UNKNOWN_COMMANDS:
        assert protocol_error(frames(command, {})) == f"unknown command {command}"


# -- body ----------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"\xff\xfe\x00garbage",
                                  b'{"slot": 1,}'])
def test_body_not_json(body: bytes) -> None:
    assert protocol_error(frames(Command.LOADING, body)).startswith("body is not JSON")
    assert protocol_error(frames(Command.JOB, body, b"null")).startswith("body is not JSON")


@pytest.mark.parametrize("body", [[], [1, 2], "text", 3, None, True])
def test_body_not_an_object(body: Any) -> None:
    assert protocol_error(frames(Command.HEARTBEAT, body)) == "body is not a JSON object"
    assert protocol_error(frames(Command.SUBMIT, body, b"{}")) == "body is not a JSON object"


@pytest.mark.parametrize(("command", "body", "data", "field"), [
    (Command.HEARTBEAT, {"x": 1}, (), "x"),
    (Command.LOADING, {"slot": 1, "pid": 2, "command": 1}, (), "command"),
    (Command.READY, {"tasks": {}, "Tasks": {}}, (), "Tasks"),
    (Command.REPLY, {"ok": True, "errors": "x"}, (), "errors"),
    (Command.ACCEPTED, {"id": "a", "state": "done"}, (), "state"),
    (Command.WAIT, {"id": "a", "wait": True}, (), "wait"),
    (Command.REJECTED, {"id": "a", "error": "e", "": 1}, (), ""),
    # the data frame cannot be smuggled into the body, nor carries_data be set from outside
    (Command.JOB, {"id": "1", "task": "t", "data": "x"}, (b"null",), "data"),
    (Command.RESULT, {"id": "1", "ok": True, "data": None}, (b"null",), "data"),
    (Command.SUBMIT, {"id": "1", "task": "t", "carries_data": False}, (b"null",),
     "carries_data"),
    (Command.JOB_RESULT, {"id": "1", "state": "done", "result": {}}, (b"null",), "result"),
])
def test_unknown_field(command: Command, body: dict[str, Any], data: tuple[bytes, ...],
                       field: str) -> None:
    name = CLASSES[command].__name__
    assert protocol_error(frames(command, body, *data)) == f"{name}: unknown field {field!r}"


WRONG_TYPES: list[tuple[Command, dict[str, Any], str]] = [
    (Command.LOADING, {"slot": "1", "pid": 2}, "Loading.slot"),
    (Command.LOADING, {"slot": True, "pid": 2}, "Loading.slot"),
    (Command.LOADING, {"slot": 1, "pid": 2.5}, "Loading.pid"),
    (Command.LOADING, {"slot": 1, "pid": None}, "Loading.pid"),
    (Command.READY, {"tasks": "a"}, "Ready.tasks"),
    (Command.READY, {"tasks": ["a", "b"]}, "Ready.tasks"),  # the old list form
    (Command.READY, {"tasks": None}, "Ready.tasks"),
    (Command.JOB, {"id": 1, "task": "t"}, "Job.id"),
    (Command.JOB, {"id": "1", "task": None}, "Job.task"),
    (Command.JOB, {"id": "1", "task": ["t"]}, "Job.task"),
    (Command.RESULT, {"id": "1", "ok": 1}, "Result.ok"),
    (Command.RESULT, {"id": "1", "ok": None}, "Result.ok"),
    (Command.RESULT, {"id": "1", "ok": False, "error": "boom"}, "Result.error"),
    (Command.RESULT, {"id": "1", "ok": False, "error": ["boom"]}, "Result.error"),
    (Command.SUBMIT, {"id": "1", "task": "t", "wait": 1}, "Submit.wait"),
    (Command.SUBMIT, {"id": "1", "task": "t", "wait": "yes"}, "Submit.wait"),
    (Command.SUBMIT, {"id": "1", "task": "t", "wait": None}, "Submit.wait"),
    (Command.SUBMIT, {"id": {}, "task": "t"}, "Submit.id"),
    (Command.ACCEPTED, {"id": 7}, "Accepted.id"),
    (Command.REJECTED, {"id": "1", "error": None}, "Rejected.error"),
    (Command.REJECTED, {"id": "1", "error": {"message": "x"}}, "Rejected.error"),
    (Command.WAIT, {"id": []}, "Wait.id"),
    (Command.JOB_RESULT, {"id": "1", "state": 0}, "JobResult.state"),
    (Command.JOB_RESULT, {"id": "1", "state": "failed", "error": "x"}, "JobResult.error"),
    (Command.JOB_RESULT, {"id": "1", "state": "failed", "error": 3.5}, "JobResult.error"),
    (Command.REQUEST, {"name": 1}, "Request.name"),
    (Command.REQUEST, {"name": "x", "args": []}, "Request.args"),
    (Command.REQUEST, {"name": "x", "args": None}, "Request.args"),
    (Command.REPLY, {"ok": 1}, "Reply.ok"),
    (Command.REPLY, {"ok": "true"}, "Reply.ok"),
    (Command.REPLY, {"ok": True, "result": [1]}, "Reply.result"),
    (Command.REPLY, {"ok": False, "error": 5}, "Reply.error"),
]


@pytest.mark.parametrize(("command", "body", "where"), WRONG_TYPES,
                         ids=[f"{w}={b}" for _, b, w in WRONG_TYPES])
def test_wrong_field_type(command: Command, body: dict[str, Any], where: str) -> None:
    data = (b"null",) if command in DATA_COMMANDS else ()
    message = protocol_error(frames(command, body, *data))
    wrong = type(body[where.split(".")[1]]).__name__
    assert message == f"{where}: wrong type {wrong}"


@pytest.mark.parametrize(("command", "body", "missing"), [
    (Command.LOADING, {"slot": 1}, "pid"),
    (Command.LOADING, {}, "pid, slot"),
    (Command.JOB, {"id": "1"}, "task"),
    (Command.JOB, {}, "id, task"),
    (Command.RESULT, {"id": "1", "error": None}, "ok"),
    (Command.RESULT, {}, "id, ok"),
    (Command.SUBMIT, {"task": "t", "wait": True}, "id"),
    (Command.ACCEPTED, {}, "id"),
    (Command.REJECTED, {"id": "1"}, "error"),
    (Command.REJECTED, {}, "error, id"),
    (Command.WAIT, {}, "id"),
    (Command.JOB_RESULT, {"id": "1", "error": {}}, "state"),
    (Command.REQUEST, {"args": {}}, "name"),
    (Command.REPLY, {"result": {}}, "ok"),
])
def test_missing_required_field(command: Command, body: dict[str, Any], missing: str) -> None:
    data = (b"null",) if command in DATA_COMMANDS else ()
    name = CLASSES[command].__name__
    assert protocol_error(frames(command, body, *data)) == \
        f"{name}: missing field(s) {missing}"


def _request_body(size: int) -> bytes:
    """A valid Request body of exactly `size` bytes."""
    head, tail = b'{"name":"', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_body_at_max_body_is_accepted() -> None:
    message = decode(frames(Command.REQUEST, _request_body(MAX_BODY)))
    assert isinstance(message, Request)
    assert len(message.name) == MAX_BODY - len(b'{"name":""}')


def test_body_over_max_body_is_refused() -> None:
    message = protocol_error(frames(Command.REQUEST, _request_body(MAX_BODY + 1)))
    assert message == f"body is {MAX_BODY + 1} bytes (limit {MAX_BODY})"


def test_body_over_max_body_is_refused_for_a_data_message() -> None:
    body = b'{"id":"1","task":"' + b"t" * MAX_BODY + b'"}'
    message = protocol_error([JOB, body, b"null"])
    assert message == f"body is {len(body)} bytes (limit {MAX_BODY})"


def test_encode_refuses_a_message_over_max_body() -> None:
    with pytest.raises(ProtocolError, match="limit"):
        encode(Request(name="x" * MAX_BODY))
    with pytest.raises(ProtocolError, match=r"^Job body is \d+ bytes \(limit"):
        encode(Job(id="x" * MAX_BODY, task="t"))


def test_a_large_data_frame_does_not_count_against_max_body() -> None:
    message = Job(id="1", task="t", data=b"x" * (MAX_BODY * 2))
    assert decode(encode(message)) == message


def test_protocol_error_is_a_value_error() -> None:
    assert issubclass(ProtocolError, ValueError)


@pytest.mark.parametrize("command", [Command.REQUEST, Command.SUBMIT])
def test_deeply_nested_body_is_a_protocol_error(command: Command) -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    if command == Command.REQUEST:
        body, data = b'{"name":"x","args":{"a":' + nested + b"}}", ()
    else:
        body, data = b'{"id":"x","task":"t","wait":' + nested + b"}", (b"null",)
    assert len(body) < MAX_BODY
    assert protocol_error(frames(command, body, *data)).startswith("body is not JSON")


def test_nesting_that_decodes_also_encodes() -> None:
    """The deepest body decode accepts can be encoded again (no RecursionError on the way
    back, e.g. when the daemon forwards or answers it)."""
    def body(depth: int) -> bytes:
        return b'{"name":"x","args":{"a":' + b"[" * depth + b"]" * depth + b"}}"

    low, high = 1, 100_000
    while low < high:
        mid = (low + high + 1) // 2
        try:
            decode(frames(Command.REQUEST, body(mid)))
            low = mid
        except ProtocolError:
            high = mid - 1
    message = decode(frames(Command.REQUEST, body(low)))
    assert decode(encode(message)) == message


# -- data frame limit ----------------------------------------------------------------------

DATA_MESSAGES = [m for m in MESSAGES if type(m).command in DATA_COMMANDS]


@pytest.mark.parametrize("cls", [Job, Result, Submit, JobResult])
def test_data_at_max_data_is_accepted_and_over_is_refused(cls: type) -> None:
    message = next(m for m in DATA_MESSAGES if type(m) is cls)
    limit = 100
    at = dataclasses.replace(message, data=b"d" * limit)
    over = dataclasses.replace(message, data=b"d" * (limit + 1))
    expected = f"{cls.__name__} data is {limit + 1} bytes (limit {limit})"

    # encode
    assert encode(at, max_data=limit)[2] == at.data
    with pytest.raises(ProtocolError) as info:
        encode(over, max_data=limit)
    assert str(info.value) == expected

    # decode
    assert decode(encode(at), max_data=limit) == at
    over_frames = encode(over)  # the default limit is far higher
    assert decode(over_frames) == over
    assert protocol_error(over_frames, max_data=limit) == expected


def test_max_data_zero_allows_only_an_empty_data_frame() -> None:
    message = Submit(id="1", task="t", data=b"")
    assert decode(encode(message, max_data=0), max_data=0) == message
    with pytest.raises(ProtocolError, match=r"^Submit data is 4 bytes \(limit 0\)$"):
        encode(Submit(id="1", task="t"), max_data=0)
    assert protocol_error(frames(Command.SUBMIT, {"id": "1", "task": "t"}, b"null"),
                          max_data=0) == "Submit data is 4 bytes (limit 0)"


def test_default_max_data() -> None:
    assert MAX_DATA == 64 << 20
    at = Result(id="1", ok=True, data=b"r" * MAX_DATA)
    assert decode(encode(at)).data == at.data  # type: ignore[union-attr]
    over = Result(id="1", ok=True, data=b"r" * (MAX_DATA + 1))
    expected = f"Result data is {MAX_DATA + 1} bytes (limit {MAX_DATA})"
    with pytest.raises(ProtocolError) as info:
        encode(over)
    assert str(info.value) == expected
    assert protocol_error([bytes((VERSION, Command.RESULT)), b'{"id":"1","ok":true}',
                           over.data]) == expected
    # a socket owner may raise its own limit above the default
    assert decode(encode(over, max_data=MAX_DATA + 1), max_data=MAX_DATA + 1) == over


def test_max_data_does_not_apply_to_two_frame_messages() -> None:
    message = Request(name="x" * 100)
    assert decode(encode(message, max_data=0), max_data=0) == message


def test_data_limit_is_checked_before_the_body_is_parsed() -> None:
    """An oversized data frame is refused without spending time on its body."""
    message = protocol_error([JOB, b"not json", b"x" * 11], max_data=10)
    assert message == "Job data is 11 bytes (limit 10)"


# -- fuzzing -------------------------------------------------------------------------------

FIELD_NAMES = ["slot", "pid", "tasks", "name", "args", "ok", "result", "error", "command",
               "id", "task", "wait", "state", "data", "timeout", "retryable", ""]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 2 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(-2**40, 2**40)
    if kind == 3:
        return rng.uniform(-1e6, 1e6)
    if kind in (4, 5):
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(6)))
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(FIELD_NAMES): _random_value(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def _random_bytes(rng: random.Random, most: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(most + 1)))


def _tail(rng: random.Random, command: int) -> list[bytes]:
    """The frames after the body: usually the right number for the command, sometimes not."""
    right = 1 if command in DATA_COMMANDS else 0
    count = right if rng.random() < 0.8 else rng.choice([0, 1, 2])
    return [_random_bytes(rng, 40) for _ in range(count)]


def _random_message(rng: random.Random) -> list[bytes]:
    """Random frames, biased so that every stage of `decode` gets exercised."""
    mode = rng.randrange(5)
    if mode == 0:  # anything at all
        return [_random_bytes(rng, 40) for _ in range(rng.randrange(6))]
    command = rng.choice([*map(int, Command), rng.randrange(256)])
    header = bytes((VERSION, command))
    if mode == 1:  # a plausible header, a random body
        return [header, _random_bytes(rng, 60), *_tail(rng, command)]
    if mode == 2:  # a JSON object with field names of the protocol and values of any type
        body = {rng.choice(FIELD_NAMES): _random_value(rng) for _ in range(rng.randrange(4))}
        return [header, json.dumps(body).encode(), *_tail(rng, command)]
    if mode == 3:  # a valid message under another (or the same) command
        valid = encode(rng.choice(MESSAGES))
        return [header, *valid[1:]]
    # A valid message with a few bytes of its body flipped, cut or added.
    valid = encode(rng.choice(MESSAGES))
    raw = bytearray(valid[1])
    for _ in range(rng.randrange(1, 4)):
        pos = rng.randrange(len(raw) + 1)
        op = rng.randrange(3)
        if op == 0 and pos < len(raw):
            raw[pos] = rng.randrange(256)
        elif op == 1:
            del raw[pos:pos + rng.randrange(1, 4)]
        else:
            raw[pos:pos] = _random_bytes(rng, 3)
    return [valid[0], bytes(raw), *valid[2:]]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_random_frames_raise_only_protocol_error(seed: int) -> None:
    rng = random.Random(seed)
    refused = accepted = accepted_with_data = 0
    for _ in range(1000):
        data = _random_message(rng)
        max_data = rng.choice([MAX_DATA, 20])
        try:
            message = decode(data, max_data=max_data)
        except ProtocolError:
            refused += 1
            continue
        # Whatever is accepted is a proper message that survives a round trip.
        accepted += 1
        assert dataclasses.is_dataclass(message)
        assert type(message) in CLASSES.values()
        frames_again = encode(message, max_data=max_data)
        assert frames_again[0] == data[0]
        assert len(frames_again) == len(data)
        if len(data) == 3:
            accepted_with_data += 1
            assert frames_again[2] == data[2]
        assert encode(decode(frames_again, max_data=max_data)) == frames_again
    assert refused > 0 and accepted > 0 and accepted_with_data > 0  # all are exercised
    assert refused + accepted == 1000
