"""Workers spawned ahead (Spawner.prestart): the first spawns go to them, one that died is
passed over, and those not needed exit when told."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from supervisor.pool.spawner import Spawner, WorkerProcess
from supervisor.proto.spec import WorkerSpec


def _spec(tmp_path: Path, slot: int) -> WorkerSpec:
    return WorkerSpec(slot=slot, endpoint=f"ipc://{tmp_path}/nobody-listens",
                      daemon_pid=os.getpid(), tasks=(), heartbeat_interval=0.2,
                      heartbeat_liveness=5)


def test_spawns_go_to_the_prestarted_ones_that_live(tmp_path: Path) -> None:
    spawner = Spawner()
    spawner.prestart(2, os.getpid())
    first = spawner._warm[0][0]
    dead, alive = (p.pid for p, _, _ in spawner._warm)
    started: list[WorkerProcess] = []
    try:
        os.kill(dead, signal.SIGKILL)
        first.join(30)  # reaped, so that its pipe is closed before the spec is sent
        started.append(spawner.spawn(_spec(tmp_path, 0)))
        assert started[0].pid == alive  # the dead one passed over
        started.append(spawner.spawn(_spec(tmp_path, 1)))  # none left: spawned afresh
        assert started[1].pid not in (dead, alive)
        assert started[1].process.is_alive()
    finally:
        for proc in started:
            proc.signal(signal.SIGKILL)
            proc.process.join(30)
        spawner.discard_prestarted()
    assert all(p.process.exitcode is not None for p in started)


def test_prestarted_ones_not_needed_exit_when_told() -> None:
    spawner = Spawner()
    spawner.prestart(2, os.getpid())
    pids = [p.pid for p, _, _ in spawner._warm]
    # Their pipes closed, they exit 0 once torch is imported (killed if that takes 5 s).
    codes = spawner.discard_prestarted()
    assert len(codes) == 2 and set(codes) <= {0, -signal.SIGKILL}, codes
    assert spawner._warm == []
    for pid in pids:  # reaped: gone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"pid {pid} still runs")
