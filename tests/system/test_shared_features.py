"""Priorities and delays on the queue shared on NATS (`[queue] backend = "nats"`): real
hosts (daemons with their workers) and a real NATS server, the jobs submitted by the client
of a machine with no daemon. The same features on one host's journal are in
tests/system/test_priority.py and test_delay.py."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from supervisor.client import (AsyncClient, AsyncSharedClient, CancelRefused, Client,
                               JobCancelled, JobFailed, PayloadError)

from tests.helpers_shared import hosts_running, make_hosts, no_daemon_client, runs_of
from tests.nats_servers import NatsNode

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals, Linux /proc")
BULK, NAP = 60, 0.3  # 4.5 s of backlog on 2 hosts x 2 workers


def test_a_high_priority_job_overtakes_the_shared_backlog(tmp_path: Path,
                                                          nats_server: NatsNode) -> None:
    hosts = make_hosts(tmp_path, nats_server.url, 2)
    with hosts_running(hosts, 2):
        _, client = no_daemon_client(tmp_path, nats_server.url)
        with client:
            bulk = client.submit_many_nowait("shared.clock", [NAP] * BULK, priority=1)
            client.result(bulk[0], timeout=60)  # the backlog runs
            submitted = time.time()
            question = client.submit("shared.clock", 0, priority=9)
            answered = client.result(question, timeout=60)
            ends = [client.result(job_id, timeout=120) for job_id in bulk]
        before = sum(end < submitted for end in ends)
        between = sum(submitted <= end < answered for end in ends)
        # In the order of submission it would have waited for every bulk job not ended
        # yet; it waits for those the 4 workers run and hold (2 each, credit at priority 1).
        assert between <= 12, f"{between} bulk jobs ended while the question waited"
        assert BULK - before - between >= 20, "the backlog was nearly done: test too slow"
        listed = hosts[0].ctl("jobs", "--json", "--limit", "100")
        assert listed.returncode == 0, listed.stderr
        rows = {row["id"]: row["priority"] for row in json.loads(listed.stdout)["jobs"]}
        assert rows[question] == 9 and {rows[j] for j in bulk if j in rows} == {1}


def test_a_delayed_shared_job_waits_for_its_time_across_a_host_restart(
        tmp_path: Path, nats_server: NatsNode) -> None:
    (host,) = make_hosts(tmp_path, nats_server.url, 1, workers=1)
    with hosts_running([host], 1):
        _, client = no_daemon_client(tmp_path, nats_server.url)
        with client:
            submitted = time.time()
            soon = client.submit("shared.clock", 0, delay=4)
            later = client.submit("shared.clock", 0, delay=3600)
            now = client.submit("shared.clock", 0)
            assert client.result(now, timeout=60) < submitted + 4  # not behind the others
            host.wait_status(lambda s: s["queue"]["scheduled"] == 2, 30,
                             "the host to count both delayed jobs")
            assert host.ctl("stop").returncode == 0  # the delays are kept by NATS
            host.start_foreground()
            host.wait_ready(1)
            assert client.result(soon, timeout=60) >= submitted + 4
            shown = json.loads(host.ctl("job", later).stdout)
            assert shown["state"] == "pending" and shown["scheduled_at"] >= submitted + 3599
            cli = host.ctl("submit", "--delay", "1", "--priority", "8", "--wait",
                           "shared.clock", "0")
            assert cli.returncode == 0, cli.stderr
            assert float(cli.stdout) >= time.time() - 60  # it ran, after its delay


def test_failed_shared_jobs_run_again_and_ended_ones_are_purged(tmp_path: Path,
                                                                nats_server: NatsNode) -> None:
    (host,) = make_hosts(tmp_path, nats_server.url, 1, workers=1)
    fixed = tmp_path / "fixed"
    with hosts_running([host], 1):
        here, client = no_daemon_client(tmp_path, nats_server.url)
        with client:
            ids = client.submit_many_nowait(
                "shared.flaky", [{"n": n, "fixed": str(fixed)} for n in range(3)])
            for job_id in ids:
                with pytest.raises(JobFailed, match="not fixed yet"):
                    client.result(job_id, timeout=60)
            fixed.touch()  # the bug is fixed
            one = here.ctl("retry", ids[0])
            assert one.returncode == 0 and one.stdout == f"{ids[0]} pending again\n", one.stderr
            assert client.result(ids[0], timeout=60) == 0
            shown = json.loads(here.ctl("job", ids[0]).stdout)
            assert shown["state"] == "done" and shown["attempts"] == 0
            assert [h["state"] for h in shown["history"]] == ["failed"]
            assert "not fixed yet" in json.dumps(shown["history"][0]["error"])
            again = here.ctl("retry", ids[0], ids[1])  # all or none: ids[1] is not retried
            assert again.returncode == 2 and f"{ids[0]} is done" in again.stderr
            assert "Traceback" not in again.stderr
            with pytest.raises(JobFailed):
                client.result(ids[1], timeout=5)
            rest = here.ctl("retry", "--state", "failed")
            assert rest.returncode == 0 and "2 failed job(s) retried" in rest.stderr
            assert [client.result(i, timeout=60) for i in ids[1:]] == [1, 2]

            counted = here.ctl("purge", "--state", "done")
            assert counted.returncode == 0 and "would remove 3 done job(s)" in counted.stdout
            assert client.result(ids[2], timeout=5) == 2  # nothing changed
            gone = here.ctl("purge", "--state", "done", "--yes")
            assert gone.returncode == 0 and "removed 3 done job(s)" in gone.stdout
            assert here.ctl("job", ids[2]).returncode != 0  # unknown now

            later = client.submit_many_nowait("shared.clock", [0, 0], delay=3600)
            refused = here.ctl("purge", "--state", "pending", "--task", "shared.clock", "--yes")
            assert refused.returncode == 2 and "all at once" in refused.stderr
            assert json.loads(here.ctl("job", later[0]).stdout)["state"] == "pending"
            emptied = here.ctl("purge", "--state", "pending", "--yes")
            assert emptied.returncode == 0 and "removed 2 pending job(s)" in emptied.stdout
            assert here.ctl("job", later[0]).returncode != 0


def test_shared_jobs_are_cancelled_where_they_wait_and_with_terminate_where_they_run(
        tmp_path: Path, nats_server: NatsNode) -> None:
    hosts = make_hosts(tmp_path, nats_server.url, 2, workers=1, extra="credit = 1\n")
    runs = tmp_path / "runs"
    with hosts_running(hosts, 1):
        here, client = no_daemon_client(tmp_path, nats_server.url)
        with client:
            long = client.submit_many_nowait(
                "shared.who", [{"n": n, "runs": str(runs), "sleep": 60} for n in range(2)])
            queued = client.submit_many_nowait(
                "shared.who", [{"n": n, "runs": str(runs)} for n in range(2, 8)])
            for host in hosts:  # one long job on each host's worker
                host.wait_status(lambda s: bool(s["workers"][0]["current_job"]), 60,
                                 "the host to run a long job")
            refused = here.ctl("cancel", queued[0], long[0])
            assert refused.returncode == 2, refused.stderr
            assert f"{long[0]} is running (host " in refused.stderr
            assert "--terminate" in refused.stderr and "Traceback" not in refused.stderr
            cancelled = here.ctl("cancel", *queued[:3])
            assert cancelled.returncode == 0, cancelled.stderr
            assert cancelled.stdout.splitlines() == [f"{j} cancelled" for j in queued[:3]]
            with Client(str(hosts[0].config_path)) as on_host:  # through a host's client
                assert on_host.cancel(queued[3:]) == queued[3:]
                with pytest.raises(CancelRefused, match="is cancelled already"):
                    on_host.cancel(queued[3])
            for job_id in queued:
                with pytest.raises(JobCancelled):
                    client.result(job_id, timeout=30)
            workers = {host: host.status()["workers"][0]["pid"] for host in hosts}
            stopped = here.ctl("cancel", "--terminate", *long)
            assert stopped.returncode == 0, stopped.stderr
            assert f"{long[0]} cancelled (its worker was stopped)" in stopped.stdout
            for job_id in long:
                with pytest.raises(JobCancelled):
                    client.result(job_id, timeout=30)
            for host in hosts:  # each worker stopped and replaced
                host.wait_status(lambda s, h=host: s["workers"][0]["state"] == "READY"
                                 and s["workers"][0]["pid"] != workers[h], 60,
                                 "a new worker, READY")
            again = here.ctl("cancel", long[0], "nosuchjob")
            assert again.returncode == 2 and f"{long[0]} is cancelled already" in again.stderr
            assert "nosuchjob: no such job" in again.stderr
            retried = here.ctl("retry", queued[0])
            assert retried.returncode == 0, retried.stderr
            assert client.result(queued[0], timeout=60)["n"] == 2
        ran = runs_of(runs)
        assert ran[0] == 1 and ran[1] == 1, ran  # stopped, and not run again
        assert ran[2] == 1 and not any(ran[n] for n in range(3, 8)), ran  # never started


def test_async_client_talks_to_nats_itself_with_no_daemon_here(tmp_path: Path,
                                                               nats_server: NatsNode) -> None:
    (host,) = make_hosts(tmp_path, nats_server.url, 1, workers=2)
    runs = tmp_path / "runs"
    with hosts_running([host], 2):
        here, _ = no_daemon_client(tmp_path, nats_server.url)

        async def main() -> None:
            async with AsyncClient(str(here.config_path)) as client:
                assert isinstance(client, AsyncSharedClient)
                job_id = await client.submit("echo", {"a": 1}, priority=9)
                assert await client.result(job_id, timeout=60) == {"a": 1}
                ids = await asyncio.gather(*(client.submit("echo", i) for i in range(50)))
                values = await asyncio.gather(*(client.result(i, timeout=60) for i in ids))
                assert values == list(range(50))  # 50 waits at once, on one thread
                assert [v async for v in client.map("echo", range(600))] == list(range(600))
                mixed = [v async for v in client.map("echo", [1, float("nan"), 3],
                                                     return_exceptions=True)]
                assert mixed[0] == 1 and mixed[2] == 3 and isinstance(mixed[1], PayloadError)
                failed = await client.submit(
                    "shared.flaky", {"n": 0, "fixed": str(tmp_path / "never")})
                with pytest.raises(JobFailed, match="not fixed yet"):
                    await client.result(failed, timeout=60)
                later = await client.submit_many(
                    "shared.who", [{"n": 1, "runs": str(runs)}], delay=3600)
                assert await client.cancel(later) == later
                with pytest.raises(JobCancelled):
                    await client.result(later[0], timeout=30)
                with pytest.raises(TimeoutError):
                    await client.result(await client.submit("shared.clock", 30), timeout=0.5)

        asyncio.run(main())
    assert not runs.exists()  # the cancelled job never ran
