"""What the tests of the queue shared on NATS (tests/system/test_shared_*.py) share:
hosts (daemons with state_dirs of their own on this machine, each with its workers) on a
real NATS server, and the client of a machine with no daemon."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from supervisor.client import Client
from tests.conftest import Instance

TASKS = """\
import os, time
from workers import task

@task("shared.slow")
def slow(payload):
    # Each run leaves a line, so that a test counts the runs of each job.
    with open(payload["runs"], "a") as fh:
        fh.write(f"{payload['n']} {os.getpid()}\\n")
    time.sleep(payload.get("sleep", 0))
    return {"n": payload["n"]}

@task("shared.who")
def who(payload):
    with open(payload["runs"], "a") as fh:
        fh.write(f"{payload['n']} {os.getpid()}\\n")
    time.sleep(payload.get("sleep", 0))
    return {"n": payload["n"], "pid": os.getpid()}

@task("shared.clock")
def clock(seconds):
    time.sleep(seconds)
    return time.time()  # when it ended

@task("shared.flaky")
def flaky(payload):
    if not os.path.exists(payload["fixed"]):
        raise RuntimeError("not fixed yet")
    return payload["n"]

@task("shared.crash")
def crash(payload):
    os._exit(3)  # the worker dies with the job, every time
"""


def make_hosts(tmp_path: Path, url: str, count: int, extra: str = "",
               workers: int = 2) -> list[Instance]:
    """`count` hosts on the NATS server at `url` (`extra`: more [workers] settings)."""
    hosts = []
    for index in range(count):
        root = tmp_path / f"host{index}"
        root.mkdir()
        host = Instance(root, root / "state")
        host.write_task_module("sharedtasks", TASKS)
        host.write_config(extra + f"""\
            tasks = ["sharedtasks"]
            [queue]
            backend = "nats"
            max_attempts = 2
            [queue.nats]
            servers = ["{url}"]
            ack_wait = 3
            """, workers=workers)
        hosts.append(host)
    return hosts


@contextlib.contextmanager
def hosts_running(hosts: list[Instance], workers: int) -> Iterator[None]:
    """The hosts' daemons started and their workers READY; all ended afterwards."""
    try:
        for host in hosts:
            host.start_foreground()
        for host in hosts:
            host.wait_ready(workers)
        yield
    finally:
        for host in hosts:
            host.cleanup()


def no_daemon_client(tmp_path: Path, url: str) -> tuple[Instance, Client]:
    """The client of a machine with no daemon (a third process, its own state_dir)."""
    root = tmp_path / "client"
    root.mkdir()
    here = Instance(root, root / "state")
    here.write_config(f'[queue]\nbackend = "nats"\n[queue.nats]\nservers = ["{url}"]\n')
    return here, Client(str(here.config_path))


def done_count(host: Instance) -> int:
    status = host.status()
    return status["queue"]["done"] if status else 0


def runs_of(path: Path) -> Counter[int]:
    if not path.exists():
        return Counter()
    return Counter(int(line.split()[0]) for line in path.read_text().splitlines() if line)
