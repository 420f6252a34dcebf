"""What tests/unit/test_payload_limits.py and tests/system/test_payload_limits.py share."""

from __future__ import annotations

NOT_JSON_FLOAT = "payload is not JSON: NaN and Infinity are not JSON values"
