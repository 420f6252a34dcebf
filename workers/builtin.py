"""Tasks every worker has, with no configuration."""

from __future__ import annotations

from typing import Any

from supervisor.proto.embed import embed_request, rerank_request
from workers.models import model_of_kind
from workers.tasks import task


@task("noop")
def noop(payload: Any) -> None:
    """Does nothing: for measuring the queue itself."""
    return None


@task("echo")
def echo(payload: Any) -> Any:
    """Returns its payload: for checking that jobs go round."""
    return payload


@task("embed", batch=True)
def embed(payloads: list[Any]) -> list[Any]:
    """{"texts": [...], "model": NAME} -> {"model", "dim", "embeddings"}, normalised vectors
    in input order. The jobs a worker holds are encoded together, one model at a time."""
    results: list[Any] = [None] * len(payloads)
    by_model: dict[str, list[tuple[int, list[str]]]] = {}
    encoders = {}
    for i, payload in enumerate(payloads):
        try:
            name, texts = embed_request(payload)
            encoder = model_of_kind("sentence-embedding", name)
        except (ValueError, LookupError) as exc:
            results[i] = exc
            continue
        encoders[encoder.name] = encoder
        by_model.setdefault(encoder.name, []).append((i, texts))
    for name, items in by_model.items():
        encoder = encoders[name]
        vectors = encoder.encode([t for _, texts in items for t in texts])
        start = 0
        for i, texts in items:
            results[i] = {"model": name, "dim": encoder.dim,
                          "embeddings": vectors[start:start + len(texts)]}
            start += len(texts)
    return results


@task("rerank")
def rerank(payload: Any) -> Any:
    """{"query": str, "documents": [str, ...], "model": NAME} -> {"model", "scores",
    "order"}: each document's score against the query (a cross-encoder reads them together)
    in input order, and the documents' indexes best first."""
    name, query, documents = rerank_request(payload)
    scorer = model_of_kind("cross-encoder", name)
    scores, order = scorer.rank(query, documents)
    return {"model": scorer.name, "scores": scores, "order": order}
