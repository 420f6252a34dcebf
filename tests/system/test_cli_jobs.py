"""docbrainctl submit / jobs / job against a real daemon."""

from __future__ import annotations

import json

from conftest import Instance

TASKS = """\
from workers import task

@task("demo.double")
def double(payload):
    if payload == "boom":
        raise ValueError("cannot double boom")
    return payload * 2
"""


def test_submit_jobs_and_job(instance: Instance) -> None:
    instance.write_task_module("demo_tasks", TASKS)
    instance.write_config('tasks = ["demo_tasks"]\n', workers=1)
    assert instance.ctl("submit", "echo", "1").returncode == 3  # no daemon yet
    assert instance.ctl("start").returncode == 0

    waited = instance.ctl("submit", "demo.double", "21", "--wait")
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout) == 42

    queued = instance.ctl("submit", "echo", '{"a": [1, 2]}')
    assert queued.returncode == 0
    job_id = queued.stdout.strip()
    assert len(job_id) == 32

    failed = instance.ctl("submit", "demo.double", '"boom"', "--wait")
    assert failed.returncode == 1
    assert failed.stderr.strip().endswith("failed: ValueError: cannot double boom")

    # Bad input: one line, exit 2, nothing submitted.
    before = instance.status()["queue"]  # type: ignore[index]
    for args, message in [
        (("echo", "{a"), "PAYLOAD_JSON is not JSON"),
        (("no.such.task", "1"), "rejected: unknown task 'no.such.task'"),
        (("echo", "1", "--output", "x.jsonl"), "--output needs --input"),
        (("echo", "1", "--id-field", "id"), "--id-field needs --input"),
    ]:
        result = instance.ctl("submit", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    bad_input = instance.root / "bad.jsonl"
    bad_input.write_text('1\n{"x": \n3\n')
    result = instance.ctl("submit", "echo", "--input", str(bad_input))
    assert result.returncode == 2 and "bad.jsonl line 2 is not JSON" in result.stderr
    # A blank line would shift every output line after it: refused, with its number.
    bad_input.write_text('1\n\n3\n')
    result = instance.ctl("submit", "echo", "--input", str(bad_input))
    assert result.returncode == 2
    assert result.stderr == f"docbrainctl: {bad_input} line 2: blank line; give one JSON " \
                            "payload per line\n"
    bad_input.write_text('{"id": "c1", "text": "a"}\n{"text": "b"}\n')
    result = instance.ctl("submit", "echo", "--input", str(bad_input), "--id-field", "id")
    assert result.returncode == 2
    assert result.stderr.startswith(f"docbrainctl: {bad_input} line 2: no 'id' key")
    after = instance.status()["queue"]  # type: ignore[index]
    assert sum(after.values()) == sum(before.values())

    # --input / --output: one line per job, in input order, failures included.
    source = instance.root / "in.jsonl"
    source.write_text("\n".join(json.dumps(p) for p in [1, "ab", "boom", [3]]) + "\n")
    out = instance.root / "out.jsonl"
    many = instance.ctl("submit", "demo.double", "--input", str(source), "--output", str(out))
    assert many.returncode == 1  # one job failed
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["state"] for line in lines] == ["done", "done", "failed", "done"]
    assert [line.get("result") for line in lines] == [2, "abab", None, [3, 3]]
    assert lines[2]["error"]["type"] == "ValueError"
    assert "Traceback" in lines[2]["error"]["traceback"]

    # Lines in the corpus' own shape: the id is taken out, and the output carries it.
    chunks = instance.root / "chunks.jsonl"
    chunks.write_text("".join(json.dumps({"id": f"c{i}", "text": f"chunk {i}"}) + "\n"
                              for i in range(5)))
    joined = instance.ctl("submit", "echo", "--input", str(chunks), "--id-field", "id")
    assert joined.returncode == 0, joined.stderr
    rows = [json.loads(line) for line in joined.stdout.splitlines()]
    assert [r["input_id"] for r in rows] == [f"c{i}" for i in range(5)]
    assert [r["result"] for r in rows] == [{"text": f"chunk {i}"} for i in range(5)]
    assert all(r["state"] == "done" and len(r["id"]) == 32 for r in rows)

    shown = instance.ctl("job", job_id)
    assert shown.returncode == 0
    info = json.loads(shown.stdout)
    assert info["state"] == "done" and info["result"] == {"a": [1, 2]}
    assert instance.ctl("job", "nope").returncode == 1

    listed = json.loads(instance.ctl("jobs", "--json", "--state", "failed").stdout)["jobs"]
    assert len(listed) == 2 and {j["state"] for j in listed} == {"failed"}
    table = instance.ctl("jobs", "--limit", "3").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "TASK", "STATE"] and len(table) == 4
    assert instance.ctl("jobs", "--state", "bogus").returncode == 2

    # No daemon: `jobs` and `job` read the journal itself, and say so on stderr.
    everything = json.loads(instance.ctl("jobs", "--json", "--limit", "1000").stdout)["jobs"]
    assert instance.ctl("stop").returncode == 0
    offline = instance.ctl("jobs", "--json", "--limit", "1000")
    assert offline.returncode == 0, offline.stderr
    assert offline.stderr.startswith("docbrain is not running: jobs as its journal has them")
    assert json.loads(offline.stdout)["jobs"] == everything
    assert json.loads(instance.ctl("jobs", "--json", "--state", "failed").stdout)["jobs"] \
        == listed
    shown_offline = instance.ctl("job", job_id)
    assert shown_offline.returncode == 0 and json.loads(shown_offline.stdout) == info
    missing = instance.ctl("job", "nope")
    assert missing.returncode == 1 and missing.stderr.endswith("docbrainctl: no such job: nope\n")


def test_jobs_of_a_state_dir_where_nothing_ran(instance: Instance) -> None:
    listed = instance.ctl("jobs", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"jobs": []}
    assert not (instance.state_dir / "journal.sqlite3").exists()  # looking creates nothing
    assert instance.ctl("job", "nope").returncode == 1


def test_huge_failures_are_bounded_and_do_not_hurt_the_worker(instance: Instance) -> None:
    instance.write_task_module("loud_tasks", """\
        from workers import task

        @task("loud")
        def loud(n):
            raise ValueError("x" * n)
        """)
    instance.write_config('tasks = ["loud_tasks"]\n', workers=1)
    assert instance.ctl("start").returncode == 0
    pid = instance.wait_ready(1)["workers"][0]["pid"]
    from supervisor.client import Client, JobFailed
    with Client(str(instance.config_path)) as client:
        # 64 failures of 400 kB each: far over one message's body, sent in several.
        outcomes = list(client.map("loud", [400_000] * 64, timeout=120, return_exceptions=True))
    assert all(isinstance(o, JobFailed) for o in outcomes)
    assert all(len(o.message) == 32_768 and len(o.traceback) <= 32_768 for o in outcomes)
    status = instance.status()
    assert status is not None and status["workers"][0]["pid"] == pid  # no crash, no restart
    assert status["queue"]["failed"] == 64


def test_a_map_in_progress_carries_on_across_a_daemon_restart(instance: Instance) -> None:
    import os
    import signal
    import threading

    from conftest import wait_for
    from supervisor.client import Client

    instance.write_task_module("slow_tasks", """\
        import time
        from workers import task

        @task("slow.double")
        def double(x):
            time.sleep(0.02)
            return 2 * x
        """)
    instance.write_config('tasks = ["slow_tasks"]\n', workers=2)
    assert instance.ctl("start").returncode == 0
    first = instance.wait_ready(2)["supervisor"]["pid"]
    results: list[int] = []
    errors: list[BaseException] = []

    def run_map() -> None:
        try:
            with Client(str(instance.config_path), window=50) as client:
                results.extend(client.map("slow.double", range(400), timeout=120))
        except BaseException as exc:  # reported by the test thread below
            errors.append(exc)

    mapper = threading.Thread(target=run_map)
    mapper.start()
    try:
        wait_for(lambda: (s := instance.status()) is not None and s["queue"]["done"] >= 60,
                 60, "the map under way")
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: instance.daemon_pid() is None, 30, "the daemon gone")
        assert instance.ctl("start").returncode == 0
    finally:
        mapper.join(180)
    assert not mapper.is_alive() and not errors, errors
    assert results == [2 * x for x in range(400)]
