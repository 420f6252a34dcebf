"""Submit jobs and get their results: `Client` (supervisor.client.local) talks to the
daemon of this machine; with `[queue] backend = "nats"` and no daemon here, it talks to
the shared queue directly (supervisor.client.shared); `AsyncClient` likewise, for asyncio
(supervisor.client.aio, aioshared)."""

from supervisor.client import aio, local
from supervisor.client.aio import AsyncClient
from supervisor.client.aioshared import AsyncSharedClient
from supervisor.client.errors import (CancelRefused, DaemonNotRunning, JobCancelled, JobDead,
                                      JobError, JobFailed, JobRejected, NotAcknowledged,
                                      PayloadError, QueueRefused, QueueUnreachable, UnknownJob,
                                      encode_payload)
from supervisor.client.local import Client
from supervisor.client.shared import SharedClient

local.SHARED = SharedClient  # what Client(config) is when the queue is NATS's, no daemon here
aio.SHARED = AsyncSharedClient  # and AsyncClient(config)

__all__ = ["AsyncClient", "AsyncSharedClient", "CancelRefused", "Client", "DaemonNotRunning",
           "JobCancelled", "JobDead", "JobError", "JobFailed", "JobRejected",
           "NotAcknowledged", "PayloadError", "QueueRefused", "QueueUnreachable", "SharedClient",
           "UnknownJob", "encode_payload"]
