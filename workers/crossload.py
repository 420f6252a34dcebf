"""The daemon's loader of a cross-encoder (the built-in kind "cross-encoder"): loads it with
transformers, checks it on probe pairs, moves its weights to shared memory and returns the
form workers run (workers.crossencoder.Scorer). Importing this imports transformers."""

from __future__ import annotations

import math
from typing import Any

import tokenizers
import torch
import transformers

from workers.crossencoder import Scorer, compact_classifier
from workers.checking import PROBE_TEXT, PROBE_TEXTS, SCORES_AGREE, KindError, fallback_note
from workers.torchform import UnsupportedModel, token_limit

PROBE_PAIRS = [(PROBE_TEXT, text) for text in PROBE_TEXTS] + [(PROBE_TEXTS[2], "Ok.")]


def _activation(config: Any) -> str:
    """sentence-transformers' activation of the scores: its configuration's, else sigmoid
    (one label)."""
    saved = getattr(config, "sentence_transformers", None) or {}
    path = str(saved.get("activation_fn") or "torch.nn.modules.activation.Sigmoid")
    for name, suffix in (("sigmoid", ".Sigmoid"), ("identity", ".Identity")):
        if path.endswith(suffix):
            return name
    raise KindError(f"activation {path} is not one the rerank task applies (Sigmoid, Identity)")


def load_scorer(name: str, path: str, settings: Any, dtype: torch.dtype) -> Scorer:
    module = transformers.AutoModelForSequenceClassification.from_pretrained(
        path, local_files_only=True, dtype=dtype)
    module.eval()
    config = module.config
    if int(config.num_labels) != 1:
        raise KindError(f"it has {config.num_labels} labels; a cross-encoder gives one score "
                        f"per pair (num_labels 1)")
    slow = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    backend = getattr(slow, "backend_tokenizer", None)
    if backend is None:
        raise KindError("its tokenizer has no fast (tokenizer.json) form")
    limit = token_limit(config, slow.model_max_length)
    options = dict(max_tokens=min(settings.max_tokens or limit, limit),
                   batch_tokens=settings.batch_tokens, pad_id=int(slow.pad_token_id or 0),
                   type_ids="token_type_ids" in slow.model_input_names,
                   activation=_activation(config))

    def tokenizer() -> tokenizers.Tokenizer:
        return tokenizers.Tokenizer.from_str(backend.to_str())

    heavy = Scorer(name, path, module, tokenizer(), form="transformers", **options)
    queries, documents = [q for q, _ in PROBE_PAIRS], [d for _, d in PROBE_PAIRS]
    expected = slow(queries, documents, truncation=True, max_length=heavy.max_tokens)
    if [e.ids for e in heavy.encode_pairs(PROBE_PAIRS)] != list(expected["input_ids"]):
        raise KindError("its tokenizer's pairs differ from transformers'")
    scores = heavy.score(PROBE_PAIRS)
    if not all(math.isfinite(s) for s in scores):
        raise KindError("the probe pairs gave no usable score")
    module.share_memory()
    if settings.runtime != "torch":
        return heavy
    try:
        light = Scorer(name, path, compact_classifier(config.to_dict(), module.state_dict()),
                       tokenizer(), form="torch", **options)
        worst = max(abs(a - b) for a, b in zip(light.score(PROBE_PAIRS), scores))
        if not worst <= SCORES_AGREE * max(1.0, *map(abs, scores)):
            raise UnsupportedModel(f"its scores differ from transformers' (by {worst:.2g})")
        return light
    except Exception as exc:  # UnsupportedModel, or whatever else it raised: never fatal
        heavy.note = fallback_note(exc)
        return heavy
