"""Reload benchmarks: what a rolling reload costs a pool that is busy.

Each figure is measured next to its reference in the same invocation: every chunk embedded
through a daemon with 2 workers and the default model, once in steady running (the
reference) and once with a reload that replaces both workers (a changed [env]) started
after 200 chunks; plus how long a reload takes from SIGHUP to done, under that load and
idle, against a crash's replacement (kill -9 until READY) in the same daemon.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.corpus import load_texts
from supervisor.client import Client
from supervisor.conf.config import load_config

CONFIG = '[supervisor]\nstate_dir = "{state}"\n[workers]\ncount = 2\n[env]\nBENCH_MARK = "{mark}"\n'


def _status(ctl: list[str]) -> dict[str, Any]:
    out = subprocess.run([*ctl, "status", "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def _wait(ctl: list[str], done: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = _status(ctl)
        if done(status):
            return status
        time.sleep(0.02)
    raise TimeoutError("the daemon did not get there within 300 s")


def _embed_all(client: Client, texts: list[str], at: int = -1,
               action: Any = None) -> float:
    """Chunks per second for all texts; `action` runs once `at` results came back."""
    t0 = time.perf_counter()
    fired = False
    count = 0
    for _ in client.map("embed", ({"text": t} for t in texts), timeout=600):
        count += 1
        if count == at and not fired:
            fired = True
            threading.Thread(target=action, daemon=True).start()
    assert count == len(texts)
    return len(texts) / (time.perf_counter() - t0)


def reload_under_load() -> dict[str, float]:
    texts = load_texts()
    with tempfile.TemporaryDirectory(prefix="dbr") as tmp:
        path = Path(tmp) / "bench.toml"
        path.write_text(CONFIG.format(state=f"{tmp}/state", mark="one"))
        ctl = [sys.executable, "-m", "supervisor", "--config", str(path)]
        subprocess.run([*ctl, "start"], check=True, capture_output=True)
        try:
            daemon = _status(ctl)["supervisor"]["pid"]
            reload_time: list[float] = []

            def reload() -> None:
                path.write_text(CONFIG.format(state=f"{tmp}/state", mark="two"))
                t0 = time.perf_counter()
                os.kill(daemon, signal.SIGHUP)
                _wait(ctl, lambda s: s["supervisor"]["reload"]["state"] == "done")
                reload_time.append(time.perf_counter() - t0)

            with Client(load_config(str(path)), window=len(texts)) as client:
                list(client.map("embed", ({"text": t} for t in texts[:64])))  # warm up
                steady = _embed_all(client, texts)
                rolling = _embed_all(client, texts, at=200, action=reload)
            _wait(ctl, lambda s: bool(reload_time))
            path.write_text(CONFIG.format(state=f"{tmp}/state", mark="three"))
            t0 = time.perf_counter()
            os.kill(daemon, signal.SIGHUP)
            _wait(ctl, lambda s: s["supervisor"]["reload"]["generation"] == 2
                  and s["supervisor"]["reload"]["state"] == "done")
            idle_reload = time.perf_counter() - t0
            before = _status(ctl)["workers"][0]
            t0 = time.perf_counter()
            os.kill(before["pid"], signal.SIGKILL)
            _wait(ctl, lambda s: s["workers"][0]["pid"] not in (None, before["pid"])
                  and s["workers"][0]["state"] == "READY")
            crash = time.perf_counter() - t0
        finally:
            subprocess.run([*ctl, "stop"], check=True, capture_output=True)
    return {"steady": steady, "rolling": rolling, "reload": reload_time[0],
            "idle_reload": idle_reload, "crash": crash, "chunks": len(texts)}


def run() -> list[tuple[str, str, str]]:
    r = reload_under_load()
    return [
        (f"embed {r['chunks']:,} chunks (2 workers) while a reload replaces both workers",
         f"{r['rolling']:.1f} chunks/s", f"{r['rolling'] / r['steady']:.2f}× steady running"),
        ("reference: the same chunks in steady running, same daemon",
         f"{r['steady']:.1f} chunks/s", "reference"),
        ("SIGHUP until the reload is done: 2 workers replaced one at a time, under load / idle",
         f"{r['reload']:.2f} / {r['idle_reload']:.2f} s",
         f"idle: {r['idle_reload'] / r['crash']:.2f}× one crash replacement"),
        ("reference: kill -9 of a worker until its replacement is READY (idle, same daemon)",
         f"{r['crash']:.2f} s", "reference"),
    ]
