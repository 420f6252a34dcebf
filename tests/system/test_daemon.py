"""Integration: real daemons and spawned workers in temporary state_dirs, real signals."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from conftest import Instance, pid_gone, wait_for

STATUS_KEYS = {"pid", "state", "uptime_s", "version", "state_dir"}
WORKER_KEYS = {"slot", "pid", "state", "uptime_s", "restarts", "last_exit", "rss_bytes",
               "cpu_percent"}
GUARDS = {"PYTORCH_MPS_ENABLE_WORKSTREAM_WATCHDOG": "0", "MPS_VISIBLE_DEVICES": "",
          "CUDA_VISIBLE_DEVICES": "", "PYTORCH_ENABLE_MPS_FALLBACK": "1",
          "TOKENIZERS_PARALLELISM": "false"}


def test_start_status_stop(instance: Instance) -> None:
    started = instance.ctl("start")
    assert started.returncode == 0, started.stderr
    assert "2 workers READY" in started.stdout

    status = instance.status()
    assert status is not None
    assert STATUS_KEYS <= status["supervisor"].keys()
    assert status["supervisor"]["state"] == "running"
    assert status["supervisor"]["state_dir"] == str(instance.state_dir)
    assert [w["state"] for w in status["workers"]] == ["READY", "READY"]
    for worker in status["workers"]:
        assert WORKER_KEYS <= worker.keys()
        assert worker["restarts"] == 0 and worker["last_exit"] is None
        assert worker["rss_bytes"] > 0
    assert GUARDS.items() <= status["env"].items()
    assert status["env"]["OMP_NUM_THREADS"] == status["env"]["MKL_NUM_THREADS"]
    assert "OBJC_DISABLE_INITIALIZE_FORK_SAFETY" not in status["env"]
    worker_pids = [w["pid"] for w in status["workers"]]
    assert sorted(instance.marked_pids()) == sorted(worker_pids)

    human = instance.ctl("status")
    assert human.returncode == 0
    lines = human.stdout.splitlines()
    assert lines[0].endswith("workers 2/2 serving")
    assert lines[2] == "queue: 0 pending, 0 running, 0 done, 0 failed, 0 dead"
    assert lines[3].split()[:3] == ["SLOT", "PID", "STATE"]
    assert lines[4].split()[:3] == ["0", str(worker_pids[0]), "READY"]
    assert max(len(line) for line in lines) <= 100

    # The guards are in the workers' real environment, set before anything imported torch.
    import psutil
    env = psutil.Process(worker_pids[0]).environ()
    assert GUARDS.items() <= env.items()

    # As systemctl start: a running service is what was asked for.
    again = instance.ctl("start")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"docbrain is already running (pid {status['supervisor']['pid']})\n"
    second = instance.ctl("start", "--foreground")  # this one cannot be the daemon
    assert second.returncode == 1
    assert f"already running (pid {status['supervisor']['pid']})" in second.stderr

    stopped = instance.ctl("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert instance.marked_pids() == []
    assert all(pid_gone(pid) for pid in worker_pids)
    assert pid_gone(status["supervisor"]["pid"])
    assert not (instance.state_dir / "docbrain.pid").exists()
    assert not list((instance.state_dir / "run").iterdir())

    after = instance.ctl("status")
    assert after.returncode == 3
    assert after.stderr == \
        f"docbrainctl: docbrain is not running (state_dir {instance.state_dir})\n"
    gone = instance.ctl("stop")  # as systemctl stop: nothing to stop is not a failure
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout == f"docbrain is not running (state_dir {instance.state_dir})\n"


def test_killed_worker_is_replaced(instance: Instance) -> None:
    assert instance.ctl("start").returncode == 0
    before = instance.wait_ready(2)
    victim = before["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    after = instance.wait_status(
        lambda s: s["workers"][0]["pid"] not in (None, victim)
        and s["workers"][0]["state"] == "READY", 30, "a new READY worker in slot 0")
    slot = after["workers"][0]
    assert slot["restarts"] == 1
    assert slot["last_exit"] == "killed by SIGKILL"
    assert after["workers"][1]["pid"] == before["workers"][1]["pid"]
    assert after["workers"][1]["restarts"] == 0
    assert "killed by SIGKILL; restarting in" in instance.log_text


def test_crash_looping_slot_goes_fatal_and_control_answers(instance: Instance) -> None:
    # Slot 1's worker exits at once; slot 0 stays healthy.
    instance.write_task_module("crashy", """\
        import os, sys
        if os.environ["DOCBRAIN_SLOT"] == "1":
            print("crashy: refusing to start in slot 1", file=sys.stderr)
            sys.exit(3)
        """)
    instance.write_config("""\
        tasks = ["crashy"]
        [restart]
        backoff_start = 0.05
        backoff_max = 0.2
        flap_limit = 4
        """)
    daemon = instance.start_foreground()
    status = instance.wait_status(lambda s: s["workers"][1]["state"] == "FATAL", 60,
                                  "slot 1 FATAL")
    assert status["workers"][0]["state"] == "READY"
    fatal = status["workers"][1]
    assert fatal["pid"] is None
    assert fatal["reason"].startswith("died 4 times within 60 s; last: exit code 3")
    assert fatal["restarts"] == 3
    assert "crashy: refusing to start in slot 1" in fatal["stderr_tail"]
    assert "FATAL" in instance.ctl("status").stdout
    # The worker's stderr is in the daemon log, with its slot and pid.
    assert "[slot 1 pid " in instance.log_text
    assert "] crashy: refusing to start in slot 1" in instance.log_text
    assert instance.ctl("stop").returncode == 0
    assert daemon.wait(30) == 0


def test_status_latency_while_a_slot_crash_loops(instance: Instance, capsys) -> None:
    instance.write_task_module("always_crash", "import sys\nsys.exit(7)\n")
    instance.write_config("""\
        tasks = ["always_crash"]
        [restart]
        backoff_start = 0.01
        backoff_max = 0.02
        flap_limit = 100000
        """, workers=1)
    instance.start_foreground()
    instance.wait_status(lambda s: s["workers"][0]["restarts"] >= 3, 60, "a crash loop")
    from supervisor.proto import control
    from supervisor.proto.paths import StatePaths
    endpoint = StatePaths.for_state_dir(str(instance.state_dir)).endpoint("control")
    latencies = []
    first = control.call(endpoint, "status", timeout=5)["workers"][0]["restarts"]
    deadline = time.monotonic() + 60
    restarts = first
    # Ask for as long as it takes the slot to crash three more times.
    while restarts < first + 3 or len(latencies) < 50:
        assert time.monotonic() < deadline, "the slot stopped crash-looping"
        t0 = time.perf_counter()
        reply = control.call(endpoint, "status", timeout=5)
        latencies.append(time.perf_counter() - t0)
        assert reply["workers"][0]["state"] in ("STARTING", "LOADING", "BACKOFF")
        restarts = reply["workers"][0]["restarts"]
    final = reply
    latencies.sort()
    with capsys.disabled():
        print(f"\nstatus latency while crash-looping: "
              f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
              f"max {latencies[-1] * 1000:.1f} ms over {len(latencies)} calls, "
              f"{final['workers'][0]['restarts']} restarts")


def test_start_reports_a_worker_that_dies_while_starting(instance: Instance) -> None:
    instance.write_task_module("broken", "import sys\nsys.exit(3)\n")  # a death, not an error
    instance.write_config("""\
        tasks = ["broken"]
        [restart]
        backoff_start = 0.05
        flap_limit = 3
        """, workers=1)
    result = instance.ctl("start")
    assert result.returncode == 1
    first = result.stderr.splitlines()[0]
    assert first.startswith("docbrainctl: worker slot 0 failed to start: died 3 times")
    assert "Traceback" not in first
    # A failed start leaves nothing running.
    wait_for(lambda: instance.daemon_pid() is None, 30, "the daemon to go")
    assert instance.marked_pids() == []


@pytest.mark.parametrize("source, error", [
    ("import no_such_module_here\n",
     "ModuleNotFoundError: No module named 'no_such_module_here'"),
    ("raise RuntimeError('model file missing')\n", "RuntimeError: model file missing"),
    ("def broken(:\n", "SyntaxError: "),
], ids=["import-error", "raises", "syntax-error"])
def test_a_task_module_that_does_not_import_fails_start_at_once(
        instance: Instance, source: str, error: str) -> None:
    instance.write_task_module("broken", source)
    instance.write_config('tasks = ["broken"]\n', workers=2)  # default restart policy
    result = instance.ctl("start")
    assert result.returncode == 1
    first = result.stderr.splitlines()[0]
    # Whichever slot's worker fails first is the one start reports.
    match = re.match(r"docbrainctl: worker slot (\d) failed to start: task module 'broken' "
                     r"failed to import: (.*)", first)
    assert match and match.group(2).startswith(error), result.stderr
    # Not a crash: no restart, no backoff; the traceback is in the log for whoever looks.
    log = instance.log_text
    assert "restarting in" not in log
    assert f"slot {match.group(1)}: slot is FATAL, not retried" in log
    assert log.count("slot 0: spawned worker pid") == log.count("slot 1: spawned worker pid") == 1
    assert "Traceback (most recent call last)" in log
    wait_for(lambda: instance.daemon_pid() is None, 30, "the daemon to go")
    assert instance.marked_pids() == []


def test_bad_configuration_exits_2_and_starts_nothing(instance: Instance) -> None:
    instance.write_config("""\
        [restart]
        flap_limt = 3
        """)
    result = instance.ctl("start")
    assert result.returncode == 2
    assert result.stderr.strip() == "docbrainctl: restart.flap_limt: unknown key"
    instance.write_config('state_dir = 3\n')  # lands in [workers]: unknown key there
    assert instance.ctl("start").returncode == 2
    instance.write_config("")
    zero = instance.ctl("start", "--workers", "0")
    assert zero.returncode == 2
    assert zero.stderr.strip() == "docbrainctl: workers.count: must be at least 1, got 0"
    instance.env["DOCBRAIN_WORKERS_COUNT"] = "two"
    env = instance.ctl("start")
    assert env.returncode == 2 and "DOCBRAIN_WORKERS_COUNT" in env.stderr
    assert len(env.stderr.strip().splitlines()) == 1
    usage = instance.ctl("start", "--workers", "x")
    assert usage.returncode == 2
    assert not (instance.state_dir / "docbrain.pid").exists()
    assert instance.marked_pids() == []


def test_sigterm_and_sigint_stop_the_daemon_gracefully(instance: Instance) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        daemon = instance.start_foreground()
        status = instance.wait_ready(2)
        os.kill(daemon.pid, signum)
        assert daemon.wait(30) == 0
        assert all(pid_gone(w["pid"]) for w in status["workers"])
        assert instance.marked_pids() == []
        assert "SIGTERM: stopping" in instance.log_text  # the workers were asked, not killed


def test_stop_kills_a_worker_that_ignores_sigterm(instance: Instance) -> None:
    instance.write_task_module("stubborn", """\
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        """)
    instance.write_config('tasks = ["stubborn"]\n', workers=1)
    assert instance.ctl("start").returncode == 0
    pid = instance.wait_ready(1)["workers"][0]["pid"]
    t0 = time.monotonic()
    result = instance.ctl("stop", "--timeout", "0.5")
    assert result.returncode == 0, result.stderr
    assert pid_gone(pid)
    assert time.monotonic() - t0 < 5 + 10  # well under the configured stop_timeout path
    assert "still running 0.5 s after SIGTERM" in instance.log_text
    assert instance.ctl("stop", "--timeout", "-1").returncode == 2


def test_hung_worker_is_killed_and_replaced(instance: Instance) -> None:
    instance.write_config("", workers=1)
    assert instance.ctl("start").returncode == 0
    pid = instance.wait_ready(1)["workers"][0]["pid"]
    os.kill(pid, signal.SIGSTOP)
    status = instance.wait_status(
        lambda s: s["workers"][0]["pid"] not in (None, pid) and s["workers"][0]["state"] == "READY",
        30, "the hung worker replaced")
    assert status["workers"][0]["last_exit"].startswith("killed by SIGKILL (no heartbeat for")
    assert pid_gone(pid)


def test_worker_that_never_gets_ready_is_killed(instance: Instance) -> None:
    instance.write_task_module("slow", "import time\ntime.sleep(600)\n")
    instance.write_config("""\
        tasks = ["slow"]
        load_timeout = 0.5
        [restart]
        flap_limit = 1
        """, workers=1)
    instance.start_foreground()
    status = instance.wait_status(lambda s: s["workers"][0]["state"] == "FATAL", 60, "FATAL")
    assert "killed by SIGKILL (not ready within 0.5 s)" in status["workers"][0]["reason"]


def test_daemon_killed_then_started_again(instance: Instance) -> None:
    assert instance.ctl("start").returncode == 0
    old = instance.wait_ready(2)
    os.kill(old["supervisor"]["pid"], signal.SIGKILL)
    # Linux: PR_SET_PDEATHSIG takes the workers down with the daemon.
    wait_for(lambda: all(pid_gone(w["pid"]) for w in old["workers"]), 30, "orphans to die")
    assert (instance.state_dir / "docbrain.pid").exists()  # stale, but not locked
    status = instance.ctl("status")
    assert status.returncode == 3
    assert status.stderr == (f"docbrainctl: docbrain is not running; the last daemon (pid "
                             f"{old['supervisor']['pid']}) died without stopping (state_dir "
                             f"{instance.state_dir})\n")
    result = instance.ctl("start")
    assert result.returncode == 0, result.stderr
    new = instance.wait_ready(2)
    assert new["supervisor"]["pid"] != old["supervisor"]["pid"]
    assert not {w["pid"] for w in new["workers"]} & {w["pid"] for w in old["workers"]}


def test_deep_state_dir_keeps_sockets_in_a_short_private_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    inst = Instance(tmp_path, deep)
    try:
        assert inst.ctl("start", "--workers", "1").returncode == 0
        from supervisor.proto.paths import StatePaths
        paths = StatePaths.for_state_dir(str(deep))
        assert not paths.run_dir.startswith(str(deep))
        assert os.stat(paths.run_dir).st_mode & 0o777 == 0o700
        assert os.path.exists(paths.socket("control"))
        assert inst.ctl("stop").returncode == 0
        assert not os.path.exists(paths.socket("control"))
    finally:
        inst.cleanup()


def test_restart_replaces_daemon_and_workers(instance: Instance) -> None:
    assert instance.ctl("start", "--workers", "1").returncode == 0
    old = instance.wait_ready(1)
    result = instance.ctl("restart", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert f"docbrain stopped (pid {old['supervisor']['pid']})" in result.stdout
    new = instance.wait_ready(2)
    assert new["supervisor"]["pid"] != old["supervisor"]["pid"]
    assert pid_gone(old["workers"][0]["pid"])


def test_hup_ttin_ttou_are_handled_and_usr1_reopens_the_log(instance: Instance) -> None:
    daemon = instance.start_foreground()
    pids = [w["pid"] for w in instance.wait_ready(2)["workers"]]
    os.kill(daemon.pid, signal.SIGHUP)
    status = instance.wait_status(lambda s: s["supervisor"]["reload"]["state"] == "done",
                                  30, "the reload done")
    assert [w["pid"] for w in status["workers"]] == pids  # nothing changed: no roll
    assert "reload (SIGHUP), generation 1: no changes" in instance.log_text
    os.kill(daemon.pid, signal.SIGTTIN)
    instance.wait_ready(3)
    os.kill(daemon.pid, signal.SIGTTOU)
    status = instance.wait_status(lambda s: len(s["workers"]) == 2, 30, "2 workers again")
    assert [w["pid"] for w in status["workers"]] == pids
    text = instance.log_text
    assert "SIGTTIN: 2 -> 3 workers" in text and "SIGTTOU: 3 -> 2 workers" in text
    log = instance.state_dir / "logs" / "docbrain.log"
    log.rename(log.with_suffix(".log.1"))
    os.kill(daemon.pid, signal.SIGUSR1)
    wait_for(lambda: "log file reopened" in instance.log_text, 30, "a new log file")
    assert daemon.poll() is None
    assert instance.wait_ready(2)["supervisor"]["state"] == "running"
