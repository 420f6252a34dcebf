"""What the queue shared by many hosts keeps in NATS JetStream, and the reads and writes
of it (on the NATS thread: supervisor.jobs.natslink) that the store of a daemon
(supervisor.jobs.natsstore) and a client with no daemon (supervisor.client.shared) make.

What lives in JetStream, for `[queue.nats] stream = NAME`:
- the stream NAME (work-queue retention, file storage, `replicas`): one message per
  pending job, on the subject ``NAME.job.<key>``, its payload as body, its task in a
  header, its id as ``Nats-Msg-Id`` (a resent submit within the stream's duplicate window
  is not a second job). A job leaves the stream when a host acknowledges it, which it does
  only once the job's end is stored.
- the durable pull consumer ``NAME_workers``, shared by every host: each pulls as many jobs
  as its workers have credit for. A job is leased to a host for `ack_wait` seconds, kept
  leased while its worker lives (``in_progress``), given back at once by a ``nak``.
- the KV bucket ``NAME_results`` (TTL `queue.result_ttl`): the end of each job (state,
  error, attempts, result), created only if absent, so the first end stored wins.
- the KV bucket ``NAME_runs``: the runs and attempts a pending job has lost (a worker died
  with it), and the last error of one waiting to be retried, so any host counts them.

A job's key is its id when that is made of letters, digits, ``-`` and ``_`` (client ids
are), else ``=`` and the hex of its UTF-8: a subject token and a KV key either way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from supervisor.conf.settings import NatsSettings
from supervisor.jobs.journal import PENDING, StoredJob
from supervisor.jobs.natslink import Link, NatsError

log = logging.getLogger("supervisor.jobs")
TASK_HEADER = "Docbrain-Task"
# Where a client with no daemon wants the end of its job published as well (a subject of
# its own): it then reads no bucket for it. The bucket stays the truth.
REPLY_HEADER = "Docbrain-Reply"
_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]+")
# Seconds within which a resent submit (the same id) is known to be one by the stream.
DUPLICATE_WINDOW = 600.0


def job_key(job_id: str) -> str:
    return job_id if _PLAIN_ID.fullmatch(job_id) else "=" + job_id.encode().hex()


def key_job(key: str) -> str:
    return bytes.fromhex(key[1:]).decode() if key.startswith("=") else key


def encode_record(record: dict[str, Any], result: bytes | None) -> bytes:
    """A job's end as stored in the results bucket: a line of JSON, then the result."""
    return json.dumps(record, separators=(",", ":")).encode() + b"\n" + (result or b"")


def decode_record(value: bytes) -> tuple[dict[str, Any], bytes | None]:
    head, _, result = value.partition(b"\n")
    record = json.loads(head)
    if not isinstance(record, dict):
        raise ValueError("a stored record is not a JSON object")
    return record, result or None


def stream_problems(name: str, have: Any, settings: NatsSettings) -> list[str]:
    """How an existing stream's configuration (`have`) differs from what the queue needs."""
    subjects = [f"{name}.job.>"]
    problems = []
    if list(have.subjects or []) != subjects:
        problems.append(f"subjects {have.subjects} (not {subjects})")
    if getattr(have.retention, "value", have.retention) != "workqueue":
        problems.append(f"retention {getattr(have.retention, 'value', have.retention)} "
                        "(not workqueue)")
    if have.num_replicas != settings.replicas:
        problems.append(f"{have.num_replicas} replicas (not {settings.replicas}, as "
                        "queue.nats.replicas says)")
    return problems


class Layout:
    """The stream, the consumer and the buckets of one `[queue.nats]` configuration, and
    the reads and writes of them that the store makes (all on the NATS thread)."""

    def __init__(self, link: Link, settings: NatsSettings, result_ttl: float) -> None:
        self.link, self.settings, self.result_ttl = link, settings, result_ttl
        name = settings.stream
        self.stream = name
        self.subject = f"{name}.job"
        self.durable = f"{name}_workers"
        self.consumer: Any = None
        self.results: Any = None
        self.runs: Any = None

    async def ensure(self) -> None:
        """Create what is missing; refuse (NatsError) a stream that exists but differs."""
        from nats.js import api
        from nats.js.errors import BucketNotFoundError, NotFoundError

        js, s = self.link.js, self.settings
        wanted = api.StreamConfig(
            name=self.stream, subjects=[f"{self.subject}.>"],
            retention=api.RetentionPolicy.WORK_QUEUE, storage=api.StorageType.FILE,
            num_replicas=s.replicas, duplicate_window=DUPLICATE_WINDOW)
        try:
            info = await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(wanted)
            log.info("NATS: created stream %s (%d replica%s)", self.stream, s.replicas,
                     "" if s.replicas == 1 else "s")
        else:
            problems = stream_problems(self.stream, info.config, s)
            if problems:
                raise NatsError(f"NATS stream {self.stream} exists with {'; '.join(problems)}:"
                                " change queue.nats.stream or the stream (it is not changed "
                                "here)")
        config = api.ConsumerConfig(
            durable_name=self.durable, ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=s.ack_wait, max_deliver=-1, max_ack_pending=-1,
            filter_subject=f"{self.subject}.>", deliver_policy=api.DeliverPolicy.ALL)
        await js.add_consumer(self.stream, config)  # the same config again: nothing changes
        self.consumer = await js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        for attr, bucket, ttl in (("results", f"{self.stream}_results", self.result_ttl),
                                  ("runs", f"{self.stream}_runs", None)):
            try:
                kv = await js.key_value(bucket)
            except BucketNotFoundError:
                kv = await js.create_key_value(bucket=bucket, history=1, ttl=ttl,
                                               replicas=s.replicas)
            setattr(self, attr, kv)

    async def watch_ends(self, callback: Callable[[Any], Awaitable[None]]) -> None:
        """Call back with each end stored from now on (headers only: the key is the id)."""
        from nats.js import api

        bucket = f"{self.stream}_results"
        await self.link.js.subscribe(f"$KV.{bucket}.>", stream=f"KV_{bucket}", cb=callback,
                                     ordered_consumer=True, headers_only=True,
                                     deliver_policy=api.DeliverPolicy.NEW)

    async def publish(self, job_id: str, task: str, payload: bytes,
                      reply: str | None = None) -> bool:
        """Store a pending job; True if the stream had it already (a resent submit)."""
        key = job_key(job_id)
        headers = {"Nats-Msg-Id": key, TASK_HEADER: task, **({REPLY_HEADER: reply} if reply
                                                             else {})}
        ack = await self.link.js.publish(f"{self.subject}.{key}", payload, headers=headers)
        return bool(ack.duplicate)

    async def store_end(self, key: str, value: bytes) -> bool:
        """Store a job's end unless one is stored already (False then: this one is late)."""
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            await self.results.create(key, value)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def end(self, key: str) -> bytes | None:
        """The job's stored end, if it has one."""
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self.results.get(key)
        except KeyNotFoundError:
            return None
        return entry.value or b""

    async def pending(self, key: str) -> bool:
        """Is the job in the stream (waiting or leased)?"""
        from nats.js.errors import NotFoundError

        try:
            await self.link.js.get_last_msg(self.stream, f"{self.subject}.{key}")
        except NotFoundError:
            return False
        return True

    async def lost_runs(self, key: str) -> tuple[int, int]:
        record = await self._runs_record(key)
        return int(record.get("attempts", 0)), int(record.get("runs", 0))

    async def _runs_record(self, key: str) -> dict[str, Any]:
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self.runs.get(key)
        except KeyNotFoundError:
            return {}
        try:
            record = json.loads(entry.value or b"{}")
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    async def keep_runs(self, key: str, attempts: int, runs: int, not_before: float | None,
                        error: dict[str, Any] | None) -> None:
        record = {"attempts": attempts, "runs": runs, "not_before": not_before, "error": error}
        await self.runs.put(key, json.dumps(record).encode())

    async def forget_runs(self, key: str) -> None:
        from nats.js.errors import KeyNotFoundError

        try:
            await self.runs.purge(key)
        except KeyNotFoundError:
            pass

    async def get(self, key: str, job_id: str) -> StoredJob | None:
        """The job's end if stored, else the job pending in the stream, else None."""
        from nats.js.errors import KeyNotFoundError, NotFoundError

        try:
            entry = await self.results.get(key)
        except KeyNotFoundError:
            pass
        else:
            return _ended_job(entry.value or b"")
        try:
            msg = await self.link.js.get_last_msg(self.stream, f"{self.subject}.{key}")
        except NotFoundError:
            return None
        runs = await self._runs_record(key)
        return StoredJob(
            id=job_id, task=(msg.headers or {}).get(TASK_HEADER, "?"), payload=msg.data or b"",
            state=PENDING, attempts=int(runs.get("attempts", 0)), runs=int(runs.get("runs", 0)),
            submitted=msg.time.timestamp() if msg.time else 0.0, finished=None, result=None,
            error=runs.get("error"), not_before=runs.get("not_before"))

    async def recent(self, state: str | None, limit: int) -> list[StoredJob]:
        """The newest ended jobs (of one state if given), read from the results bucket."""
        from nats.js import api

        bucket = f"{self.stream}_results"
        jobs: list[StoredJob] = []
        done = asyncio.Event()

        async def take(msg: Any) -> None:
            if msg.data:
                try:
                    job = _ended_job(msg.data)
                except ValueError:
                    job = None
                if job is not None and (state is None or job.state == state):
                    jobs.append(job)
            if msg.metadata.num_pending == 0:
                done.set()

        info = await self.link.js.stream_info(f"KV_{bucket}")
        if not info.state.messages:
            return []
        sub = await self.link.js.subscribe(
            f"$KV.{bucket}.>", stream=f"KV_{bucket}", cb=take, ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT)
        try:
            await asyncio.wait_for(done.wait(), 4.0)
        finally:
            await sub.unsubscribe()
        jobs.sort(key=lambda j: j.finished or 0.0, reverse=True)
        return jobs[:limit]


def _ended_job(value: bytes) -> StoredJob:
    record, result = decode_record(value)
    return StoredJob(
        id=str(record.get("id")), task=str(record.get("task")), payload=b"",
        state=str(record.get("state")), attempts=int(record.get("attempts") or 0),
        runs=int(record.get("runs") or 0), submitted=float(record.get("submitted") or 0.0),
        finished=record.get("finished"), result=result, error=record.get("error"))
