"""Tasks every worker has, with no configuration."""

from __future__ import annotations

from typing import Any

from workers.models import model
from workers.tasks import task


@task("noop")
def noop(payload: Any) -> None:
    """Does nothing: for measuring the queue itself."""
    return None


@task("echo")
def echo(payload: Any) -> Any:
    """Returns its payload: for checking that jobs go round."""
    return payload


def embed_request(payload: Any) -> tuple[str | None, list[str]]:
    """The model name (None: the only model) and texts of an embed payload; ValueError for
    a payload of another shape. The daemon checks it at submit, the worker again."""
    if not isinstance(payload, dict):
        raise ValueError("payload must be an object with \"texts\" (or \"text\")")
    unknown = set(payload) - {"texts", "text", "model"}
    if unknown:
        raise ValueError(f"unknown key(s) in payload: {', '.join(sorted(unknown))}")
    if "texts" in payload:
        texts = payload["texts"]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError("\"texts\" must be a list of strings")
    elif isinstance(payload.get("text"), str):
        texts = [payload["text"]]
    else:
        raise ValueError("payload needs \"texts\": [str, ...] or \"text\": str")
    name = payload.get("model")
    if name is not None and not isinstance(name, str):
        raise ValueError("\"model\" must be a string")
    return name, texts


# The longest JSON of one float of a vector: a sign, 17 significant digits, a point, an
# exponent ("-1.2345678901234567e-308"), and the ", " after it.
FLOAT_JSON_BYTES = 26


def result_bytes(texts: int, dim: int) -> int:
    """An upper bound of the JSON of an embed result of `texts` vectors of `dim` numbers."""
    return 256 + texts * (dim * FLOAT_JSON_BYTES + 2)


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
            encoder = model(name)
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
