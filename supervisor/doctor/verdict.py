"""What each check of docbrainctl doctor says."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Verdict:
    status: Status
    detail: str       # one line
    advice: str = ""  # one line, for WARN and FAIL
