"""What the queue shared by many hosts keeps in NATS JetStream, and the reads and writes
of it (on the NATS thread: supervisor.jobs.natslink) that the store of a daemon
(supervisor.jobs.natsstore) and a client with no daemon (supervisor.client.shared) make.

What lives in JetStream, for `[queue.nats] stream = NAME`:
- the stream NAME (work-queue retention, file storage, `replicas`): one message per
  pending job, on the subject ``NAME.job.<key>`` (of the default priority) or
  ``NAME.job.p<N>.<key>`` (of priority N), its payload as body, its task in a header (and
  the time it may start, if it was submitted with a delay), its id as ``Nats-Msg-Id`` (a
  resent submit within the stream's duplicate window is not a second job). A job leaves the
  stream when a host acknowledges it, which it does only once the job's end is stored.
- a durable pull consumer per priority, shared by every host: ``NAME_workers`` (the
  default priority: ``NAME.job.*``) and ``NAME_workers_p<N>`` (``NAME.job.p<N>.*``); a host
  pulls as many jobs as its workers have credit for, from the highest priority that has
  any (JetStream has no order by priority within a consumer). A job is leased to a host
  for `ack_wait` seconds, kept leased while its worker lives (``in_progress``), given back
  at once by a ``nak`` (with a delay: a retry's backoff, or a delayed job pulled early).
- the subject ``NAME.cancel`` (core NATS): a canceller asks there which hosts run the
  jobs it cancels (supervisor.jobs.natscancel).
- the subject ``NAME.ready`` (core NATS, not stored): a submitter names there the
  priorities it has just stored jobs of, so that every host pulls from those at once; a
  host also looks at every priority once a second (an announcement lost, a delay over).
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
from supervisor.proto import wire

log = logging.getLogger("supervisor.jobs")
TASK_HEADER = "Docbrain-Task"
# Where a client with no daemon wants the end of its job published as well (a subject of
# its own): it then reads no bucket for it. The bucket stays the truth.
REPLY_HEADER = "Docbrain-Reply"
# The wall-clock time before which a delayed job does not start (seconds, as text).
NOT_BEFORE_HEADER = "Docbrain-Not-Before"
# On a job run again (`docbrainctl retry`): the revision of the end it had in the results
# bucket. The end of this run replaces that one (or the pending record the retry put in
# its place, which says the job waits again).
RETRY_OF_HEADER = "Docbrain-Retry-Of"
LEVELS = tuple(range(wire.MAX_PRIORITY, wire.MIN_PRIORITY - 1, -1))  # highest first
_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]+")
# Seconds within which a resent submit (the same id) is known to be one by the stream.
DUPLICATE_WINDOW = 600.0
STORE_TRIES = 4  # reads and writes of a job's end while another process changes it


def job_key(job_id: str) -> str:
    return job_id if _PLAIN_ID.fullmatch(job_id) else "=" + job_id.encode().hex()


def key_job(key: str) -> str:
    return bytes.fromhex(key[1:]).decode() if key.startswith("=") else key


def level_of(subject: str) -> int:
    """The priority of a job from its subject (``NAME.job.<key>``: the default)."""
    parts = subject.split(".")
    if len(parts) >= 4 and parts[-2][1:].isdigit():
        return int(parts[-2][1:])
    return wire.DEFAULT_PRIORITY


def not_before_of(msg: Any) -> float | None:
    """The time a pulled job may start, if it was submitted with a delay."""
    text = (msg.headers or {}).get(NOT_BEFORE_HEADER)
    try:
        return float(text) if text else None
    except ValueError:
        return None


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
        self.ready = f"{name}.ready"
        self.cancels = f"{name}.cancel"  # who runs these? (supervisor.jobs.natscancel)
        self.durable = f"{name}_workers"
        self.levels: dict[int, str] = {}  # priority -> the name of its consumer
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
        # The default priority's consumer first: one made before priorities took all the
        # job subjects (NAME.job.>), which a work queue lets no other consumer share.
        for level in sorted(LEVELS, key=lambda n: n != wire.DEFAULT_PRIORITY):
            durable, subjects = self.durable, f"{self.subject}.*"
            if level != wire.DEFAULT_PRIORITY:
                durable, subjects = f"{self.durable}_p{level}", f"{self.subject}.p{level}.*"
            config = api.ConsumerConfig(
                durable_name=durable, ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=s.ack_wait, max_deliver=-1, max_ack_pending=-1,
                filter_subject=subjects, deliver_policy=api.DeliverPolicy.ALL)
            await js.add_consumer(self.stream, config)  # the same again: nothing changes
            self.levels[level] = durable
        for attr, bucket, ttl in (("results", f"{self.stream}_results", self.result_ttl),
                                  ("runs", f"{self.stream}_runs", None)):
            try:
                kv = await js.key_value(bucket)
            except BucketNotFoundError:
                kv = await js.create_key_value(bucket=bucket, history=1, ttl=ttl,
                                               replicas=s.replicas)
            setattr(self, attr, kv)

    async def consumer_infos(self) -> list[Any]:
        """Each priority's consumer as JetStream counts it (waiting, leased jobs)."""
        return list(await asyncio.gather(*(self.link.js.consumer_info(self.stream, durable)
                                           for durable in self.levels.values())))

    async def watch_ends(self, callback: Callable[[Any], Awaitable[None]]) -> None:
        """Call back with each end stored from now on (headers only: the key is the id)."""
        from nats.js import api

        bucket = f"{self.stream}_results"
        await self.link.js.subscribe(f"$KV.{bucket}.>", stream=f"KV_{bucket}", cb=callback,
                                     ordered_consumer=True, headers_only=True,
                                     deliver_policy=api.DeliverPolicy.NEW)

    def subject_of(self, key: str, priority: int = wire.DEFAULT_PRIORITY) -> str:
        if priority == wire.DEFAULT_PRIORITY:
            return f"{self.subject}.{key}"
        return f"{self.subject}.p{priority}.{key}"

    async def publish(self, job_id: str, task: str, payload: bytes, reply: str | None = None,
                      priority: int = wire.DEFAULT_PRIORITY,
                      not_before: float | None = None) -> bool:
        """Store a pending job; True if the stream had it already (a resent submit)."""
        key = job_key(job_id)
        headers = {"Nats-Msg-Id": key, TASK_HEADER: task}
        if reply:
            headers[REPLY_HEADER] = reply
        if not_before is not None:
            headers[NOT_BEFORE_HEADER] = repr(float(not_before))
        ack = await self.link.js.publish(self.subject_of(key, priority), payload,
                                         headers=headers)
        return bool(ack.duplicate)

    async def announce(self, levels: set[int]) -> None:
        """Tell every host that jobs of these priorities were just stored (not stored
        itself: a host that misses it looks at every priority within a second anyway)."""
        if levels:
            await self.link.nc.publish(self.ready, ",".join(map(str, sorted(levels))).encode())

    async def pending_msg(self, key: str) -> Any:
        """The job's message in the stream (of any priority), or None."""
        from nats.js.errors import NotFoundError

        for subject in (f"{self.subject}.{key}", f"{self.subject}.*.{key}"):
            try:
                return await self.link.js.get_last_msg(self.stream, subject)
            except NotFoundError:
                continue
        return None

    async def store_end(self, key: str, record: dict[str, Any], result: bytes | None,
                        retry_of: str | None = None) -> bytes | None:
        """Store a job's end unless one is stored already: the value stored, or None (this
        one is late). A retried job's new end replaces the old one (`retry_of`: its
        revision) or the pending record put in its place, keeping their history."""
        from nats.js.errors import KeyWrongLastSequenceError

        for _ in range(STORE_TRIES):  # again when the entry changed under us
            value = encode_record(record, result)
            try:
                await self.results.create(key, value)
                return value
            except KeyWrongLastSequenceError:
                pass
            entry = await self.entry(key)
            if entry is None:
                continue  # deleted meanwhile (a purge)
            old, _ = decode_record(entry.value or b"{}")
            if old.get("state") == PENDING:  # a retry's pending record
                history = list(old.get("history") or [])
            elif retry_of is not None and str(entry.revision) == retry_of:
                history = [*(old.get("history") or []), past(old)]
            else:
                return None
            value = encode_record({**record, "history": history}, result)
            try:
                await self.results.update(key, value, last=entry.revision)
                return value
            except KeyWrongLastSequenceError:
                continue  # the retry put its pending record there meanwhile
        return None

    async def entry(self, key: str) -> Any:
        """The job's entry in the results bucket (its value and revision), or None."""
        from nats.js.errors import KeyNotFoundError

        try:
            return await self.results.get(key)
        except KeyNotFoundError:
            return None

    async def end(self, key: str) -> bytes | None:
        """The job's stored end, if it has one (a retried job waiting again has none)."""
        entry = await self.entry(key)
        if entry is None or _waits_again(entry.value or b""):
            return None
        return entry.value or b""

    async def pending(self, key: str) -> bool:
        """Is the job in the stream (waiting or leased)?"""
        return await self.pending_msg(key) is not None

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
        entry = await self.entry(key)
        if entry is not None and not _waits_again(entry.value or b""):
            return _ended_job(entry.value or b"")
        msg = await self.pending_msg(key)
        if msg is None:
            return None
        runs = await self._runs_record(key)
        if entry is not None:
            runs["history"] = decode_record(entry.value or b"{}")[0].get("history")
        return StoredJob(
            id=job_id, task=(msg.headers or {}).get(TASK_HEADER, "?"), payload=msg.data or b"",
            state=PENDING, attempts=int(runs.get("attempts", 0)), runs=int(runs.get("runs", 0)),
            submitted=msg.time.timestamp() if msg.time else 0.0, finished=None, result=None,
            error=runs.get("error"), priority=level_of(msg.subject),
            not_before=runs.get("not_before") or not_before_of(msg),
            history=list(runs.get("history") or []))

    async def recent(self, state: str | None, limit: int) -> list[StoredJob]:
        """The newest ended jobs (of one state if given), read from the results bucket."""
        jobs = []
        for _, _, value in await self.results_now(4.0):
            try:
                job = _ended_job(value)
            except ValueError:
                continue
            if state is None or job.state == state:
                jobs.append(job)
        jobs.sort(key=lambda j: j.finished or 0.0, reverse=True)
        return jobs[:limit]

    async def results_now(self, timeout: float) -> list[tuple[str, int, bytes]]:
        """Every end in the results bucket now, (key, revision, value); not the pending
        records of retried jobs."""
        from nats.js import api

        bucket = f"{self.stream}_results"
        found: list[tuple[str, int, bytes]] = []
        done = asyncio.Event()

        async def take(msg: Any) -> None:
            if msg.data and not _waits_again(msg.data):
                found.append((msg.subject.rsplit(".", 1)[-1], msg.metadata.sequence.stream,
                              msg.data))
            if msg.metadata.num_pending == 0:
                done.set()

        info = await self.link.js.stream_info(f"KV_{bucket}")
        if not info.state.messages:
            return []
        sub = await self.link.js.subscribe(
            f"$KV.{bucket}.>", stream=f"KV_{bucket}", cb=take, ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT)
        try:
            await asyncio.wait_for(done.wait(), timeout)
        finally:
            await sub.unsubscribe()
        return found


def past(record: dict[str, Any]) -> dict[str, Any]:
    """What a job came to, as its history keeps it when it runs again."""
    return {name: record.get(name) for name in ("state", "attempts", "runs", "finished",
                                                "error", "host")}


def _waits_again(value: bytes) -> bool:
    """Is this stored value the record of a retried job waiting again (not an end)?"""
    try:
        return decode_record(value)[0].get("state") == PENDING
    except ValueError:
        return False


def _ended_job(value: bytes) -> StoredJob:
    record, result = decode_record(value)
    return StoredJob(
        id=str(record.get("id")), task=str(record.get("task")), payload=b"",
        state=str(record.get("state")), attempts=int(record.get("attempts") or 0),
        runs=int(record.get("runs") or 0), submitted=float(record.get("submitted") or 0.0),
        finished=record.get("finished"), result=result, error=record.get("error"),
        priority=int(record.get("priority", wire.DEFAULT_PRIORITY)),
        history=list(record.get("history") or []))
