"""AsyncClient on the queue shared on NATS with no daemon here (`[queue] backend = "nats"`):
`AsyncClient(config)` is one of these then, as `Client(config)` is a SharedClient.

Its calls are those of a SharedClient (supervisor.client.shared), whose own thread runs
the NATS connection's event loop: a submit or a cancel runs on a worker thread of the
application's loop (it returns once JetStream stored the jobs), and a wait for a result is
a future of the NATS thread that the application's loop awaits, so that any number of
coroutines wait at once and no thread waits with them.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

from supervisor.client.aio import AsyncClient
from supervisor.client.errors import PayloadError, encode_payload
from supervisor.client.local import ACK_TIMEOUT
from supervisor.client.shared import SharedClient
from supervisor.conf.settings import Config
from supervisor.proto import wire


class AsyncSharedClient(AsyncClient):
    def __init__(self, config: Config | str | None = None, *, window: int = 1000,
                 ack_timeout: float = ACK_TIMEOUT) -> None:
        self._client = SharedClient(config, window=window, ack_timeout=ack_timeout)
        self.config = self._client.config
        self.window = window  # AsyncClient.map: at most this many outstanding

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)

    async def submit(self, task: str, payload: Any = None, timeout: float | None = None, *,
                     priority: int = wire.DEFAULT_PRIORITY, delay: float | None = None,
                     eta: datetime | float | None = None) -> str:
        return await asyncio.to_thread(self._client.submit, task, payload, timeout,
                                       priority=priority, delay=delay, eta=eta)

    async def submit_many(self, task: str, payloads: list[Any], timeout: float | None = None,
                          *, priority: int = wire.DEFAULT_PRIORITY,
                          delay: float | None = None,
                          eta: datetime | float | None = None) -> list[str]:
        return await asyncio.to_thread(self._client.submit_many_nowait, task, payloads,
                                       priority=priority, delay=delay, eta=eta)

    async def result(self, job_id: str, timeout: float | None = None) -> Any:
        return await asyncio.wrap_future(self._client.result_future(job_id, timeout))

    async def _submit_chunk(self, task: str, payloads: list[Any],
                            priority: int) -> list[tuple[str, Exception | None]]:
        """For AsyncClient.map: per payload its job id and, if it was not stored, why."""
        problems: dict[int, tuple[str, Exception]] = {}
        good = []
        for index, payload in enumerate(payloads):
            try:
                encode_payload(payload, self._client.payload_limit)
                good.append(payload)
            except ValueError as exc:
                job_id = uuid.uuid4().hex
                problems[index] = (job_id, PayloadError(job_id, str(exc)))
        ids = iter(await self.submit_many(task, good, priority=priority) if good else [])
        return [problems[i] if i in problems else (next(ids), None)
                for i in range(len(payloads))]

    async def cancel(self, job_ids: str | list[str], terminate: bool = False) -> list[str]:
        return await asyncio.to_thread(self._client.cancel, job_ids, terminate)
