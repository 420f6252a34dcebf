"""What a client raises, and the checks and decoding both clients share (the one that talks
to the local daemon, supervisor.client.local, and the one that talks to NATS directly,
supervisor.client.shared)."""

from __future__ import annotations

from typing import Any

from supervisor.proto import wire


class JobError(Exception):
    """Base of the errors a job's outcome raises."""

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobRejected(JobError):
    """The daemon refused the submit (unknown task, payload not JSON or too big)."""


class PayloadError(JobRejected, ValueError):
    """Refused here, before sending, in the daemon's words: the payload is not strict JSON
    or is over the size limit. Nothing was sent."""


class NotAcknowledged(TimeoutError):
    """The daemon neither accepted nor rejected a submit in time, resends included."""

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobFailed(JobError):
    """The task raised. `type`, `message` and `traceback` describe the exception."""

    def __init__(self, job_id: str, error: dict[str, Any]) -> None:
        self.type = str(error.get("type", "Exception"))
        self.message = str(error.get("message", ""))
        self.traceback = str(error.get("traceback", ""))
        super().__init__(job_id, f"job {job_id} failed: {self.type}: {self.message}")


class JobDead(JobError):
    """The job was dead-lettered: its runs kept being lost. `reason` says how."""

    def __init__(self, job_id: str, reason: str) -> None:
        self.reason = reason
        super().__init__(job_id, f"job {job_id} is dead: {reason}")


class JobCancelled(JobError):
    """The job was cancelled (`Client.cancel`, `docbrainctl cancel`). `reason` says how."""

    def __init__(self, job_id: str, reason: str) -> None:
        self.reason = reason
        super().__init__(job_id, f"job {job_id} was {reason}")


class CancelRefused(ValueError):
    """A cancel the daemon refused, changing nothing: the message names each job that could
    not be cancelled (unknown, ended, running without terminate), or why none can be."""


class UnknownJob(JobError, KeyError):
    """The daemon has no job of that id (never submitted, or purged after result_ttl).
    A KeyError too, as it always was."""

    def __str__(self) -> str:  # KeyError's own would quote the message
        return str(self.args[0])


class DaemonNotRunning(ConnectionError):
    pass


class QueueUnreachable(ConnectionError):
    """The shared queue (NATS, `[queue] backend = "nats"`) cannot be reached or used; the
    message names the servers."""


class QueueRefused(JobRejected, QueueUnreachable):
    """The daemon here could not store the job in the shared queue (NATS unreachable, or
    it refused the write): not the job's fault; the same submit may succeed later."""


# How a daemon's refusal for want of its shared queue begins (supervisor.jobs.natsstore).
STORE_REFUSALS = ("NATS servers unreachable", "NATS did not store")


def rejection(job_id: str, error: str) -> JobRejected:
    """The daemon's Rejected as the exception it means."""
    refused = error.startswith(STORE_REFUSALS)
    return (QueueRefused if refused else JobRejected)(job_id, error)


def encode_payload(payload: Any, limit: int) -> bytes:
    """The payload as a Client sends it; ValueError, in the daemon's words, if it is not
    strict JSON or is over `limit` bytes (TypeError: JSON cannot carry it at all)."""
    try:
        data = wire.dumps(payload)
    except ValueError as exc:
        raise ValueError(f"payload is not JSON: {exc}") from None
    if len(data) > limit:
        raise ValueError(f"payload is {len(data)} bytes (limit {limit})")
    return data


def outcome(job_id: str, state: str, error: dict[str, Any] | None, data: bytes) -> Any:
    if state == "done":
        try:
            return wire.loads(data)
        except ValueError as exc:  # only an older version let a worker store NaN
            raise ValueError(f"the result of job {job_id} is not JSON: {exc}") from None
    error = error or {}
    if state == "failed":
        raise JobFailed(job_id, error)
    if state == "dead":
        raise JobDead(job_id, str(error.get("reason", "unknown")))
    if state == "cancelled":
        raise JobCancelled(job_id, str(error.get("reason", "cancelled")))
    raise UnknownJob(job_id, f"no such job: {job_id}")
