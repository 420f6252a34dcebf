"""NaN and Infinity, and payloads over the size limit, where no daemon is needed: the
strict JSON of the wire and the Client's own payload check. The Client, docbrainctl and a
daemon at every door are in tests/system/test_payload_limits.py.
"""

from __future__ import annotations

import json

import pytest
from helpers_payload_limits import NOT_JSON_FLOAT

from supervisor.client import encode_payload
from supervisor.proto import wire


# -- no daemon ---------------------------------------------------------------------------

def test_strict_json_refuses_nan_and_infinity() -> None:
    for text in ("NaN", "Infinity", "-Infinity", '[1, {"a": NaN}]', b"[Infinity]"):
        with pytest.raises(ValueError, match=r"(NaN|Infinity) is not a JSON value"):
            wire.loads(text)
    # Everything else reads as json.loads reads it, bytes in any of JSON's encodings too.
    for text in ('"NaN"', "1e308", '{"a": [1, 2.5, null]}', '"Infinity"'):
        assert wire.loads(text) == json.loads(text)
    assert wire.loads('[1, "é"]'.encode("utf-16")) == [1, "é"]
    for value in (float("nan"), float("inf"), -float("inf"), {"a": [1.0, float("nan")]}):
        with pytest.raises(ValueError, match="NaN and Infinity are not JSON values"):
            wire.dumps(value)
    with pytest.raises(TypeError):
        wire.dumps({1, 2})
    value = {"text": "é", "n": [1, 2.5, None, True]}
    assert wire.dumps(value) == json.dumps(value).encode()  # what was sent before


def test_a_body_with_nan_is_a_protocol_error() -> None:
    header = bytes((wire.VERSION, wire.Command.RESULT))
    body = b'{"ids": ["j"], "oks": [true], "errors": [null], "seconds": [NaN]}'
    with pytest.raises(wire.ProtocolError, match="NaN is not a JSON value"):
        wire.decode([header, body, b"1"])
    with pytest.raises(wire.ProtocolError, match="Infinity is not a JSON value"):
        wire.decode([bytes((wire.VERSION, wire.Command.REPLY)),
                     b'{"ok": true, "result": {"uptime_s": Infinity}}'])


def test_encode_payload_says_what_the_daemon_says() -> None:
    assert encode_payload("x" * 8, 10) == b'"xxxxxxxx"'
    with pytest.raises(ValueError, match=r"^payload is 11 bytes \(limit 10\)$"):
        encode_payload("x" * 9, 10)
    with pytest.raises(ValueError, match=f"^{NOT_JSON_FLOAT}$"):
        encode_payload([float("nan")], 100)
    # No configuration lets a payload be bigger than a data frame may be.
    assert wire.payload_limit(1 << 40) == wire.MAX_DATA
    assert wire.payload_limit(1000) == 1000
