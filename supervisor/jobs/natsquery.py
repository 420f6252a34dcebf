"""The queries of the store shared on NATS (supervisor.jobs.natsstore) for the requests to
the daemon (`job ID`, `jobs`, and the clients that wait on a job): its loop waits for
their answers for QUERY_TIMEOUT at most, or gets them later (`look`, then `answers`)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any

from supervisor.jobs.jetstream import Layout, job_key
from supervisor.jobs.journal import FINAL_STATES, StoredJob, matching
from supervisor.jobs.natsfeed import Feed
from supervisor.jobs.natslink import Link, NatsError

log = logging.getLogger("supervisor.jobs")
QUERY_TIMEOUT = 1.0  # seconds the daemon's loop waits for a request's answer from NATS


class Lookups:
    link: Link
    layout: Layout
    feed: Feed
    problem: str | None
    _ended: deque[str]  # ids whose end was stored (by any host)
    _answers: deque[tuple[str, StoredJob | None]]  # what `look` found
    _gone: set[str]

    def unfinished(self, job_id: str) -> bool:
        """Only what this host holds: a job elsewhere is found by `get`."""
        return job_id in self.feed.leased

    def get(self, job_id: str) -> StoredJob | None:
        return self._query(self.layout.get(job_key(job_id), job_id))

    def recent(self, state: str | None, limit: int, task: str | None = None,
               since: float | None = None) -> list[StoredJob]:
        return matching(self._query(self.layout.recent(state, limit)) or [], task, since)

    def _query(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """For a request to the daemon: its loop waits, so not for long (docbrainctl reads
        NATS itself, and waits longer)."""
        if self.problem is not None:
            coro.close()
            raise NatsError(self.problem)
        return self.link.call(coro, QUERY_TIMEOUT)

    def look(self, job_id: str) -> None:
        self.link.run(self._look(job_id))

    async def _look(self, job_id: str) -> None:
        """Read the job, trying again while NATS cannot answer (the clients wait)."""
        delay = 0.5
        while not self.feed.closing:
            try:
                found = await self.layout.get(job_key(job_id), job_id)
            except Exception as exc:  # unreachable, electing a leader: any failure waits
                log.debug("NATS: job %s not read (%s); again in %g s", job_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self._answers.append((job_id, found))
            self.feed.wake()
            return

    def answers(self) -> list[tuple[str, StoredJob | None]]:
        found = []
        while self._answers:
            job_id, stored = self._answers.popleft()
            found.append((job_id, stored))
            if stored is not None and stored.state in FINAL_STATES and \
                    job_id in self.feed.arrived_ids:
                self._gone.add(job_id)  # ended elsewhere (a cancel): dropped at its turn
        return found

    def finished_elsewhere(self) -> list[str]:
        """The jobs whose entry in the results bucket was written since the last call (an
        end, or the pending record of a retry); those of them pulled here and not leased
        yet are read (`look`): one that ended is dropped when its turn comes (`answers`)."""
        ended = []
        while self._ended:
            job_id = self._ended.popleft()
            ended.append(job_id)
            if job_id in self.feed.arrived_ids:
                self.look(job_id)
        return ended
