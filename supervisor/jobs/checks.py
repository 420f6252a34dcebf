"""The broker's checks: whether a submitted job can be accepted, and how long a failed
retryable job waits before it runs again. Pure functions of the configuration and the
tasks the workers declared (the catalog)."""

from __future__ import annotations

import math
from typing import Any

from supervisor.conf.settings import Config, QueueSettings
from supervisor.proto import wire
from supervisor.proto.embed import embed_request, rerank_request


def submit_problem(config: Config, catalog: dict[str, Any], job_id: str, task: str,
                   data: bytes) -> str | None:
    """Why a submitted job is refused (one line for the client), or None: checked before
    it is stored, so that a job that cannot run is never accepted."""
    if not job_id or len(job_id) > 128:
        return "job id must be 1 to 128 characters"
    if task not in catalog:
        return f"unknown task {task!r} (known: {', '.join(sorted(catalog))})"
    limit = wire.payload_limit(config.queue.max_payload_bytes)
    if len(data) > limit:
        return f"payload is {len(data)} bytes (limit {limit})"
    try:
        payload = wire.loads(data)  # strict: NaN and Infinity are refused too
    except (ValueError, RecursionError) as exc:
        return f"payload is not JSON: {exc}"
    if task == "embed":
        return _embed_problem(config, payload)
    if task == "rerank":
        return _rerank_problem(config, payload)
    return None


def priority_problem(priority: Any, not_before: Any = None) -> str | None:
    """Why the priority or the start time of a submit is refused (all its jobs), or None."""
    problem = wire.priority_problem(priority)
    if problem is None and not_before is not None and not math.isfinite(not_before):
        return f"not_before must be a finite time, got {not_before!r}"
    return problem


def _model_problem(config: Config, task: str, kind: str, name: str | None, items: int,
                   what: str) -> str | None:
    """What a built-in model task (embed, rerank) would fail on for its model and size."""
    of_kind = sorted(n for n, m in config.models.items() if m.kind == kind)
    if name is None:
        if len(of_kind) != 1:
            return (f"{task}: \"model\" is required: {kind} models are "
                    f"{', '.join(of_kind) or '(none configured)'}")
        name = of_kind[0]
    settings = config.models.get(name)
    if settings is None:
        return (f"{task}: unknown model {name!r} (configured: "
                f"{', '.join(sorted(config.models)) or 'none'})")
    if settings.kind != kind:
        return f"{task}: model {name} is a {settings.kind} model, not {kind}"
    if items > settings.max_texts:
        return (f"{task}: {items} {what} in one job; the limit is {settings.max_texts} "
                f"(models.{name}.max_texts): submit them as several jobs")
    return None


def _embed_problem(config: Config, payload: Any) -> str | None:
    """What the built-in embed task would fail on, found before it is queued."""
    try:
        name, texts = embed_request(payload)
    except ValueError as exc:
        return f"embed: {exc}"
    if not config.models:
        return "embed: no model is configured (the [models] table is empty)"
    return _model_problem(config, "embed", "sentence-embedding", name, len(texts), "texts")


def _rerank_problem(config: Config, payload: Any) -> str | None:
    try:
        name, _, documents = rerank_request(payload)
    except ValueError as exc:
        return f"rerank: {exc}"
    return _model_problem(config, "rerank", "cross-encoder", name, len(documents),
                          "documents")


def retry_delay(info: dict[str, Any], queue: QueueSettings, failures: int) -> float:
    """Seconds before a retry: `retry_backoff` after the first failure, doubling after
    each, at most `retry_backoff_max` (the task's own, else [queue]'s)."""
    start = info.get("retry_backoff")
    start = queue.retry_backoff if start is None else start
    cap = info.get("retry_backoff_max")
    cap = queue.retry_backoff_max if cap is None else cap
    return float(min(start * 2.0 ** min(failures - 1, 60), cap))
