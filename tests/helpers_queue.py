"""What the queue's tests share: a broker on a journal in a temporary directory (unit
tests), and a task module whose task sleeps (tests with real daemons)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import zmq

from supervisor.conf.config import load_config
from supervisor.jobs.broker import Broker
from supervisor.proto import wire

# A task module: "nap" sleeps for its payload's seconds and returns them.
NAP_TASKS = '''\
import time
from workers import task


@task("nap")
def nap(seconds):
    time.sleep(seconds)
    return seconds
'''


def make_broker(tmp_path: Path, jobs: Iterable[tuple[str, int]] = (), credit: int = 4,
                workers: str = "") -> Broker:
    """A broker with 2 worker slots of `credit`, `workers` more [workers] lines, and these
    (id, priority) jobs of the task echo waiting in its store. Close it."""
    config_path = tmp_path / "docbrain.toml"
    config_path.write_text(f'[supervisor]\nstate_dir = "{tmp_path}"\n'
                           f'[workers]\ncount = 2\ncredit = {credit}\n{workers}')
    broker = Broker(load_config(str(config_path)), zmq.Context.instance(),
                    f"ipc://{tmp_path}/q.sock", str(tmp_path / "journal.db"))
    for job_id, priority in jobs:
        broker.store.submit(job_id, "echo", b"null", 0.0, priority)
    return broker


def numbered(n: int, priority: int = wire.DEFAULT_PRIORITY) -> list[tuple[str, int]]:
    """Jobs j0 .. j(n-1) of one priority, for make_broker."""
    return [(f"j{i}", priority) for i in range(n)]


def start_naps(instance: Any, workers: int) -> None:
    """Start the daemon of a conftest.Instance with NAP_TASKS and `workers` workers."""
    instance.write_task_module("naps", NAP_TASKS)
    instance.write_config('tasks = ["naps"]\n', workers=workers)
    result = instance.ctl("start")
    assert result.returncode == 0, result.stderr
