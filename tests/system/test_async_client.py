"""AsyncClient against a real daemon: submit, result, map, failures, cancel and priority
from coroutines, many at once on one event loop."""

from __future__ import annotations

import asyncio

import pytest
from conftest import Instance
from helpers_queue import start_naps

from supervisor.client import AsyncClient, CancelRefused, JobCancelled, JobFailed, JobRejected

TASKS = '''\
from workers import task


@task("boom")
def boom(message):
    raise ValueError(message)
'''


def test_submit_result_and_map_from_coroutines(instance: Instance) -> None:
    instance.write_task_module("booms", TASKS)
    instance.write_config('tasks = ["booms"]\n', workers=2)
    assert instance.ctl("start").returncode == 0

    async def main() -> None:
        async with AsyncClient(str(instance.config_path)) as client:
            job_id = await client.submit("echo", {"a": 1}, priority=9)
            assert await client.result(job_id, timeout=60) == {"a": 1}
            # Many coroutines at once, each waiting for its own.
            ids = await asyncio.gather(*(client.submit("echo", i) for i in range(50)))
            values = await asyncio.gather(*(client.result(i, timeout=60) for i in ids))
            assert values == list(range(50))
            assert [v async for v in client.map("echo", range(600))] == list(range(600))
            with pytest.raises(JobFailed, match="broken"):
                await client.result(await client.submit("boom", "broken"), timeout=60)
            with pytest.raises(JobRejected, match="unknown task"):
                await client.submit("nonesuch", 1)
            outcomes = [v async for v in client.map("boom", ["x"], return_exceptions=True)]
            assert isinstance(outcomes[0], JobFailed)
            with pytest.raises(ValueError, match="priority must be"):
                await client.submit("echo", 1, priority=10)
            with pytest.raises(ValueError, match="delay must be"):
                await client.submit("echo", 1, delay=-1)

    asyncio.run(main())


def test_timeout_and_cancel(instance: Instance) -> None:
    start_naps(instance, 1)

    async def main() -> None:
        async with AsyncClient(str(instance.config_path)) as client:
            long_id = await client.submit("nap", 300)
            with pytest.raises(TimeoutError):
                await client.result(long_id, timeout=0.5)
            queued = await client.submit("nap", 0)
            assert await client.cancel(queued) == [queued]
            with pytest.raises(JobCancelled):
                await client.result(queued, timeout=30)
            with pytest.raises(CancelRefused, match="no such job"):
                await client.cancel("nonesuch")
            assert await client.cancel(long_id, terminate=True) == [long_id]
            with pytest.raises(JobCancelled):
                await client.result(long_id, timeout=30)

    asyncio.run(main())
