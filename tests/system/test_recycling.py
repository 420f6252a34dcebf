"""Recycling: a worker over its job or memory limit finishes its job and is replaced."""

from __future__ import annotations

from conftest import Instance

from supervisor.client import Client

TASKS = """\
from workers import task

_hoard = []

@task("hoard")
def hoard(mib):
    _hoard.append(bytearray(mib * 2**20))  # touched: private memory of this worker
    return len(_hoard)
"""


def test_worker_recycled_after_max_jobs_loses_nothing(instance: Instance) -> None:
    instance.write_config("max_jobs_per_worker = 7\ncredit = 4\n", workers=1)
    assert instance.ctl("start").returncode == 0
    first = instance.wait_ready(1)["workers"][0]
    with Client(str(instance.config_path)) as client:
        results = list(client.map("echo", range(60), timeout=120))
    assert results == list(range(60))
    status = instance.wait_ready(1)
    worker = status["workers"][0]
    assert worker["pid"] != first["pid"]
    assert worker["restarts"] >= 60 // 7 - 1
    assert worker["last_exit"] == "recycled: 7 jobs done (max_jobs_per_worker 7)"
    assert status["queue"]["done"] == 60 and status["queue"]["duplicate_runs"] == 0
    assert {"pss_bytes", "uss_bytes"} <= worker.keys() and worker["uss_bytes"] > 0
    assert "slot is FATAL" not in instance.log_text  # recycling is not a crash loop


def test_worker_recycled_over_its_own_memory(instance: Instance) -> None:
    instance.write_task_module("hoarder", TASKS)
    instance.write_config('tasks = ["hoarder"]\nmax_memory_mb = 120\n', workers=1)
    assert instance.ctl("start").returncode == 0
    first = instance.wait_ready(1)["workers"][0]["pid"]
    with Client(str(instance.config_path)) as client:
        assert client.result(client.submit("hoard", 150), timeout=60) == 1
    status = instance.wait_status(lambda s: s["workers"][0]["pid"] not in (None, first)
                                  and s["workers"][0]["state"] == "READY", 60, "a new worker")
    assert status["workers"][0]["last_exit"].startswith("recycled: ")
    assert "(max_memory_mb 120)" in status["workers"][0]["last_exit"]


def test_standby_worker_takes_a_dead_workers_slot_over(instance: Instance) -> None:
    import os
    import signal

    from conftest import pid_gone

    instance.write_config("standby = 1\n", workers=2)
    assert instance.ctl("start").returncode == 0
    status = instance.wait_status(lambda s: (s["supervisor"]["standby"] or {}).get("ready"),
                                  60, "a loaded standby")
    spare = status["supervisor"]["standby"]["pid"]
    assert spare not in [w["pid"] for w in status["workers"]]
    assert spare in instance.marked_pids()
    victim = status["workers"][1]["pid"]
    os.kill(victim, signal.SIGKILL)
    after = instance.wait_status(
        lambda s: s["workers"][1]["pid"] == spare and s["workers"][1]["state"] == "READY",
        30, "the standby in slot 1")
    assert after["workers"][1]["restarts"] == 1
    assert after["workers"][1]["last_exit"] == "killed by SIGKILL"
    # It runs jobs as slot 1, and a new standby is loaded behind it.
    with Client(str(instance.config_path)) as client:
        assert list(client.map("echo", range(50), timeout=60)) == list(range(50))
    renewed = instance.wait_status(
        lambda s: (s["supervisor"]["standby"] or {}).get("ready")
        and s["supervisor"]["standby"]["pid"] != spare, 60, "a new standby")
    new_spare = renewed["supervisor"]["standby"]["pid"]
    assert instance.ctl("stop").returncode == 0
    assert pid_gone(new_spare) and pid_gone(spare)
    assert instance.marked_pids() == []
