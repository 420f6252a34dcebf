"""Integration: reload (SIGHUP, `docbrainctl reload`) and scaling (`scale`, SIGTTIN/SIGTTOU)
against real daemons and real workers, while jobs run."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from conftest import Instance, pid_gone, wait_for

from supervisor.client import Client
from supervisor.proto import control
from supervisor.proto.paths import StatePaths

TASKS = '''\
import json, os, time
from workers import task

LOG = %r
# A test holds new workers in LOADING until it creates this file.
GATE = os.environ.get("RELOAD_GATE")
while GATE and not os.path.exists(GATE):
    time.sleep(0.02)


@task("mark")
def mark(x):
    """Which configuration ran the job: the variable [env] sets, and the worker's pid."""
    time.sleep(0.01)
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(x) + "\\n").encode())
    finally:
        os.close(fd)
    return [x, os.environ.get("RELOAD_MARK"), os.getpid()]
'''


def configure(instance: Instance, mark: str, workers: int, tasks: str = '["rtasks"]',
              env: str = "") -> None:
    instance.write_config(f"tasks = {tasks}\n[env]\nRELOAD_MARK = \"{mark}\"\n{env}",
                          workers=workers)


def start(instance: Instance, log: Path, workers: int = 2) -> dict[str, Any]:
    instance.write_task_module("rtasks", TASKS % str(log))
    configure(instance, "one", workers)
    result = instance.ctl("start")
    assert result.returncode == 0, result.stderr
    return instance.wait_ready(workers)


def call(instance: Instance, name: str, **args: Any) -> dict[str, Any]:
    endpoint = StatePaths.for_state_dir(str(instance.state_dir)).endpoint("control")
    return control.call(endpoint, name, args, timeout=15)


def states(status: dict[str, Any]) -> list[str]:
    return [w["state"] for w in status["workers"]]


def reload_ended(status: dict[str, Any], generation: int) -> bool:
    reload = status["supervisor"]["reload"]
    return bool(reload["generation"] == generation and reload["state"] in ("done", "failed"))


class Mapper(threading.Thread):
    """Client.map in a thread, so that the test can reload while the jobs run."""

    def __init__(self, instance: Instance, n: int) -> None:
        super().__init__(daemon=True)
        self.instance, self.n = instance, n
        self.results: list[Any] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with Client(str(self.instance.config_path)) as client:
                self.results = list(client.map("mark", range(self.n), timeout=120))
        except BaseException as exc:  # reported by the test
            self.error = exc


def test_sighup_with_a_new_worker_count_while_500_jobs_run(instance: Instance,
                                                           tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    before = start(instance, log)
    old_pids = {w["pid"] for w in before["workers"]}
    daemon = before["supervisor"]["pid"]
    mapper = Mapper(instance, 500)
    mapper.start()
    try:
        wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 50, 60,
                 "50 jobs run")
        configure(instance, "two", workers=3)  # a new count, and an environment to roll
        os.kill(daemon, signal.SIGHUP)
        status = instance.wait_status(lambda s: reload_ended(s, 1), 120, "the reload to end")
    finally:
        mapper.join(180)
    assert mapper.error is None, mapper.error
    assert status["supervisor"]["reload"]["state"] == "done", status["supervisor"]["reload"]
    assert status["supervisor"]["pid"] == daemon

    # Every job done once, in order, and some ran under each configuration.
    assert [r[0] for r in mapper.results] == list(range(500))
    marks = Counter(r[1] for r in mapper.results)
    assert set(marks) == {"one", "two"} and marks["two"] > 0, marks
    runs = Counter(json.loads(line) for line in log.read_text().splitlines())
    assert set(runs) == set(range(500))
    assert sum(runs.values()) == 500, "a worker stopped by the reload ran a job twice"
    final = instance.wait_status(lambda s: s["queue"]["done"] == 500, 30, "500 done")
    assert (final["queue"]["failed"], final["queue"]["dead"]) == (0, 0)

    # Three workers now, all new, all of the new configuration.
    assert states(final) == ["READY"] * 3
    assert not old_pids & {w["pid"] for w in final["workers"]}
    assert all(pid_gone(pid) for pid in old_pids)
    generations = {w["generation"] for w in final["workers"]}
    assert len(generations) == 1 and generations != {before["workers"][0]["generation"]}
    assert final["env"]["RELOAD_MARK"] == "two"

    # One at a time, each old worker replaced by a spare already loaded: no slot went
    # without a loaded worker.
    text = instance.log_text
    replaced = re.findall(r"slot (\d+): worker recycled \(reload\)", text)
    assert sorted(replaced) == ["0", "1"]
    for slot in replaced:
        at = text.index(f"slot {slot}: worker recycled (reload)")
        taken = re.search(rf"slot {slot}: spare worker pid (\d+) takes over", text[at:])
        assert taken, f"slot {slot} was not taken over by a spare"
        assert f"spare worker pid {taken.group(1)} loaded and waiting" in text[:at]


def test_reload_reports_changes_and_bad_files_change_nothing(instance: Instance,
                                                             tmp_path: Path) -> None:
    before = start(instance, tmp_path / "runs.log")
    pids = [w["pid"] for w in before["workers"]]

    same = instance.ctl("reload")
    assert same.returncode == 0, same.stderr
    assert "no changes" in same.stdout

    good = instance.config_path.read_text()
    instance.config_path.write_text(good + "[workers\n")
    broken = instance.ctl("reload")
    assert broken.returncode == 2
    assert len(broken.stderr.strip().splitlines()) == 1, broken.stderr
    # SIGHUP with the same file: refused by the daemon, logged, nothing changes.
    os.kill(before["supervisor"]["pid"], signal.SIGHUP)
    wait_for(lambda: "reload (SIGHUP) refused" in instance.log_text, 30, "the refusal logged")

    instance.config_path.write_text(good.replace(str(instance.state_dir),
                                                 str(tmp_path / "elsewhere")))
    moved = call_ctl_reload_direct(instance)
    assert "state_dir cannot change" in moved
    instance.config_path.write_text(good.replace("[workers]\n", '[workers]\ngpus = "all"\n', 1))
    spread = call_ctl_reload_direct(instance)
    assert "workers.gpus cannot change while running; use docbrainctl restart" in spread

    instance.config_path.write_text(good)
    after = instance.wait_ready(2)
    assert [w["pid"] for w in after["workers"]] == pids
    assert after["supervisor"]["reload"]["generation"] == 1  # only the no-change reload ran


def call_ctl_reload_direct(instance: Instance) -> str:
    """The daemon's own refusal (docbrainctl would read the moved state_dir and find no
    daemon there)."""
    try:
        call(instance, "reload")
    except control.ControlError as exc:
        return str(exc)
    raise AssertionError("the reload was accepted")


def test_reload_whose_new_workers_cannot_start_puts_the_old_configuration_back(
        instance: Instance, tmp_path: Path) -> None:
    before = start(instance, tmp_path / "runs.log")
    pids = [w["pid"] for w in before["workers"]]
    configure(instance, "two", workers=3, tasks='["rtasks", "no_such_module"]')
    failed = instance.ctl("reload")
    assert failed.returncode == 1
    assert "reload failed" in failed.stderr and "no_such_module" in failed.stderr
    assert failed.stderr.count("\n") == 1, failed.stderr

    status = instance.wait_ready(2)
    assert [w["pid"] for w in status["workers"]] == pids  # never replaced
    assert status["env"]["RELOAD_MARK"] == "one"
    assert status["supervisor"]["workers_target"] == 2
    with Client(str(instance.config_path)) as client:
        result = client.result(client.submit("mark", 9), timeout=30)
    assert result[:2] == [9, "one"]

    # The file fixed: the next reload applies it.
    configure(instance, "two", workers=2)
    fixed = instance.ctl("reload")
    assert fixed.returncode == 0, fixed.stderr
    assert instance.status()["env"]["RELOAD_MARK"] == "two"  # type: ignore[index]


def test_scale_and_ttin_ttou_change_the_pool_while_jobs_run(instance: Instance,
                                                            tmp_path: Path) -> None:
    before = start(instance, tmp_path / "runs.log")
    daemon = before["supervisor"]["pid"]
    mapper = Mapper(instance, 300)
    mapper.start()
    try:
        up = instance.ctl("scale", "4")
        assert up.returncode == 0, up.stderr
        assert "scaled to 4 workers (was 2)" in up.stdout
        serving = states(instance.status() or {"workers": []})
        assert len(serving) == 4 and set(serving) <= {"READY", "BUSY"}, serving
        os.kill(daemon, signal.SIGTTOU)
        instance.wait_status(lambda s: len(s["workers"]) == 3, 60, "3 workers after SIGTTOU")
        down = instance.ctl("scale", "1")
        assert down.returncode == 0, down.stderr
        assert "scaled to 1 worker (was 3)" in down.stdout
        os.kill(daemon, signal.SIGTTIN)
        status = instance.wait_status(
            lambda s: len(s["workers"]) == 2 and all(
                w["state"] in ("READY", "BUSY") for w in s["workers"]), 60,
            "2 workers after SIGTTIN")
    finally:
        mapper.join(180)
    assert mapper.error is None, mapper.error
    assert [r[0] for r in mapper.results] == list(range(300))
    assert status["supervisor"]["workers_target"] == 2
    final = instance.wait_status(lambda s: s["queue"]["done"] == 300, 30, "300 done")
    assert (final["queue"]["failed"], final["queue"]["dead"]) == (0, 0)
    assert len(instance.marked_pids()) == 2  # the removed workers are gone

    for bad in ("0", "-3", "many", "100000"):
        refused = instance.ctl("scale", bad)
        assert refused.returncode == 2, (bad, refused.stderr)
    try:
        call(instance, "scale", count="3")
    except control.ControlError as exc:
        assert "count must be an integer" in str(exc)
    else:
        raise AssertionError("a string count was accepted")
    assert len(instance.status()["workers"]) == 2  # type: ignore[index]

    # A count set by `scale` lasts until the next reload, which says it ends it.
    assert instance.ctl("scale", "3").returncode == 0
    reloaded = instance.ctl("reload")
    assert reloaded.returncode == 0, reloaded.stderr
    assert "workers running: 3 -> 2 (the count `scale` set ends)" in reloaded.stdout
    assert len(instance.wait_ready(2)["workers"]) == 2


def test_ttou_never_goes_below_one_worker(instance: Instance, tmp_path: Path) -> None:
    before = start(instance, tmp_path / "runs.log", workers=1)
    os.kill(before["supervisor"]["pid"], signal.SIGTTOU)
    wait_for(lambda: "SIGTTOU ignored: one worker is the fewest" in instance.log_text, 30,
             "SIGTTOU refused")
    assert [w["pid"] for w in instance.wait_ready(1)["workers"]] == \
        [before["workers"][0]["pid"]]


def test_reload_asked_for_during_a_reload_runs_after_it(instance: Instance,
                                                        tmp_path: Path) -> None:
    before = start(instance, tmp_path / "runs.log")
    gate = tmp_path / "gate"
    configure(instance, "two", workers=2, env=f'RELOAD_GATE = "{gate}"\n')
    os.kill(before["supervisor"]["pid"], signal.SIGHUP)
    rolling = instance.wait_status(lambda s: s["supervisor"]["reload"]["state"] == "rolling",
                                   30, "the first reload rolling")
    assert rolling["supervisor"]["standby"]["ready"] is False  # held by the gate
    configure(instance, "three", workers=2, env=f'RELOAD_GATE = "{gate}"\n')
    queued = instance.ctl("reload", "--no-wait")
    assert queued.returncode == 0, queued.stderr
    assert "a reload is in progress; this one runs when it ends" in queued.stdout
    assert "reload 2 accepted" in queued.stdout
    gate.touch()
    final = instance.wait_status(lambda s: reload_ended(s, 2) and states(s) == ["READY"] * 2,
                                 120, "the second reload done")
    assert final["supervisor"]["reload"]["state"] == "done"
    assert final["env"]["RELOAD_MARK"] == "three"
    assert "reload (docbrainctl reload): queued behind the reload in progress" in \
        instance.log_text
    with Client(str(instance.config_path)) as client:
        assert client.result(client.submit("mark", 1), timeout=30)[:2] == [1, "three"]
