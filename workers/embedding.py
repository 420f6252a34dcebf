"""Sentence embeddings with a transformers model, as sentence-transformers computes them.

Used by the daemon (to load and probe a model) and by the workers (the built-in `embed`
task). The module's weights are torch tensors in shared memory: the daemon loads them once
and every worker receives the same storage at spawn, so nothing here may write to them or
change their dtype (inference mode only).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import transformers

MAX_PADDING = 0.1  # share of a forward pass that may be padding

def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return {}


def pooling_mode(path: str) -> str:
    """The sentence-transformers pooling of a model directory (mean when it says nothing)."""
    config = _read_json(os.path.join(path, "1_Pooling", "config.json"))
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_max_tokens"):
        return "max"
    return "mean"


@dataclass
class SentenceEncoder:
    """A model and its tokenizer; `encode` returns normalised vectors in input order."""
    name: str
    path: str
    module: torch.nn.Module
    tokenizer: Any
    max_tokens: int
    batch_tokens: int
    pooling: str = "mean"

    @property
    def dim(self) -> int:
        return int(getattr(self.module, "config").hidden_size)

    @classmethod
    def load(cls, name: str, path: str, max_tokens: int, batch_tokens: int) -> "SentenceEncoder":
        """Load from a model directory (in the daemon: once)."""
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        module = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        module.eval()
        limit = int(_read_json(os.path.join(path, "sentence_bert_config.json"))
                    .get("max_seq_length") or 0)
        positions = int(getattr(module.config, "max_position_embeddings", 0) or 0)
        model_limit = min(x for x in (limit, positions, tokenizer.model_max_length, 1 << 20) if x)
        return cls(name, path, module, tokenizer, min(max_tokens or model_limit, model_limit),
                   batch_tokens, pooling_mode(path))

    def __getstate__(self) -> dict[str, Any]:
        # The tokenizer is reloaded from `path` in the worker (small and fast); the module
        # travels with its tensors in shared memory (torch.multiprocessing's reductions).
        state = dict(self.__dict__)
        state["tokenizer"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path,
                                                                    local_files_only=True)

    def share(self) -> None:
        """Move the weights to shared memory, in place, without changing them."""
        self.module.share_memory()

    def _forward(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True,
                               max_length=self.max_tokens, return_tensors="pt")
        hidden = self.module(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
        else:
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1)

    def token_counts(self, texts: list[str]) -> list[int]:
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_tokens,
                                 add_special_tokens=True)["input_ids"]
        return [len(ids) for ids in encoded]

    def encode(self, texts: list[str]) -> list[list[float]]:
        """Normalised embeddings, in input order; forward passes up to batch_tokens each."""
        if not texts:
            return []
        out: list[list[float] | None] = [None] * len(texts)
        with torch.inference_mode():
            for chunk in plan_passes(self.token_counts(texts), self.batch_tokens):
                vectors = self._forward([texts[i] for i in chunk]).tolist()
                for i, vector in zip(chunk, vectors):
                    out[i] = vector
        return out  # type: ignore[return-value]


def plan_passes(lengths: list[int], batch_tokens: int,
                max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Group texts (by index) into forward passes.

    Sorted by length, a pass pads every text to its last (longest) one. A pass grows while
    that padded size fits the token budget and padding stays under `max_padding` of it:
    compute spent on padding is lost, and passes are cheap to start.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    passes, start = [], 0
    while start < len(order):
        end, real = start + 1, lengths[order[start]]
        while end < len(order):
            padded = lengths[order[end]] * (end + 1 - start)
            if padded > batch_tokens or padded - (real + lengths[order[end]]) > \
                    max_padding * padded:
                break
            real += lengths[order[end]]
            end += 1
        passes.append(order[start:end])
        start = end
    return passes
