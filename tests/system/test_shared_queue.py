"""One job queue shared by several hosts on NATS JetStream (`[queue] backend = "nats"`).

"Hosts" are daemons with state_dirs of their own on this machine, each with its workers;
the NATS servers are real ones (tests.nats_servers), started and ended by pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor.client import Client, JobDead, SharedClient
from tests.conftest import REPO, Instance, pid_gone, wait_for
from tests.helpers_shared import done_count, hosts_running, make_hosts, no_daemon_client, runs_of
from tests.nats_servers import NatsCluster, NatsNode, jetstream, run

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals, Linux /proc")

def test_two_hosts_share_the_jobs_of_a_client_with_no_daemon(
        tmp_path: Path, nats_server: NatsNode) -> None:
    hosts = make_hosts(tmp_path, nats_server.url, 2)
    with hosts_running(hosts, 2):
        _, client = no_daemon_client(tmp_path, nats_server.url)
        with client:
            assert isinstance(client, SharedClient)
            results = list(client.map("echo", [{"n": n} for n in range(2000)], timeout=120))
        assert results == [{"n": n} for n in range(2000)]
        done = [done_count(host) for host in hosts]
        assert sum(done) == 2000 and all(done), done  # every job once; each host ran some
        status = hosts[0].status()
        assert status["store"]["backend"] == "nats"
        assert status["store"]["server"] == nats_server.url
        shown = hosts[0].ctl("status")
        assert f"shared: stream DOCBRAIN on {nats_server.url}" in shown.stdout, shown.stdout


def test_a_host_killed_with_its_workers_loses_no_job(tmp_path: Path,
                                                     nats_server: NatsNode) -> None:
    hosts = make_hosts(tmp_path, nats_server.url, 2, extra="credit = 2\n")
    runs = tmp_path / "runs"
    with hosts_running(hosts, 2):
        doomed, survivor = hosts
        _, client = no_daemon_client(tmp_path, nats_server.url)
        with client:
            ids = client.submit_many_nowait(
                "shared.slow", [{"n": n, "runs": str(runs), "sleep": 0.05} for n in range(200)])
            wait_for(lambda: done_count(doomed) >= 10, 60, "the doomed host to run some jobs")
            pids = [doomed.daemon_pid(), *doomed.marked_pids()]
            for pid in pids:  # the whole host at once: daemon and workers
                os.kill(pid, signal.SIGKILL)
            for pid in pids:
                wait_for(lambda: pid_gone(pid), 30, f"pid {pid} to go")
            results = [client.result(job_id, timeout=120) for job_id in ids]
        assert results == [{"n": n} for n in range(200)]
        counted = runs_of(runs)
        assert set(counted) == set(range(200))
        again = sum(c - 1 for c in counted.values())
        # Only the jobs the dead host held can have run twice: 2 workers x credit 2.
        assert again <= 4, counted.most_common(5)
        assert done_count(survivor) >= 100  # the doomed host had run about 10 when it died


def test_a_frozen_host_loses_its_jobs_to_the_others_and_rejoins(
        tmp_path: Path, nats_server: NatsNode) -> None:
    hosts = make_hosts(tmp_path, nats_server.url, 2, extra="credit = 1\n")
    runs = tmp_path / "runs"
    with hosts_running(hosts, 2):
        frozen, other = hosts
        _, client = no_daemon_client(tmp_path, nats_server.url)
        with client:
            # The first 4 (one per worker: credit 1) run long enough that the jobs the
            # host is seen running are still running when it is frozen, however slowly
            # `status` answers on a loaded machine.
            ids = client.submit_many_nowait(
                "shared.who", [{"n": n, "runs": str(runs), "sleep": 6 if n < 4 else 0.5}
                               for n in range(40)])
            status = frozen.wait_status(
                lambda s: all(w["current_job"] for w in s["workers"]), 60,
                "the host to be running 2 jobs")
            held = [w["current_job"] for w in status["workers"]]
            pids = [frozen.daemon_pid(), *frozen.marked_pids()]
            for pid in pids:  # the whole host: daemon and workers
                os.kill(pid, signal.SIGSTOP)
            try:
                # Its leases lapse after ack_wait (3 s): the other host runs everything.
                results = {job_id: client.result(job_id, timeout=120) for job_id in ids}
                assert [r["n"] for r in results.values()] == list(range(40))
                other_pids = set(other.marked_pids())
                assert {results[job_id]["pid"] for job_id in held} <= other_pids
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
            # Back, it ends the jobs it held (their ends too late: dropped), or gives them
            # back (if it found its workers silent for too long and replaced them).
            frozen.wait_status(lambda s: s["queue"]["running"] == 0, 60,
                               "the frozen host to hold no job")
            for job_id in held:  # the first result stays
                assert client.result(job_id, timeout=30) == results[job_id]
            frozen.wait_ready(2)
            before = done_count(frozen)
            more = client.submit_many_nowait(
                "shared.who", [{"n": n, "runs": str(runs), "sleep": 0.2} for n in range(40)])
            assert [client.result(i, timeout=120)["n"] for i in more] == list(range(40))
        assert done_count(frozen) > before, "the host that was frozen serves again"
        assert frozen.status()["workers"][0]["state"] in ("READY", "BUSY")


def test_a_nats_node_killed_loses_no_job_with_3_replicas(
        tmp_path: Path, nats_cluster: NatsCluster) -> None:
    urls = ", ".join(f'"{u}"' for u in nats_cluster.urls)
    hosts = make_hosts(tmp_path, nats_cluster.urls[0], 2)
    for host in hosts:
        text = host.config_path.read_text()
        host.config_path.write_text(text.replace(f'servers = ["{nats_cluster.urls[0]}"]',
                                                 f"servers = [{urls}]\nreplicas = 3"))
    runs = tmp_path / "runs"
    with hosts_running(hosts, 2):
        root = tmp_path / "client"
        root.mkdir()
        here = Instance(root, root / "state")
        here.write_config(f'[queue]\nbackend = "nats"\n[queue.nats]\nservers = [{urls}]\n'
                          f'replicas = 3\n')
        with Client(str(here.config_path)) as client:
            ids = client.submit_many_nowait(
                "shared.slow", [{"n": n, "runs": str(runs), "sleep": 0.01} for n in range(300)])
            wait_for(lambda: sum(map(done_count, hosts)) >= 50, 60, "50 jobs done")
            leader = nats_cluster.stream_leader("DOCBRAIN") or nats_cluster.nodes[0]
            leader.kill()
            results = [client.result(job_id, timeout=180) for job_id in ids]
        assert results == [{"n": n} for n in range(300)]  # 0 lost
        assert set(runs_of(runs)) == set(range(300))
        for host in hosts:
            status = host.status()
            assert status is not None and all(w["restarts"] == 0 for w in status["workers"])


def test_nats_stopped_for_seconds_loses_nothing_and_restarts_nothing(
        tmp_path: Path, nats_server: NatsNode) -> None:
    hosts = make_hosts(tmp_path, nats_server.url, 2)
    runs = tmp_path / "runs"
    with hosts_running(hosts, 2):
        daemons = [host.daemon_pid() for host in hosts]
        workers = [sorted(host.marked_pids()) for host in hosts]
        _, client = no_daemon_client(tmp_path, nats_server.url)
        with client:
            ids = client.submit_many_nowait(
                "shared.slow", [{"n": n, "runs": str(runs), "sleep": 0.02} for n in range(500)])
            wait_for(lambda: sum(map(done_count, hosts)) >= 50, 60, "50 jobs done")
            nats_server.stop()
            wait_for(lambda: all(h.status()["store"]["server"] is None for h in hosts), 30,
                     "the hosts to see NATS gone")
            shown = hosts[0].ctl("status")
            assert "NOT CONNECTED" in shown.stdout, shown.stdout
            # Through a daemon too: once it has given up on a quick reconnect, one line
            # naming the servers, exit 1 (the queue's fault, not the job's).
            refused = hosts[0].ctl("submit", "echo", "1")
            assert refused.returncode == 1, (refused.stdout, refused.stderr)
            assert "NATS servers unreachable" in refused.stderr and \
                nats_server.url in refused.stderr, refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
            deadline = time.monotonic() + 10
            wait_for(lambda: time.monotonic() > deadline, 15, "10 s without NATS")
            nats_server.restart()
            results = [client.result(job_id, timeout=180) for job_id in ids]
        assert results == [{"n": n} for n in range(500)]
        assert [host.daemon_pid() for host in hosts] == daemons  # never restarted
        assert [sorted(host.marked_pids()) for host in hosts] == workers
        assert set(runs_of(runs)) == set(range(500))
        # Both hosts reconnect; the results may all have come through the first to do so.
        wait_for(lambda: all("NATS: connected again" in h.log_text for h in hosts), 60,
                 "both hosts to reconnect")


def test_a_frozen_nats_server_never_stalls_the_daemon(tmp_path: Path,
                                                     nats_server: NatsNode) -> None:
    """SIGSTOP of the server: the connection stays open and each write waits for its
    timeout (5 s). The daemon's loop must not wait with it: its workers (silent limit 2 s
    here) would take it for dead and exit."""
    hosts = make_hosts(tmp_path, nats_server.url, 1)
    runs = tmp_path / "runs"
    with hosts_running(hosts, 2):
        host = hosts[0]
        workers = sorted(host.marked_pids())
        _, client = no_daemon_client(tmp_path, nats_server.url)
        with client:
            ids = client.submit_many_nowait(
                "shared.slow", [{"n": n, "runs": str(runs), "sleep": 0.02} for n in range(300)])
            wait_for(lambda: done_count(host) >= 30, 60, "30 jobs done")
            nats_server.pause()
            try:
                frozen = time.monotonic()
                while time.monotonic() - frozen < 8:  # longer than a write's timeout
                    assert host.status() is not None  # the daemon answers all along
            finally:
                nats_server.resume()
            results = [client.result(job_id, timeout=180) for job_id in ids]
        assert results == [{"n": n} for n in range(300)]
        assert sorted(host.marked_pids()) == workers
        status = host.status()
        assert status is not None and all(w["restarts"] == 0 for w in status["workers"])
        assert set(runs_of(runs)) == set(range(300))


def test_a_job_that_kills_its_workers_is_dead_on_every_host(tmp_path: Path,
                                                            nats_server: NatsNode) -> None:
    hosts = make_hosts(tmp_path, nats_server.url, 2, workers=1)
    with hosts_running(hosts, 1):
        with Client(str(hosts[0].config_path)) as client:  # through the daemon here
            poison = client.submit("shared.crash", {})
            with pytest.raises(JobDead) as dead:
                client.result(poison, timeout=120)
            assert "on 2 attempts" in dead.value.reason
            assert client.result(client.submit("echo", {"after": 1}), timeout=60) == \
                {"after": 1}  # the pool serves on
        for host in hosts:  # listed as dead by each host: the end is stored in NATS
            listed = host.ctl("jobs", "--state", "dead", "--json")
            assert listed.returncode == 0, listed.stderr
            rows = json.loads(listed.stdout)["jobs"]
            assert [r["id"] for r in rows] == [poison], rows
            assert "on 2 attempts" in rows[0]["error"]["reason"]
        shown = hosts[1].ctl("job", poison)
        assert shown.returncode == 0 and json.loads(shown.stdout)["state"] == "dead"


def test_messages_that_are_no_job_are_dropped_and_counted(tmp_path: Path,
                                                          nats_server: NatsNode) -> None:
    host = make_hosts(tmp_path, nats_server.url, 1, workers=1)[0]
    try:
        host.start_foreground()
        host.wait_ready(1)

        async def garbage() -> None:
            async with jetstream([nats_server.url]) as (_nc, js):
                await js.publish("DOCBRAIN.job.noheader", b'{"x": 1}')
                await js.publish("DOCBRAIN.job.notjson", b"\xff{", headers={
                    "Docbrain-Task": "echo"})
                await js.publish("DOCBRAIN.job.=zz", b"{}", headers={"Docbrain-Task": "echo"})
        run(garbage())
        status = host.wait_status(lambda s: s["store"]["dropped"] == 3, 30,
                                  "3 messages dropped")
        assert status["queue"]["done"] == 0 and status["queue"]["failed"] == 0
        with Client(str(host.config_path)) as client:
            assert client.result(client.submit("echo", [1]), timeout=60) == [1]
        assert host.wait_status(lambda s: s["store"]["stream_pending"] == 0, 30,
                                "the stream empty")["workers"][0]["restarts"] == 0
    finally:
        host.cleanup()


def test_unreachable_servers_fail_a_submit_at_once_naming_them(tmp_path: Path) -> None:
    here = Instance(tmp_path, tmp_path / "state")
    here.write_config('[queue]\nbackend = "nats"\n[queue.nats]\n'
                      'servers = ["nats://127.0.0.1:9"]\nconnect_timeout = 1\n')
    submitted = here.ctl("submit", "echo", "{}", timeout=60)
    assert submitted.returncode == 1, submitted
    assert submitted.stderr.strip().count("\n") == 0, submitted.stderr  # one line
    assert "NATS servers unreachable (nats://127.0.0.1:9)" in submitted.stderr
    assert "Traceback" not in submitted.stderr
    listed = here.ctl("jobs", timeout=60)
    assert listed.returncode == 1 and "nats://127.0.0.1:9" in listed.stderr


def test_the_sqlite_default_needs_no_nats(tmp_path: Path) -> None:
    """`make run`'s path: with no [queue] backend, nothing imports nats."""
    config = tmp_path / "docbrain.toml"
    config.write_text(f'[supervisor]\nstate_dir = "{tmp_path / "state"}"\n')
    code = ("import sys; from supervisor.conf.config import load_config; "
            "from supervisor.jobs.broker import open_store; import supervisor.client; "
            "from supervisor.jobs.held import HeldJobs; "
            f"s = open_store(load_config({str(config)!r}), {str(tmp_path / 'j.sqlite')!r}, "
            "HeldJobs(3)); "
            "print(type(s).__name__, 'nats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.stdout.split() == ["SqliteStore", "False"], out.stderr
