"""What a setting's value may be, and what of it may be shown.

The checks that settings.py gives its settings: each returns None when a value is
acceptable, else what is wrong with it, in words for the user (the loader puts the key in
front). And the masks of secrets, for output and logs: `redacted_url`, `masked`.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

# A check returns None when the value is acceptable, else what is wrong with it.
Check = Callable[[Any], "str | None"]


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be at least {low}, got {v}"


def above(low: float) -> Check:
    return lambda v: None if v > low else f"must be greater than {low}, got {v}"


class Between:
    """A check with bounds that others can read: the CLI gives them to click, so that a
    flag and the file refuse the same values."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def __call__(self, value: Any) -> str | None:
        if value < self.low:
            return f"must be at least {self.low}, got {value}"
        if value > self.high:
            return f"must be at most {self.high}, got {value}"
        return None


def one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"


_USER_KIND = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def model_kind(*built_in: str) -> Check:
    """A model's kind: one built in, or a user's "package.module:Class"."""
    return lambda v: None if v in built_in or _USER_KIND.match(v) else (
        f"must be {', '.join(built_in)} or MODULE:CLASS of a kind of your own, got {v!r}")


_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d{1,3}|mps|auto)$")


def device_name(value: str) -> str | None:
    if _DEVICE.match(value):
        return None
    return f"must be cpu, cuda, cuda:N, mps or auto, got {value!r}"


def gpu_list(value: Any) -> str | None:
    """[workers] gpus: "all", or distinct GPU indexes (none: not spread)."""
    if isinstance(value, str):
        return None if value == "all" else f"must be \"all\" or a list of GPU indexes, " \
            f"got {value!r}"
    if any(i < 0 for i in value):
        return f"GPU indexes must not be negative, got {list(value)}"
    if len(set(value)) != len(value):
        return f"lists a GPU twice: {list(value)}"
    return None


def listen_address(value: str) -> str | None:
    if value == "localhost":
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"must be an IPv4 or IPv6 address or localhost, got {value!r}"
    return None


NATS_SCHEMES = ("nats", "tls", "ws", "wss")
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _server_url_problem(url: str) -> str | None:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:  # a port out of range or not a number, a bad [IPv6] address
        return "is not a valid URL"
    if parts.scheme not in NATS_SCHEMES:
        return f"must start with {', '.join(s + '://' for s in NATS_SCHEMES)}"
    if not parts.hostname:
        return "names no host"
    if port == 0:
        return "has port 0"
    return None


def server_urls(value: tuple[str, ...]) -> str | None:
    """NATS server URLs: at least one, each SCHEME://HOST[:PORT]."""
    if not value:
        return "must list at least one server URL"
    for url in value:
        problem = _server_url_problem(url)
        if problem:  # the URL redacted: its user:password@ must not reach the terminal
            return f"{redacted_url(url)!r} {problem} (nats://HOST[:PORT])"
    return None


def stream_name(value: str) -> str | None:
    if _STREAM_NAME.fullmatch(value):
        return None
    return f"must be letters, digits, _ and - only (no dots, spaces, * or >), got {value!r}"


REDACTED = "***"


def redacted_url(url: str) -> str:
    """`url` without its userinfo, for output and logs: nats://user:pass@host:4222 gives
    nats://***@host:4222. Everything before the last "@" after the scheme is taken for the
    userinfo, so that a password with an unescaped "/" or "@" is hidden too."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    _, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{REDACTED}@{host}" if at else url


def redacted_urls(urls: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(redacted_url(url) for url in urls)


def masked(secret: str) -> str:
    """A password or token as it is shown: *** when set, "" when not."""
    return REDACTED if secret else ""


_CREDENTIALS = (("creds",), ("nkey",), ("user", "password"), ("token",))


def nats_table(nats: Any) -> str | None:
    """[queue.nats] as a whole: at most one kind of credentials, user with password and
    tls_cert with tls_key. As a table's check, it names the key; it shows no value."""
    kinds = [next(key for key in kind if getattr(nats, key)) for kind in _CREDENTIALS
             if any(getattr(nats, key) for key in kind)]
    if len(kinds) > 1:
        return (f"{kinds[1]}: cannot be set with {kinds[0]}: set at most one kind of "
                "credentials (creds, nkey, user and password, or token)")
    for one, other in (("user", "password"), ("tls_cert", "tls_key")):
        if bool(getattr(nats, one)) != bool(getattr(nats, other)):
            missing, given = (one, other) if getattr(nats, other) else (other, one)
            return f"{missing}: must be set together with {given}"
    return None
