"""The jobs one host pulls from the shared queue (supervisor.jobs.natsstore), on the NATS
thread: as many as its workers have credit for (`want`), each kept leased while the
daemon's loop runs, and a pipe that the loop polls, written when jobs came."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from typing import Any

from supervisor.conf.settings import NatsSettings
from supervisor.jobs.held import QueuedJob
from supervisor.jobs.jetstream import TASK_HEADER, Layout, key_job
from supervisor.jobs.natslink import Link
from supervisor.proto import wire

log = logging.getLogger("supervisor.jobs")
PULL_WAIT = 1.0  # seconds a pull request waits on the server for jobs to come
MAX_PULL = 256   # jobs in one pull request at most


class Feed:
    def __init__(self, link: Link, layout: Layout, settings: NatsSettings) -> None:
        self.link, self.layout, self.settings = link, layout, settings
        self.arrived: deque[tuple[QueuedJob, Any]] = deque()  # pulled, not leased yet
        self.leased: dict[str, Any] = {}                      # job id -> its NATS message
        self.want = 0              # jobs this host's workers have credit for now
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

    def start(self) -> None:
        """On the NATS thread, once connected."""
        for loop in (self._pull(), self._keep_leases()):
            asyncio.ensure_future(loop)

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
        return [*self.leased.values(), *(m for _, m in list(self.arrived))]

    def close(self) -> None:
        os.close(self.wake_r)
        os.close(self._wake_w)

    async def _pull(self) -> None:
        """Pull jobs while this host's workers have credit for more than it holds."""
        while not self.closing:
            count = self.want - len(self.arrived)
            if count <= 0 or not self.link.up.is_set():
                self._wanted.clear()
                if count <= 0 and self.want - len(self.arrived) > 0:
                    continue  # it grew meanwhile
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wanted.wait(), 0.5 if count <= 0 else 0.1)
                continue
            try:
                msgs = await self.layout.consumer.fetch(min(count, MAX_PULL), timeout=PULL_WAIT)
            except asyncio.TimeoutError:
                continue
            except Exception as exc:  # disconnected meanwhile: nats-py reconnects
                log.debug("NATS: pull: %s", exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                job = await self._job_of(msg)
                if job is not None:
                    self.arrived.append((job, msg))
            if msgs:
                self.wake()

    async def _job_of(self, msg: Any) -> QueuedJob | None:
        """The job a pulled message carries; None (and the message dealt with) if it is
        no job, or one whose end is stored already (its acknowledgement was lost)."""
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
        job = QueuedJob(job_id, str(task), msg.data)
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
                info = await self.layout.consumer.consumer_info()
                self.stream_pending = info.num_pending or 0
                self.stream_running = info.num_ack_pending or 0
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
