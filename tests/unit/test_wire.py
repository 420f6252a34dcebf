"""The wire protocol: every message round-trips, and anything else is a ProtocolError."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest

from supervisor.proto import wire
from supervisor.proto.wire import (MAX_BODY, MAX_DATA, MAX_ITEMS, VERSION, Accepted, Assign,
                                   Command, Heartbeat, Job, JobResult, Loading, ProtocolError,
                                   Ready, Rejected, Reply, Request, Result, Retiring, Revoke,
                                   Revoked, Submit, Wait, decode, encode)

# The messages about jobs: one data frame per job, and these lists have one item per frame.
PARALLEL: dict[type, tuple[str, ...]] = {
    Job: ("ids", "tasks"),
    Result: ("ids", "oks", "errors", "seconds"),
    Submit: ("ids",),
    JobResult: ("ids", "states", "errors"),
}
DATA_COMMANDS = {cls.command for cls in PARALLEL}
TRACEBACK = {"type": "ValueError", "message": "bad page", "traceback": "Traceback ...\n"}

MESSAGES: list[wire.Message] = [
    Loading(slot=0, pid=4242),
    Ready(),
    Ready(tasks={"ocr.run": {"timeout": 30, "retryable": True},
                 "embed.batch": {"timeout": None, "retryable": False}}),
    Heartbeat(),
    # zero, one and many jobs
    Job(ids=[], tasks=[]),
    Job(ids=["j-1"], tasks=["ocr.run"], data=[b'{"pages": [1, 2, 3], "lang": "de"}']),
    Job(ids=["j-1", "j-2", "j-3"], tasks=["ocr.run", "embed.batch", "ocr.run"],
        data=[b'{"a": 1}', b"", b"null"]),
    Job(ids=[""], tasks=[""], data=[b""]),
    Result(ids=[], oks=[], errors=[], seconds=[]),
    Result(ids=["j-1"], oks=[True], errors=[None], seconds=[0.25],
           data=[b'{"text": "\xc3\xa9t\xc3\xa9"}']),
    Result(ids=["j-1", "j-2", "j-3"], oks=[True, False, True],
           errors=[None, TRACEBACK, None], seconds=[0, 1.5, 1e-6],
           data=[b"[1]", b"null", b'"x"']),
    Retiring(reason="500 jobs done (max_jobs_per_worker 500)"),
    Retiring(reason=""),
    Assign(slot=1),
    Revoke(ids=["a", "b"]),
    Revoke(ids=[]),
    Revoked(ids=["a"]),
    Revoked(ids=[]),
    Submit(ids=[], task="ocr.run"),
    Submit(ids=["c-1"], task="ocr.run", data=[b"{}"]),
    Submit(ids=["c-2", "c-3", "c-4"], task="embed.batch", wait=True,
           data=[b"[1,2,3]", b"\x00\xff not json at all \r\n", b""]),
    Accepted(ids=[]),
    Accepted(ids=["c-1"]),
    Accepted(ids=["c-1", "c-2", "c-3", ""]),
    Rejected(id="c-1", error="unknown task 'frob'"),
    Wait(ids=[]),
    Wait(ids=["c-2"]),
    Wait(ids=["c-2", "c-3", "ünï ✓"]),
    JobResult(ids=[], states=[], errors=[]),
    JobResult(ids=["c-2"], states=["done"], errors=[None], data=[b'{"vectors": [[0.1, 0.2]]}']),
    JobResult(ids=["c-2", "c-3", "c-4", "c-5"], states=["done", "failed", "dead", "unknown"],
              errors=[None, TRACEBACK, {"reason": "worker killed 3 times"},
                      {"reason": "no such job"}],
              data=[b'{"v": 1}', b"null", b"null", b"null"]),
    Request(name="status"),
    Request(name="stop", args={"timeout": 2.5, "nested": {"a": [1, None, True, "x"]}}),
    Reply(ok=True, result={"workers": [{"slot": 0, "state": "READY"}]}),
    Reply(ok=False, error="no such command: frob"),
    Reply(ok=True, result=None, error=None),
    Request(name="ünïcödé ✓", args={"path": "/tmp/é"}),
]
CLASSES: dict[int, type] = {type(m).command: type(m) for m in MESSAGES}

# A valid item for each parallel list, to build bodies of any length.
ITEM: dict[str, Any] = {"ids": "i", "tasks": "t", "oks": True, "errors": None,
                        "states": "done", "seconds": 0.5}
EXTRA: dict[type, dict[str, Any]] = {Submit: {"task": "t"}}


def list_body(cls: type, n: int, **lengths: int) -> dict[str, Any]:
    """A body of `cls` whose parallel lists have `n` items, except those given."""
    body = {name: [ITEM[name]] * lengths.get(name, n) for name in PARALLEL[cls]}
    return {**body, **EXTRA.get(cls, {})}


def list_message(cls: type, n: int, **lengths: int) -> Any:
    """A message of `cls` with `n` data frames; its lists have `n` items, except those given."""
    return cls(**list_body(cls, n, **lengths), data=[b"%d" % i for i in range(n)])


# -- round trip ----------------------------------------------------------------------------

@pytest.mark.parametrize("message", MESSAGES, ids=repr)
def test_round_trip(message: wire.Message) -> None:
    frames = encode(message)
    data: list[bytes] = getattr(message, "data", [])
    assert len(frames) == 2 + len(data)
    assert all(isinstance(f, bytes) for f in frames)
    assert frames[0] == bytes((VERSION, message.command))
    body = json.loads(frames[1])
    assert isinstance(body, dict)
    assert "data" not in body  # data frames never travel in the body
    assert frames[2:] == data
    decoded = decode(frames)
    assert decoded == message
    assert type(decoded) is type(message)
    assert encode(decoded) == frames


def test_every_command_has_a_message() -> None:
    assert {type(m).command for m in MESSAGES} == set(Command)
    assert Command.RETIRING == 6


@pytest.mark.parametrize("cls", list(PARALLEL))
def test_zero_one_and_many_jobs_are_covered(cls: type) -> None:
    counts = {len(m.data) for m in MESSAGES if type(m) is cls}  # type: ignore[union-attr]
    assert {0, 1} < counts and max(counts) >= 3


def test_parallel_is_set_on_exactly_the_list_messages() -> None:
    for cls in CLASSES.values():
        names = {f.name for f in dataclasses.fields(cls)}
        assert getattr(cls, "parallel", None) == PARALLEL.get(cls), cls
        assert not hasattr(cls, "carries_data"), cls  # replaced by `parallel`
        # class attributes, not fields that could travel in the body
        assert not {"parallel", "command", "carries_data"} & names, cls
        assert ("data" in names) is (cls in PARALLEL), cls
        for name in getattr(cls, "parallel", ()):
            assert name in names, (cls, name)


@pytest.mark.parametrize("message", [Job(ids=[], tasks=[]),
                                     Result(ids=[], oks=[], errors=[], seconds=[]),
                                     Submit(ids=[], task="t"),
                                     JobResult(ids=[], states=[], errors=[])], ids=repr)
def test_data_defaults_to_no_frames(message: Any) -> None:
    assert message.data == []
    assert encode(message) == [bytes((VERSION, message.command)), encode(message)[1]]
    fields = {k: getattr(message, k) for k in PARALLEL[type(message)]}
    again = type(message)(**fields, **EXTRA.get(type(message), {}))
    assert again.data == [] and again.data is not message.data  # a new list each time


@pytest.mark.parametrize("data", [b"", b"null", b"\x00" * 7, bytes(range(256)),
                                  b"[" * 100_000, "é ✓".encode()], ids=repr)
def test_data_frame_travels_verbatim(data: bytes) -> None:
    """Data frames are not parsed: whatever bytes they are come back unchanged."""
    header = bytes((VERSION, Command.RESULT))
    message = decode([header, b'{"ids":["r"],"oks":[true],"errors":[null],"seconds":[0.5]}',
                      data])
    assert message == Result(ids=["r"], oks=[True], errors=[None], seconds=[0.5], data=[data])
    assert encode(message)[2:] == [data]


def test_many_data_frames_keep_their_order() -> None:
    data = [b"", b"null", b"\x00" * 7, bytes(range(256)), b"[" * 1000, "é ✓".encode()] * 50
    n = len(data)
    ids = [f"j-{i}" for i in range(n)]
    body = {"ids": ids, "states": ["done"] * n, "errors": [None] * n}
    message = decode(frames(Command.JOB_RESULT, body, *data))
    assert isinstance(message, JobResult)
    assert message.ids == ids and message.data == data
    assert encode(message)[2:] == data


def test_optional_fields_take_their_defaults() -> None:
    assert decode(frames(Command.SUBMIT, {"ids": ["a"], "task": "t"}, b"1")) == \
        Submit(ids=["a"], task="t", wait=False, data=[b"1"])
    assert decode(frames(Command.SUBMIT, {"ids": [], "task": "t"})) == \
        Submit(ids=[], task="t", wait=False, data=[])
    assert decode(frames(Command.READY, {})) == Ready(tasks={})
    assert decode(frames(Command.REQUEST, {"name": "n"})) == Request(name="n", args={})


def test_explicit_null_for_optional_fields() -> None:
    assert decode(frames(Command.JOB_RESULT,
                         {"ids": ["a", "b"], "states": ["done", "failed"],
                          "errors": [None, None]}, b"{}", b"null")) == \
        JobResult(ids=["a", "b"], states=["done", "failed"], errors=[None, None],
                  data=[b"{}", b"null"])
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


def encode_error(message: Any, **kwargs: Any) -> str:
    with pytest.raises(ProtocolError) as info:
        encode(message, **kwargs)
    return str(info.value)


# -- frame count ---------------------------------------------------------------------------

HB = bytes((VERSION, Command.HEARTBEAT))
JOB = bytes((VERSION, Command.JOB))
JOB_BODY = b'{"ids":["1"],"tasks":["t"]}'


@pytest.mark.parametrize("data", [[], [HB], [JOB], [b""], [b"x" * 100]],
                         ids=["0", "1-heartbeat", "1-job", "1-empty", "1-long"])
def test_fewer_than_two_frames(data: list[bytes]) -> None:
    assert protocol_error(data) == f"expected at least 2 frames, got {len(data)}"


TWO_FRAME_BODIES: list[tuple[Command, dict[str, Any]]] = [
    (Command.LOADING, {"slot": 1, "pid": 2}),
    (Command.READY, {}),
    (Command.HEARTBEAT, {}),
    (Command.RETIRING, {"reason": "max_memory_mb"}),
    (Command.ACCEPTED, {"ids": ["a"]}),
    (Command.ACCEPTED, {"ids": []}),
    (Command.REJECTED, {"id": "a", "error": "e"}),
    (Command.WAIT, {"ids": ["a", "b"]}),
    (Command.REQUEST, {"name": "status"}),
    (Command.REPLY, {"ok": True}),
]


@pytest.mark.parametrize(("command", "body"), TWO_FRAME_BODIES,
                         ids=[f"{c.name}-{b}" for c, b in TWO_FRAME_BODIES])
@pytest.mark.parametrize("extra", [[b""], [b"null"], [b"a", b"b"], [b"x"] * 9],
                         ids=["1-empty", "1-null", "2", "9"])
def test_extra_frames_for_a_two_frame_message(command: Command, body: dict[str, Any],
                                              extra: list[bytes]) -> None:
    assert decode(frames(command, body)).command == command  # valid as two frames
    name = CLASSES[command].__name__
    assert protocol_error(frames(command, body, *extra)) == \
        f"{name}: expected 2 frames, got {2 + len(extra)}"


@pytest.mark.parametrize("cls", list(PARALLEL))
def test_a_list_message_of_two_frames_carries_no_jobs(cls: type) -> None:
    message = decode(frames(cls.command, list_body(cls, 0)))
    assert message == list_message(cls, 0)
    assert message.data == []  # type: ignore[union-attr]
    first = PARALLEL[cls][0]
    assert protocol_error(frames(cls.command, list_body(cls, 1))) == \
        f"{cls.__name__}.{first} has 1 items for 0 data frames"


@pytest.mark.parametrize("cls", list(PARALLEL))
@pytest.mark.parametrize("n", [1, 2, 7, 300])
def test_a_list_message_takes_any_number_of_data_frames(cls: type, n: int) -> None:
    message = list_message(cls, n)
    sent = encode(message)
    assert len(sent) == 2 + n
    assert decode(sent) == message


def test_unstripped_delimiter_in_front() -> None:
    assert protocol_error([b"", HB, b"{}"]) == "header is 0 bytes, expected 2"
    assert protocol_error([b"", JOB, JOB_BODY, b"null"]) == "header is 0 bytes, expected 2"


# -- parallel lists against data frames ----------------------------------------------------

PARALLEL_FIELDS = [(cls, name) for cls, names in PARALLEL.items() for name in names]


@pytest.mark.parametrize(("cls", "name"), PARALLEL_FIELDS,
                         ids=[f"{c.__name__}.{n}" for c, n in PARALLEL_FIELDS])
@pytest.mark.parametrize("delta", [-2, -1, 1, 5])
def test_decode_refuses_a_list_of_the_wrong_length(cls: type, name: str, delta: int) -> None:
    n = 2
    body = list_body(cls, n, **{name: n + delta})
    data = [b"null"] * n
    assert protocol_error(frames(cls.command, body, *data)) == \
        f"{cls.__name__}.{name} has {n + delta} items for {n} data frames"


@pytest.mark.parametrize(("cls", "name"), PARALLEL_FIELDS,
                         ids=[f"{c.__name__}.{n}" for c, n in PARALLEL_FIELDS])
@pytest.mark.parametrize("delta", [-2, -1, 1, 5])
def test_encode_refuses_a_list_of_the_wrong_length(cls: type, name: str, delta: int) -> None:
    n = 2
    message = list_message(cls, n, **{name: n + delta})
    assert encode_error(message) == \
        f"{cls.__name__}.{name} has {n + delta} items for {n} data frames"


@pytest.mark.parametrize("cls", list(PARALLEL))
@pytest.mark.parametrize(("items", "frames_n"), [(0, 1), (0, 3), (3, 0), (2, 3), (4, 3)])
def test_all_lists_off_names_the_first(cls: type, items: int, frames_n: int) -> None:
    first = PARALLEL[cls][0]
    expected = f"{cls.__name__}.{first} has {items} items for {frames_n} data frames"
    body = list_body(cls, items)
    assert protocol_error(frames(cls.command, body, *[b"{}"] * frames_n)) == expected
    message = cls(**body, data=[b"{}"] * frames_n)
    assert encode_error(message) == expected


@pytest.mark.parametrize("cls", [c for c in PARALLEL if len(PARALLEL[c]) > 1])
def test_lists_that_match_each_other_but_not_the_frames(cls: type) -> None:
    """Every list is checked against the data frames, not only against each other."""
    last = PARALLEL[cls][-1]
    body = list_body(cls, 3, **{last: 2})
    assert protocol_error(frames(cls.command, body, b"1", b"2", b"3")) == \
        f"{cls.__name__}.{last} has 2 items for 3 data frames"


# -- number of jobs ------------------------------------------------------------------------

def test_max_items() -> None:
    assert MAX_ITEMS == 100_000


@pytest.mark.parametrize("cls", [Job, Submit])
def test_max_items_is_accepted_and_one_more_is_refused(cls: type) -> None:
    data = [b""] * MAX_ITEMS
    at = cls(**{**list_body(cls, 0), **{k: [""] * MAX_ITEMS for k in PARALLEL[cls]}},
             data=data)
    sent = encode(at)
    assert len(sent) == 2 + MAX_ITEMS
    assert decode(sent) == at

    expected = f"{cls.__name__} has {MAX_ITEMS + 1} items (limit {MAX_ITEMS})"
    over = dataclasses.replace(at, data=data + [b""],
                               **{k: [""] * (MAX_ITEMS + 1) for k in PARALLEL[cls]})
    assert encode_error(over) == expected
    body = json.dumps({k: getattr(over, k) for k in list_body(cls, 0)}).encode()
    assert len(body) <= MAX_BODY  # only the number of items is at fault
    assert protocol_error([sent[0], body, *over.data]) == expected


@pytest.mark.parametrize("cls", list(PARALLEL))
def test_too_many_items_is_refused_before_the_lists_are_compared(cls: type) -> None:
    """Over MAX_ITEMS frames, the limit is what is reported (lists matching them could not
    even fit in MAX_BODY for some messages)."""
    expected = f"{cls.__name__} has {MAX_ITEMS + 1} items (limit {MAX_ITEMS})"
    over = [b""] * (MAX_ITEMS + 1)
    assert protocol_error(frames(cls.command, list_body(cls, 0), *over)) == expected
    assert encode_error(cls(**list_body(cls, 0), data=over)) == expected


def test_max_items_does_not_apply_to_two_frame_lists() -> None:
    """Accepted and Wait carry no data frames: only MAX_BODY bounds their lists."""
    ids = [str(i) for i in range(MAX_ITEMS + 1)]
    for message in (Accepted(ids=ids), Wait(ids=ids)):
        assert decode(encode(message)) == message


# -- header --------------------------------------------------------------------------------

@pytest.mark.parametrize("header", [b"", bytes((VERSION,)), bytes((VERSION, 3, 0))])
def test_wrong_header_length(header: bytes) -> None:
    assert protocol_error([header, b"{}"]) == f"header is {len(header)} bytes, expected 2"
    assert protocol_error([header, JOB_BODY, b"null"]) == \
        f"header is {len(header)} bytes, expected 2"


@pytest.mark.parametrize("version", [0, 2, 255])
def test_wrong_version(version: int) -> None:
    expected = f"protocol version {version}, expected {VERSION}"
    assert protocol_error([bytes((version, Command.HEARTBEAT)), b"{}"]) == expected
    assert protocol_error([bytes((version, Command.JOB)), JOB_BODY, b"null"]) == expected


UNKNOWN_COMMANDS = [c for c in range(256) if c not in set(Command)]


@pytest.mark.parametrize("command", [0, 15, 18, 108, 255])
def test_unknown_command(command: int) -> None:
    assert command not in set(Command)
    assert protocol_error(frames(command, {})) == f"unknown command {command}"
    assert protocol_error(frames(command, {}, b"null")) == f"unknown command {command}"
    assert protocol_error(frames(command, {}, b"null", b"null")) == f"unknown command {command}"


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
    assert protocol_error(frames(Command.SUBMIT, body)).startswith("body is not JSON")


@pytest.mark.parametrize("body", [[], [1, 2], "text", 3, None, True])
def test_body_not_an_object(body: Any) -> None:
    assert protocol_error(frames(Command.HEARTBEAT, body)) == "body is not a JSON object"
    assert protocol_error(frames(Command.SUBMIT, body, b"{}")) == "body is not a JSON object"
    assert protocol_error(frames(Command.ACCEPTED, body)) == "body is not a JSON object"


UNKNOWN_FIELDS: list[tuple[Command, dict[str, Any], int, str]] = [
    (Command.HEARTBEAT, {"x": 1}, 0, "x"),
    (Command.LOADING, {"slot": 1, "pid": 2, "command": 1}, 0, "command"),
    (Command.READY, {"tasks": {}, "Tasks": {}}, 0, "Tasks"),
    (Command.REPLY, {"ok": True, "errors": "x"}, 0, "errors"),
    (Command.RETIRING, {"reason": "r", "reasons": ["r"]}, 0, "reasons"),
    # the one-job forms of before
    (Command.ACCEPTED, {"id": "a"}, 0, "id"),
    (Command.WAIT, {"ids": ["a"], "id": "a"}, 0, "id"),
    (Command.JOB, {"ids": ["1"], "tasks": ["t"], "task": "t"}, 1, "task"),
    (Command.RESULT, {"ids": ["1"], "oks": [True], "errors": [None], "ok": True}, 1, "ok"),
    (Command.SUBMIT, {"ids": ["1"], "task": "t", "id": "1"}, 1, "id"),
    (Command.JOB_RESULT, {"ids": ["1"], "states": ["done"], "errors": [None],
                          "state": "done"}, 1, "state"),
    (Command.REJECTED, {"id": "a", "error": "e", "ids": ["a"]}, 0, "ids"),
    (Command.REJECTED, {"id": "a", "error": "e", "": 1}, 0, ""),
    # data frames cannot be smuggled into the body, nor parallel be set from outside
    (Command.JOB, {"ids": [], "tasks": [], "data": []}, 0, "data"),
    (Command.RESULT, {"ids": ["1"], "oks": [True], "errors": [None], "data": None}, 1, "data"),
    (Command.SUBMIT, {"ids": [], "task": "t", "parallel": []}, 0, "parallel"),
    (Command.JOB_RESULT, {"ids": [], "states": [], "errors": [], "carries_data": False}, 0,
     "carries_data"),
    (Command.ACCEPTED, {"ids": [], "data": []}, 0, "data"),
]


@pytest.mark.parametrize(("command", "body", "jobs", "field"), UNKNOWN_FIELDS,
                         ids=[f"{c.name}.{f}" for c, _, _, f in UNKNOWN_FIELDS])
def test_unknown_field(command: Command, body: dict[str, Any], jobs: int, field: str) -> None:
    name = CLASSES[command].__name__
    assert protocol_error(frames(command, body, *[b"null"] * jobs)) == \
        f"{name}: unknown field {field!r}"


WRONG_TYPES: list[tuple[Command, dict[str, Any], str]] = [
    (Command.LOADING, {"slot": "1", "pid": 2}, "Loading.slot"),
    (Command.LOADING, {"slot": True, "pid": 2}, "Loading.slot"),
    (Command.LOADING, {"slot": 1, "pid": 2.5}, "Loading.pid"),
    (Command.LOADING, {"slot": 1, "pid": None}, "Loading.pid"),
    (Command.READY, {"tasks": "a"}, "Ready.tasks"),
    (Command.READY, {"tasks": ["a", "b"]}, "Ready.tasks"),
    (Command.READY, {"tasks": None}, "Ready.tasks"),
    (Command.JOB, {"ids": "1", "tasks": ["t"]}, "Job.ids"),
    (Command.JOB, {"ids": ["1", 2], "tasks": ["t", "t"]}, "Job.ids"),
    (Command.JOB, {"ids": [None], "tasks": ["t"]}, "Job.ids"),
    (Command.JOB, {"ids": ["1"], "tasks": None}, "Job.tasks"),
    (Command.JOB, {"ids": ["1"], "tasks": "t"}, "Job.tasks"),
    (Command.JOB, {"ids": ["1"], "tasks": [["t"]]}, "Job.tasks"),
    (Command.RESULT, {"ids": ["1"], "oks": [1], "errors": [None]}, "Result.oks"),
    (Command.RESULT, {"ids": ["1"], "oks": [None], "errors": [None]}, "Result.oks"),
    (Command.RESULT, {"ids": ["1"], "oks": True, "errors": [None]}, "Result.oks"),
    (Command.RESULT, {"ids": ["1"], "oks": [False], "errors": ["boom"]}, "Result.errors"),
    (Command.RESULT, {"ids": ["1"], "oks": [False], "errors": [["boom"]]}, "Result.errors"),
    (Command.RESULT, {"ids": ["1"], "oks": [False], "errors": TRACEBACK}, "Result.errors"),
    (Command.RESULT, {"ids": ["1"], "oks": [False], "errors": None}, "Result.errors"),
    (Command.RETIRING, {"reason": None}, "Retiring.reason"),
    (Command.RETIRING, {"reason": 5}, "Retiring.reason"),
    (Command.RETIRING, {"reason": ["max_jobs"]}, "Retiring.reason"),
    (Command.SUBMIT, {"ids": ["1"], "task": "t", "wait": 1}, "Submit.wait"),
    (Command.SUBMIT, {"ids": ["1"], "task": "t", "wait": "yes"}, "Submit.wait"),
    (Command.SUBMIT, {"ids": ["1"], "task": "t", "wait": None}, "Submit.wait"),
    (Command.SUBMIT, {"ids": ["1"], "task": "t", "wait": [True]}, "Submit.wait"),
    (Command.SUBMIT, {"ids": [{}], "task": "t"}, "Submit.ids"),
    (Command.SUBMIT, {"ids": "1", "task": "t"}, "Submit.ids"),
    (Command.SUBMIT, {"ids": ["1"], "task": ["t"]}, "Submit.task"),
    (Command.ACCEPTED, {"ids": 7}, "Accepted.ids"),
    (Command.ACCEPTED, {"ids": "a"}, "Accepted.ids"),
    (Command.ACCEPTED, {"ids": [7]}, "Accepted.ids"),
    (Command.ACCEPTED, {"ids": None}, "Accepted.ids"),
    (Command.REJECTED, {"id": "1", "error": None}, "Rejected.error"),
    (Command.REJECTED, {"id": "1", "error": {"message": "x"}}, "Rejected.error"),
    (Command.REJECTED, {"id": ["1"], "error": "x"}, "Rejected.id"),
    (Command.WAIT, {"ids": "a"}, "Wait.ids"),
    (Command.WAIT, {"ids": [[]]}, "Wait.ids"),
    (Command.WAIT, {"ids": {"a": 1}}, "Wait.ids"),
    (Command.JOB_RESULT, {"ids": ["1"], "states": [0], "errors": [None]}, "JobResult.states"),
    (Command.JOB_RESULT, {"ids": ["1"], "states": "done", "errors": [None]},
     "JobResult.states"),
    (Command.JOB_RESULT, {"ids": ["1"], "states": ["failed"], "errors": ["x"]},
     "JobResult.errors"),
    (Command.JOB_RESULT, {"ids": ["1"], "states": ["failed"], "errors": [3.5]},
     "JobResult.errors"),
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
    # as many data frames as the body has jobs, so that only the type is at fault
    ids = body.get("ids")
    jobs = len(ids) if command in DATA_COMMANDS and isinstance(ids, list) else 0
    message = protocol_error(frames(command, body, *[b"null"] * jobs))
    wrong = type(body[where.split(".")[1]]).__name__
    assert message == f"{where}: wrong type {wrong}"


MISSING: list[tuple[Command, dict[str, Any], str]] = [
    (Command.LOADING, {"slot": 1}, "pid"),
    (Command.LOADING, {}, "pid, slot"),
    (Command.RETIRING, {}, "reason"),
    (Command.JOB, {"ids": []}, "tasks"),
    (Command.JOB, {}, "ids, tasks"),
    (Command.RESULT, {"ids": [], "oks": [], "seconds": []}, "errors"),
    (Command.RESULT, {"ids": [], "oks": [], "errors": []}, "seconds"),
    (Command.RESULT, {"errors": [], "seconds": []}, "ids, oks"),
    (Command.RESULT, {}, "errors, ids, oks, seconds"),
    (Command.SUBMIT, {"task": "t", "wait": True}, "ids"),
    (Command.SUBMIT, {"ids": []}, "task"),
    (Command.ACCEPTED, {}, "ids"),
    (Command.REJECTED, {"id": "1"}, "error"),
    (Command.REJECTED, {}, "error, id"),
    (Command.WAIT, {}, "ids"),
    (Command.JOB_RESULT, {"ids": [], "errors": []}, "states"),
    (Command.JOB_RESULT, {}, "errors, ids, states"),
    (Command.REQUEST, {"args": {}}, "name"),
    (Command.REPLY, {"result": {}}, "ok"),
]


# list messages also with data frames: the missing field is reported, not the frame count
MISSING_CASES = [(c, b, m, 0) for c, b, m in MISSING] + \
    [(c, b, m, 2) for c, b, m in MISSING if c in DATA_COMMANDS]


@pytest.mark.parametrize(("command", "body", "missing", "jobs"), MISSING_CASES,
                         ids=[f"{c.name}-{m}-{j}" for c, _, m, j in MISSING_CASES])
def test_missing_required_field(command: Command, body: dict[str, Any], missing: str,
                                jobs: int) -> None:
    name = CLASSES[command].__name__
    assert protocol_error(frames(command, body, *[b"null"] * jobs)) == \
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


def test_body_over_max_body_is_refused_for_a_list_message() -> None:
    body = b'{"ids":["1"],"tasks":["' + b"t" * MAX_BODY + b'"]}'
    assert protocol_error([JOB, body, b"null"]) == \
        f"body is {len(body)} bytes (limit {MAX_BODY})"
    body = b'{"ids":["' + b"i" * MAX_BODY + b'"]}'
    assert protocol_error(frames(Command.WAIT, body)) == \
        f"body is {len(body)} bytes (limit {MAX_BODY})"


def test_encode_refuses_a_message_over_max_body() -> None:
    with pytest.raises(ProtocolError, match=r"^Request body is \d+ bytes \(limit"):
        encode(Request(name="x" * MAX_BODY))
    with pytest.raises(ProtocolError, match=r"^Job body is \d+ bytes \(limit"):
        encode(Job(ids=["x" * MAX_BODY], tasks=["t"], data=[b"null"]))
    with pytest.raises(ProtocolError, match=r"^Accepted body is \d+ bytes \(limit"):
        encode(Accepted(ids=["x" * 1000] * 1100))


def test_large_data_frames_do_not_count_against_max_body() -> None:
    message = Job(ids=["1", "2"], tasks=["t", "t"],
                  data=[b"x" * (MAX_BODY * 2), b"y" * (MAX_BODY * 2)])
    assert decode(encode(message)) == message


def test_protocol_error_is_a_value_error() -> None:
    assert issubclass(ProtocolError, ValueError)


NESTED = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(("command", "body", "jobs"), [
    (Command.REQUEST, b'{"name":"x","args":{"a":' + NESTED + b"}}", 0),
    (Command.SUBMIT, b'{"ids":["x"],"task":"t","wait":' + NESTED + b"}", 1),
    (Command.RESULT, b'{"ids":["x"],"oks":[true],"seconds":[1],"errors":[{"a":' + NESTED + b"}]}", 1),
    (Command.ACCEPTED, b'{"ids":' + NESTED + b"}", 0),
], ids=["Request", "Submit", "Result", "Accepted"])
def test_deeply_nested_body_is_a_protocol_error(command: Command, body: bytes,
                                                jobs: int) -> None:
    assert len(body) < MAX_BODY
    assert protocol_error(frames(command, body, *[b"null"] * jobs)).startswith(
        "body is not JSON")


def test_nesting_that_decodes_also_encodes() -> None:
    """The deepest body decode accepts can be encoded again (no RecursionError on the way
    back, e.g. when the daemon forwards or answers it)."""
    def body(depth: int) -> bytes:
        return (b'{"ids":["x"],"states":["failed"],"errors":[{"a":' + b"[" * depth
                + b"]" * depth + b"}]}")

    def accepted(depth: int) -> bool:
        try:
            decode(frames(Command.JOB_RESULT, body(depth), b"null"))
        except ProtocolError:
            return False
        return True

    low, high = 1, 100_000
    assert accepted(low) and not accepted(high)
    while low < high:
        mid = (low + high + 1) // 2
        if accepted(mid):
            low = mid
        else:
            high = mid - 1
    message = decode(frames(Command.JOB_RESULT, body(low), b"null"))
    assert decode(encode(message)) == message


@pytest.mark.parametrize("char", ["é", "✓", "😀"])
def test_a_body_that_decodes_also_encodes_whatever_its_characters(char: str) -> None:
    """Like the nesting above: what decode accepts, the daemon can send on (Submit ids come
    back in Accepted and JobResult)."""
    ids = [char * 100] * (MAX_BODY // (len(char.encode()) * 100 + 3))
    body = json.dumps({"ids": ids}, ensure_ascii=False, separators=(",", ":")).encode()
    assert len(body) <= MAX_BODY
    message = decode(frames(Command.WAIT, body))
    assert message == Wait(ids=ids)
    assert decode(encode(message)) == message


# -- data frame limit ----------------------------------------------------------------------

@pytest.mark.parametrize("cls", list(PARALLEL))
@pytest.mark.parametrize("where", [0, 1, 2])
def test_data_at_max_data_is_accepted_and_over_is_refused(cls: type, where: int) -> None:
    """Each data frame is held to the limit, wherever it is among them."""
    limit = 100
    at = dataclasses.replace(list_message(cls, 3), data=[b"d" * limit] * 3)
    over_data = [b"d" * limit] * 3
    over_data[where] = b"d" * (limit + 1)
    over = dataclasses.replace(at, data=over_data)
    expected = f"{cls.__name__} data is {limit + 1} bytes (limit {limit})"

    # encode
    assert encode(at, max_data=limit)[2:] == at.data
    assert encode_error(over, max_data=limit) == expected

    # decode
    assert decode(encode(at), max_data=limit) == at
    over_frames = encode(over)  # the default limit is far higher
    assert decode(over_frames) == over
    assert protocol_error(over_frames, max_data=limit) == expected


def test_the_limit_is_per_frame_not_per_message() -> None:
    message = list_message(Submit, 50)
    message = dataclasses.replace(message, data=[b"x" * 10] * 50)
    assert decode(encode(message, max_data=10), max_data=10) == message


def test_max_data_zero_allows_only_empty_data_frames() -> None:
    message = Submit(ids=["1", "2"], task="t", data=[b"", b""])
    assert decode(encode(message, max_data=0), max_data=0) == message
    assert encode_error(Submit(ids=["1", "2"], task="t", data=[b"", b"null"]),
                        max_data=0) == "Submit data is 4 bytes (limit 0)"
    assert protocol_error(frames(Command.SUBMIT, {"ids": ["1", "2"], "task": "t"}, b"",
                                 b"null"), max_data=0) == "Submit data is 4 bytes (limit 0)"


def test_default_max_data() -> None:
    assert MAX_DATA == 64 << 20
    big = b"r" * MAX_DATA
    at = Result(ids=["1", "2"], oks=[True, True], errors=[None, None], seconds=[0.0, 0.0],
                data=[b"null", big])
    assert decode(encode(at)).data == at.data  # type: ignore[union-attr]
    over = dataclasses.replace(at, data=[b"null", big + b"r"])
    expected = f"Result data is {MAX_DATA + 1} bytes (limit {MAX_DATA})"
    assert encode_error(over) == expected
    assert protocol_error([bytes((VERSION, Command.RESULT)),
                           b'{"ids":["1","2"],"oks":[true,true],"errors":[null,null],"seconds":[0,0]}',
                           *over.data]) == expected
    # a socket owner may raise its own limit above the default
    assert decode(encode(over, max_data=MAX_DATA + 1), max_data=MAX_DATA + 1) == over


def test_max_data_does_not_apply_to_two_frame_messages() -> None:
    for message in (Request(name="x" * 100), Accepted(ids=["x" * 100]),
                    Wait(ids=["x" * 100]), Retiring(reason="x" * 100)):
        assert decode(encode(message, max_data=0), max_data=0) == message


# -- fuzzing -------------------------------------------------------------------------------

FIELD_NAMES = ["slot", "pid", "tasks", "name", "args", "ok", "result", "error", "command",
               "id", "ids", "task", "wait", "state", "states", "oks", "errors", "reason",
               "data", "parallel", "timeout", "retryable", ""]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 2 else 6)
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
    if kind == 7:  # a list of one type, as the list messages want
        item = _random_value(rng, 2)
        return [item] * rng.randrange(4)
    return {rng.choice(FIELD_NAMES): _random_value(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def _random_bytes(rng: random.Random, most: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(most + 1)))


def _tail(rng: random.Random, command: int) -> list[bytes]:
    """The frames after the body: usually none for a two-frame command, any number else."""
    count = rng.randrange(4) if command in DATA_COMMANDS or rng.random() < 0.2 else 0
    return [_random_bytes(rng, 40) for _ in range(count)]


def _random_message(rng: random.Random) -> list[bytes]:
    """Random frames, biased so that every stage of `decode` gets exercised."""
    mode = rng.randrange(6)
    if mode == 0:  # anything at all
        return [_random_bytes(rng, 40) for _ in range(rng.randrange(6))]
    command = rng.choice([*map(int, Command), rng.randrange(256)])
    header = bytes((VERSION, command))
    if mode == 1:  # a plausible header, a random body
        return [header, _random_bytes(rng, 60), *_tail(rng, command)]
    if mode == 2:  # a JSON object with field names of the protocol and values of any type
        body = {rng.choice(FIELD_NAMES): _random_value(rng) for _ in range(rng.randrange(4))}
        return [header, json.dumps(body).encode(), *_tail(rng, command)]
    valid = encode(rng.choice(MESSAGES))
    if mode == 3:  # a valid message under another (or the same) command
        return [header, *valid[1:]]
    if mode == 4:  # a valid message with data frames added, dropped or replaced
        data = valid[2:]
        for _ in range(rng.randrange(1, 3)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data) + 1)
            if op == 0:
                data.insert(pos, _random_bytes(rng, 30))
            elif op == 1 and data:
                del data[pos % len(data)]
            elif data:
                data[pos % len(data)] = _random_bytes(rng, 30)
        return [valid[0], valid[1], *data]
    # A valid message with a few bytes of its body flipped, cut or added.
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


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.name == "data":
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _canonical(body: Any) -> str:
    return json.dumps(body, sort_keys=True)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_random_frames_raise_only_protocol_error(seed: int) -> None:
    rng = random.Random(seed)
    refused = accepted = accepted_with_data = accepted_with_many = 0
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
        cls = type(message)
        assert dataclasses.is_dataclass(message)
        assert cls in CLASSES.values()
        frames_again = encode(message, max_data=max_data)
        assert frames_again[0] == data[0]
        assert len(frames_again) == len(data)
        assert frames_again[2:] == data[2:]  # the data frames, verbatim
        # the same body, up to spacing, key order and the defaults it left out
        assert _canonical(json.loads(frames_again[1])) == \
            _canonical({**_defaults(cls), **json.loads(data[1])})
        assert encode(decode(frames_again, max_data=max_data), max_data=max_data) == \
            frames_again
        if len(data) > 2:
            accepted_with_data += 1
        if len(data) > 3:
            accepted_with_many += 1
    # every path is exercised
    assert refused > 0 and accepted > 0 and accepted_with_data > 0 and accepted_with_many > 0
    assert refused + accepted == 1000


def test_encode_many_splits_what_does_not_fit_one_message() -> None:
    ids = [f"{i:0120d}" for i in range(20_000)]  # about 2.5 MB of ids: over MAX_BODY
    parts = list(wire.encode_many(lambda chunk: Accepted(ids=chunk), ids))
    assert len(parts) > 1
    assert all(len(p[1]) <= MAX_BODY for p in parts)
    assert [i for p in parts for i in decode(p).ids] == ids  # type: ignore[union-attr]
    assert list(wire.encode_many(lambda chunk: Accepted(ids=chunk), [])) == []
    with pytest.raises(ProtocolError):  # one item that cannot fit is an error, not a loop
        list(wire.encode_many(lambda chunk: Accepted(ids=["x" * MAX_BODY]), ["one"]))
