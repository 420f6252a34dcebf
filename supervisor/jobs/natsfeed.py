"""The jobs a host pulls from the shared queue (supervisor.jobs.natsstore), on the NATS
thread: as many as its workers have credit for (`want`), from the highest priority that
has any, each kept leased while the daemon's loop runs, and a pipe that the loop polls,
written when jobs came.

A priority is pulled from when it may have jobs (`maybe`): a submitter announced some
(supervisor.jobs.jetstream: NAME.ready), or a look at every priority found one. That look
(`_scan`, a pull of one job from each other priority at once) runs once a second while the
host has credit: it finds what an announcement lost, and retries and delayed jobs whose
time came (JetStream hands those to the next pull; it announces nothing). A pull asks for
what is there now and never waits on the server (a no-wait pull), so a higher priority's
announcement is acted on at once. A delayed job pulled before its time is given back to
the queue with the rest of its delay (a nak with a delay: JetStream keeps the time).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import os
import time
from collections import deque
from typing import Any

from supervisor.conf.settings import NatsSettings
from supervisor.jobs.held import QueuedJob
from supervisor.jobs.jetstream import LEVELS, TASK_HEADER, Layout, key_job, not_before_of
from supervisor.jobs.natslink import Link
from supervisor.proto import wire

log = logging.getLogger("supervisor.jobs")
SCAN_EVERY = 1.0  # seconds between looks at every priority, while the host has credit
PULL_TIMEOUT = 2.0  # seconds a no-wait pull waits for the server's answer at most
MAX_PULL = 256   # jobs in one pull request at most
EARLY = 0.02     # seconds: a delayed job pulled this close to its time runs now


class Puller:
    """No-wait pulls from one consumer: the jobs there now, at once (an empty answer
    included), on a reply subject of its own. One pull at a time."""

    def __init__(self, link: Link, stream: str, durable: str) -> None:
        self.link = link
        self.request = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = ""
        self._came: asyncio.Queue[Any] = asyncio.Queue()
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self.inbox = self.link.nc.new_inbox()
        await self.link.nc.subscribe(self.inbox, cb=self._came.put)

    async def take(self, count: int) -> list[Any]:
        """Up to `count` jobs; what came late for an earlier pull is taken first."""
        async with self._lock:
            msgs = [m for m in self._drain() if not _status(m)]
            if len(msgs) >= count:
                return msgs
            body = json.dumps({"batch": count - len(msgs), "no_wait": True}).encode()
            await self.link.nc.publish(self.request, body, reply=self.inbox)
            deadline = time.monotonic() + PULL_TIMEOUT
            while len(msgs) < count:
                try:
                    msg = await asyncio.wait_for(self._came.get(),
                                                 max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    break  # what comes later is taken at the next pull
                if _status(msg):
                    break  # 404 no more jobs, 408, 409: this pull is over
                msgs.append(msg)
            return msgs

    def _drain(self) -> list[Any]:
        msgs = []
        while not self._came.empty():
            msgs.append(self._came.get_nowait())
        return msgs


def _status(msg: Any) -> bool:
    """A status message of the server (no job): no more jobs, a timeout, an error."""
    return not msg.data and bool((msg.headers or {}).get("Status"))


class Feed:
    def __init__(self, link: Link, layout: Layout, settings: NatsSettings) -> None:
        self.link, self.layout, self.settings = link, layout, settings
        # Pulled, not leased yet, by priority (the daemon's thread leases the highest).
        self.arrived: dict[int, deque[tuple[QueuedJob, Any]]] = {n: deque() for n in LEVELS}
        self.arrived_ids: set[str] = set()  # the ids of those
        self.leased: dict[str, Any] = {}                      # job id -> its NATS message
        self.want = 0              # jobs this host's workers have credit for now
        self.maybe: set[int] = set()  # priorities that may have jobs to pull
        self._news = dict.fromkeys(LEVELS, 0)  # announcements of each priority so far
        # Delayed jobs given back here before their time: (when, priority), soonest first.
        self.deferred: list[tuple[float, int]] = []
        self._pullers: dict[int, Puller] = {}
        self.touched = time.monotonic()  # the daemon's loop last ran (its last commit)
        self.stream_pending = 0    # the stream's jobs not handed to any host yet
        self.stream_running = 0    # and those leased to a host (this one included)
        self.dropped = 0           # messages on the job subjects that were no job
        self.closing = False
        self._wanted = asyncio.Event()  # set (on the NATS thread) when `want` grew
        self._woke = False  # written to the pipe since the loop last read it
        self.wake_r, self._wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self._wake_w, False)

    async def start(self) -> None:
        """On the NATS thread, once connected."""
        for level in LEVELS:
            if level not in self._pullers:  # (a reconnect after a failed start: kept)
                puller = Puller(self.link, self.layout.stream, self.layout.levels[level])
                await puller.start()
                self._pullers[level] = puller
        await self.link.nc.subscribe(self.layout.ready, cb=self._on_ready)
        self.maybe.update(LEVELS)  # what waits already
        for loop in (self._pull(), self._scan(), self._keep_leases()):
            asyncio.ensure_future(loop)

    async def _on_ready(self, msg: Any) -> None:
        for text in msg.data.decode(errors="replace").split(","):
            if text.strip().isdigit() and int(text) in self._news:
                self.note(int(text))

    def note(self, level: int) -> None:
        """On the NATS thread: jobs of this priority may be there to pull."""
        self._news[level] += 1
        self.maybe.add(level)
        self._wanted.set()

    def count(self) -> int:
        return sum(len(jobs) for jobs in self.arrived.values())

    def top(self) -> int | None:
        """The highest priority of the jobs pulled and not leased, if any."""
        return next((n for n in LEVELS if self.arrived[n]), None)

    def set_want(self, count: int) -> None:
        """From the daemon's thread: the pull loop wakes at once when the credit grew."""
        grew = count > self.want
        self.want = count
        if grew:
            self.link.loop.call_soon_threadsafe(self._wanted.set)

    def wake(self) -> None:
        """Once until the loop reads the pipe (a write is a system call, and a thread
        switch): it reads what came before it handles any of it (`woken`)."""
        if self._woke:
            return
        self._woke = True
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full: the loop is awake already

    def woken(self) -> None:
        """On the daemon's thread, before it handles what the NATS thread brought: the
        pipe is emptied first, so that a wake after it writes again."""
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        self._woke = False

    def held(self) -> list[Any]:
        """The messages of every job this host holds: leased, or pulled and not leased."""
        return [*self.leased.values(),
                *(m for jobs in self.arrived.values() for _, m in list(jobs))]

    def close(self) -> None:
        os.close(self.wake_r)
        os.close(self._wake_w)

    def _room(self, level: int) -> int:
        """How many jobs of this priority the host has credit for: its credit less what
        it holds of this priority and higher (lower ones wait behind these anyway)."""
        return self.want - sum(len(self.arrived[n]) for n in LEVELS if n >= level)

    async def _pull(self) -> None:
        """Pull jobs while this host's workers have credit for more than it holds, from
        the priorities that may have some, highest first."""
        while not self.closing:
            if not self.link.up.is_set():
                await asyncio.sleep(0.1)
                continue
            levels = [n for n in LEVELS if n in self.maybe and self._room(n) > 0]
            if not levels:
                self._wanted.clear()  # then a second look: what came meanwhile sets it
                if not any(n in self.maybe and self._room(n) > 0 for n in LEVELS):
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wanted.wait(), SCAN_EVERY)
                continue
            level = levels[0]
            news = self._news[level]
            asked = min(self._room(level), MAX_PULL)
            try:
                msgs = await self._pullers[level].take(asked)
            except Exception as exc:  # disconnected meanwhile: nats-py reconnects
                log.debug("NATS: pull: %s", exc)
                await asyncio.sleep(0.5)
                continue
            if len(msgs) < asked and self._news[level] == news:
                self.maybe.discard(level)  # none left (until the next announcement)
            await self._arrive(level, msgs)

    async def _scan(self) -> None:
        """Once a second while the host has credit: one job from each priority not thought
        to have any (all at once), and the priorities of the delayed jobs due now."""
        while not self.closing:
            await asyncio.sleep(self._scan_wait())
            now = time.time()
            while self.deferred and self.deferred[0][0] <= now:
                self.note(heapq.heappop(self.deferred)[1])
            if self.want <= 0 or not self.link.up.is_set():
                continue
            quiet = [n for n in LEVELS if n not in self.maybe]
            found = await asyncio.gather(*(self._pullers[n].take(1) for n in quiet),
                                         return_exceptions=True)
            for level, msgs in zip(quiet, found):
                if isinstance(msgs, list) and msgs:
                    await self._arrive(level, msgs)
                    self.note(level)

    def _scan_wait(self) -> float:
        if self.deferred:
            return max(0.0, min(SCAN_EVERY, self.deferred[0][0] - time.time()))
        return SCAN_EVERY

    async def _arrive(self, level: int, msgs: list[Any]) -> None:
        came = False
        for msg in msgs:
            job = await self._job_of(msg, level)
            if job is not None:
                self.arrived_ids.add(job.id)
                self.arrived[level].append((job, msg))
                came = True
        if came:
            self.wake()

    async def _job_of(self, msg: Any, level: int) -> QueuedJob | None:
        """The job a pulled message carries; None (and the message dealt with) if it is
        no job, one whose end is stored already (its acknowledgement was lost), or one
        whose time has not come (given back until then)."""
        task = (msg.headers or {}).get(TASK_HEADER)
        key = msg.subject.rsplit(".", 1)[-1]
        try:
            job_id = key_job(key)
        except ValueError:
            job_id = ""
        problem = None if task and job_id else f"no {TASK_HEADER} header or a bad key"
        if problem is None:
            try:
                wire.loads(msg.data)
            except (ValueError, RecursionError) as exc:
                problem = f"its payload is not JSON: {exc}"
        if problem is not None:
            self.dropped += 1
            log.warning("NATS: dropped a message on %s that is no job: %s", msg.subject,
                        problem)
            await msg.term()
            return None
        not_before = not_before_of(msg)
        if not_before is not None and not_before - time.time() > EARLY:
            await msg.nak(delay=not_before - time.time())
            heapq.heappush(self.deferred, (not_before, level))
            return None
        job = QueuedJob(job_id, str(task), msg.data, priority=level)
        if msg.metadata.num_delivered > 1:  # delivered before: it may have ended, or lost runs
            if await self.layout.end(key) is not None:
                await msg.ack()
                return None
            job.attempts, job.runs = await self.layout.lost_runs(key)
        return job

    async def _keep_leases(self) -> None:
        """Keep this host's jobs leased while its loop runs (a frozen daemon stops this:
        after ack_wait its jobs go to other hosts), and read the stream's counts."""
        ack_wait = self.settings.ack_wait
        next_touch = 0.0
        while not self.closing:
            await asyncio.sleep(1.0)
            if not self.link.up.is_set():
                continue
            try:
                infos = await self.layout.consumer_infos()
                self.stream_pending = sum(i.num_pending or 0 for i in infos)
                self.stream_running = sum(i.num_ack_pending or 0 for i in infos)
            except Exception as exc:
                log.debug("NATS: consumer info: %s", exc)
            now = time.monotonic()
            if now < next_touch or now - self.touched > ack_wait / 2:
                continue
            next_touch = now + ack_wait / 3
            for msg in self.held():
                try:
                    await msg.in_progress()
                except Exception as exc:
                    log.debug("NATS: in_progress: %s", exc)
                    break
