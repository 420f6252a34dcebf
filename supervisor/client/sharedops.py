"""What a SharedClient (supervisor.client.shared) asks of the queue shared on NATS besides
its jobs' results (`jobs`, `job` with no daemon here), and what it makes there itself
(cancel: supervisor.jobs.natscancel; retry, purge: supervisor.jobs.natsupkeep)."""

from __future__ import annotations

from supervisor.client.errors import CancelRefused
from supervisor.jobs import natscancel, natsupkeep
from supervisor.jobs.jetstream import Layout, job_key
from supervisor.jobs.journal import StoredJob, matching
from supervisor.jobs.natslink import Link

QUERY_TIMEOUT = 10.0
UPKEEP_TIMEOUT = 120.0  # seconds a retry or a purge may take (it reads the results bucket)


class SharedQueries:
    link: Link
    layout: Layout

    def get(self, job_id: str) -> StoredJob | None:
        """The job: its end if it has one, else as it waits in the stream; None if unknown."""
        return self.link.call(self.layout.get(job_key(job_id), job_id), QUERY_TIMEOUT)

    def recent(self, state: str | None, limit: int, task: str | None = None,
               since: float | None = None) -> list[StoredJob]:
        """The newest ended jobs (the results bucket keeps them for result_ttl)."""
        return matching(self.link.call(self.layout.recent(state, limit), QUERY_TIMEOUT),
                        task, since)

    def retry_jobs(self, job_ids: list[str], state: str | None = None,
                   task: str | None = None) -> list[str]:
        """Run failed, dead or cancelled jobs again (all or none: `UpkeepError`, a
        ValueError, names each job that cannot); their ids."""
        return self.link.call(natsupkeep.retry(self.layout, job_ids, state, task),
                              UPKEEP_TIMEOUT)

    def purge_jobs(self, state: str, task: str | None = None, before: float | None = None,
                   apply: bool = False) -> int:
        """How many jobs of `state` a purge takes; with `apply`, forget them."""
        return self.link.call(natsupkeep.purge(self.layout, state, task, before, apply),
                              UPKEEP_TIMEOUT)

    def cancel(self, job_ids: str | list[str], terminate: bool = False) -> list[str]:
        """Cancel jobs, all or none (supervisor.jobs.natscancel); the ids cancelled."""
        ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
        try:
            return self.link.call(natscancel.cancel(self.layout, ids, terminate),
                                  natscancel.CANCEL_TIMEOUT)[0]
        except natscancel.CancelError as exc:
            raise CancelRefused(str(exc)) from None
