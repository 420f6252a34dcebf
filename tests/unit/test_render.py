"""docbrainctl's human-readable output: durations, sizes and the status table."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.cli import render


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"), (0, "0.0s"), (3.14, "3.1s"), (9.94, "9.9s"), (10, "10s"), (59.9, "59s"),
    (60, "1m00s"), (61.5, "1m01s"), (3599, "59m59s"), (3600, "1h00m"), (7322, "2h02m"),
    (86399, "23h59m"), (86400, "1d00h"), (3 * 86400 + 5 * 3600 + 59, "3d05h"),
])
def test_duration(seconds: float | None, text: str) -> None:
    assert render.duration(seconds) == text


@pytest.mark.parametrize(("n", "text"), [
    (None, "-"), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (5 * 1024**2, "5.0 MiB"), (int(2.25 * 1024**3), "2.2 GiB"), (3 * 1024**4, "3072.0 GiB"),
])
def test_size(n: int | None, text: str) -> None:
    assert render.size(n) == text


def _worker(slot: int, state: str, **fields: Any) -> dict[str, Any]:
    row = {"slot": slot, "pid": None, "state": state, "uptime_s": None, "restarts": 0,
           "last_exit": None, "reason": None, "tasks": [], "stderr_tail": [],
           "rss_bytes": None, "cpu_percent": None}
    row.update(fields)
    return row


STATUS = {
    "supervisor": {"pid": 777, "state": "running", "uptime_s": 3725.0, "version": "0.1.0",
                   "state_dir": "/var/state/docbrain", "config": None,
                   "log_file": "/var/state/docbrain/logs/docbrain.log", "frames_dropped": 0,
                   "workers_target": 3},
    "queue": {"pending": 1200, "running": 2, "done": 34567, "failed": 3, "dead": 0,
              "duplicate_runs": 0},
    "workers": [
        _worker(0, "BUSY", pid=1234, uptime_s=75.0, rss_bytes=512 * 1024**2,
                cpu_percent=12.345, current_job="3f2a9c1e00aa", current_task="embed",
                current_job_s=4.25),
        _worker(1, "BACKOFF", restarts=12, last_exit="exit code 3"),
        _worker(2, "FATAL", restarts=4, last_exit="killed by SIGKILL",
                reason="died 5 times within 60 s; last: killed by SIGKILL"),
    ],
    "env": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "4"},
}

HEADERS = ["SLOT", "PID", "STATE", "UPTIME", "RESTARTS", "RSS", "CPU%", "JOB", "LAST EXIT"]


def test_status_renders_an_aligned_table() -> None:
    lines = render.status(STATUS).splitlines()
    assert lines[0] == "docbrain 0.1.0  running  pid 777  up 1h02m  workers 1/3 serving"
    assert lines[1] == "state_dir /var/state/docbrain"
    assert lines[2] == "queue: 1,200 pending, 2 running, 34,567 done, 3 failed, 0 dead"
    header, *rows = lines[3:7]
    assert lines[7] == "slot 2 is FATAL: died 5 times within 60 s; last: killed by SIGKILL"
    assert lines[8] == "env: OMP_NUM_THREADS='4' TOKENIZERS_PARALLELISM='false'"
    assert len(lines) == 9

    starts = [header.index(h) for h in HEADERS]
    assert starts == sorted(starts) and starts[0] == 0
    expected_cells = [
        ["0", "1234", "BUSY", "1m15s", "0", "512.0 MiB", "12.3", "embed 3f2a9c1e 4.2s", "-"],
        ["1", "-", "BACKOFF", "-", "12", "-", "-", "-", "exit code 3"],
        ["2", "-", "FATAL", "-", "4", "-", "-", "-", "died 5 times within 60"],  # clipped
    ]
    for row, cells in zip(rows, expected_cells):
        # Every cell starts where its column's header starts.
        for start, cell in zip(starts, cells):
            assert row[start:start + len(cell)] == cell, (row, cell)
            assert start == 0 or row[start - 1] == " "
        assert row == row.rstrip()


def test_status_fits_100_columns() -> None:
    long_env = {f"VARIABLE_{i}": "value " * 3 for i in range(12)}
    data = _with({"state_dir": "/srv/" + "deep/" * 40 + "state"},
                 [_worker(0, "FATAL", reason="died 5 times within 60 s; last: " + "x" * 200),
                  _worker(1, "READY", pid=5)])
    lines = render.status({**data, "env": long_env}).splitlines()
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    assert lines[1].startswith("state_dir /srv/deep/") and lines[1].endswith("…")
    reason = [line for line in lines if line.startswith(("slot 0 is FATAL", "  x"))]
    assert "".join(reason).count("x") == 200  # whole, on lines of its own
    env_lines = [line for line in lines if line.startswith(("env: ", "     "))]
    assert len(env_lines) > 1
    assert " ".join(line[5:] for line in env_lines).count("VARIABLE_") == 12


def test_table_widths_follow_the_widest_cell() -> None:
    text = render.table(["A", "LONGER"], [["wide-cell", "x"], ["y", "z"]])
    assert text.splitlines() == ["A          LONGER", "wide-cell  x", "y          z"]


def test_table_without_rows_is_the_header() -> None:
    assert render.table(["SLOT", "PID"], []) == "SLOT  PID"


def _with(supervisor: dict[str, Any], workers: list[dict[str, Any]] | None = None
          ) -> dict[str, Any]:
    return {**STATUS, "supervisor": {**STATUS["supervisor"], **supervisor},  # type: ignore
            "workers": workers if workers is not None else STATUS["workers"]}


def test_status_says_when_a_reload_runs_or_failed_and_which_slots_are_removed() -> None:
    idle = render.status(_with({"reload": {"state": "done", "generation": 2}}))
    assert "reload" not in idle
    running = render.status(_with({"reload": {"state": "rolling", "generation": 3}}))
    assert running.splitlines()[-2] == "reload 3: rolling"
    failed = render.status(_with({"reload": {"state": "failed", "generation": 4,
                                             "error": "model m failed to load: gone"}}))
    assert failed.splitlines()[-2] == "last reload (4) failed: model m failed to load: gone"
    removing = render.status(_with({}, [_worker(0, "READY", pid=1),
                                        _worker(1, "STOPPING", pid=2, removing=True)]))
    assert removing.splitlines()[5].endswith("removing (a smaller count)")


def test_status_says_where_gpu_workers_run_their_models() -> None:
    workers = [_worker(0, "READY", pid=5, devices={"minilm": "cuda:0"}, gpu="1",
                       gpu_memory_bytes=3 << 29),
               _worker(1, "READY", pid=6, devices={"minilm": "cpu"})]
    lines = render.status({**STATUS, "workers": workers}).splitlines()
    assert "slot 0: minilm on cuda:0 (GPU 1), 1.5 GiB held on the GPU" in lines
    assert not any(line.startswith("slot 1:") for line in lines)  # on the CPU: nothing more
