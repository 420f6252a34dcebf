"""What a client checks before it sends a submit: the priority and the start time, so
that a bad one is a ValueError and nothing is sent (the daemon checks again); and whether
it talks to NATS itself (`shared_here`)."""

from __future__ import annotations

import math
import time
import uuid
from datetime import datetime
from typing import Any

from supervisor.client.errors import PayloadError, encode_payload
from supervisor.conf.config import load_config
from supervisor.conf.settings import Config
from supervisor.proto import wire
from supervisor.proto.paths import StatePaths
from supervisor.proto.pidfile import running_pid


def shared_here(config: Config | str | None) -> bool:
    """Does a client of this configuration talk to NATS itself? With `[queue] backend =
    "nats"` and no daemon on this machine (a daemon forwards)."""
    loaded = config if isinstance(config, Config) else load_config(config)
    paths = StatePaths.for_state_dir(loaded.supervisor.state_dir)
    return loaded.queue.backend == "nats" and running_pid(paths.pidfile) is None


def check_priority(priority: Any) -> None:
    """ValueError, naming the problem, for what is not a priority (0-9)."""
    problem = wire.priority_problem(priority)
    if problem:
        raise ValueError(problem)


def start_time(delay: Any, eta: Any) -> float | None:
    """When (wall clock) jobs submitted with this `delay` (seconds) or `eta` (a datetime,
    naive ones in local time, or seconds since the epoch) may start; None: now. ValueError
    for a bad one, or both. An eta in the past is now."""
    if delay is not None and eta is not None:
        raise ValueError("give a delay or an eta, not both")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or \
                not 0 <= delay < math.inf:
            raise ValueError(f"delay must be a number of seconds >= 0, got {delay!r}")
        return time.time() + delay if delay else None
    if isinstance(eta, datetime):
        return eta.timestamp()
    if eta is not None:
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta):
            raise ValueError(f"eta must be a datetime or seconds since the epoch, got {eta!r}")
        return float(eta)
    return None


def new_jobs(payloads: list[Any], limit: int) -> list[tuple[str, bytes]]:
    """A new id and the encoded payload for each: every payload checked before anything
    is sent (PayloadError naming the first that is refused, or TypeError)."""
    jobs = []
    for index, payload in enumerate(payloads):
        job_id = uuid.uuid4().hex
        try:
            jobs.append((job_id, encode_payload(payload, limit)))
        except ValueError as exc:
            where = f"payloads[{index}]: " if len(payloads) > 1 else ""
            raise PayloadError(job_id, f"{where}{exc}") from None
    return jobs
