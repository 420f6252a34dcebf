"""The payloads of the built-in model tasks, embed and rerank, and the size of an embed
result: checked by the daemon at submit (supervisor.jobs.broker) and at start
(supervisor.daemon.models), and by the worker (workers.builtin) when it runs the job."""

from __future__ import annotations

from typing import Any


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


def rerank_request(payload: Any) -> tuple[str | None, str, list[str]]:
    """The model name (None: the only cross-encoder), query and documents of a rerank
    payload; ValueError for a payload of another shape."""
    if not isinstance(payload, dict):
        raise ValueError("payload must be an object with \"query\" and \"documents\"")
    unknown = set(payload) - {"query", "documents", "model"}
    if unknown:
        raise ValueError(f"unknown key(s) in payload: {', '.join(sorted(unknown))}")
    query, documents = payload.get("query"), payload.get("documents")
    if not isinstance(query, str):
        raise ValueError("\"query\" must be a string")
    if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
        raise ValueError("\"documents\" must be a list of strings")
    name = payload.get("model")
    if name is not None and not isinstance(name, str):
        raise ValueError("\"model\" must be a string")
    return name, query, documents
