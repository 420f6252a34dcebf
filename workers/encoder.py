"""What every form of a sentence encoder shares: length-grouped forward passes, pooling and
normalisation as sentence-transformers computes them. torch only.

A form supplies `token_ids` (each text's ids, truncated) and `_hidden` (the model's last
hidden state of a padded batch). Two forms exist: `workers.torchform.TorchEncoder` (torch and `tokenizers`
alone: what workers run) and `workers.embedding.TransformersEncoder` (transformers: what
the daemon loads and checks, and the workers' fallback for a model the first cannot take).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

MAX_PADDING = 0.1  # share of a forward pass that may be padding


def read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return {}


def pooling_mode(path: str) -> str:
    """The sentence-transformers pooling of a model directory (mean when it says nothing)."""
    config = read_json(os.path.join(path, "1_Pooling", "config.json"))
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_max_tokens"):
        return "max"
    return "mean"


class Encoder:
    """A model and its tokenizer; `encode` returns normalised vectors in input order.

    The model's tensors are the daemon's shared memory: nothing here writes to them or
    changes their dtype (inference mode only)."""

    form = ""
    note = ""  # why a model runs in this form, when it is not the one asked for
    device = "cpu"  # where its forward passes run (to_device, in a worker)
    name: str
    path: str
    module: Any  # a torch.nn.Module
    tokenizer: Any
    dim: int
    max_tokens: int
    batch_tokens: int
    pooling: str

    pad_id: int
    pad_left: bool

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, special tokens included, truncated at max_tokens."""
        raise NotImplementedError

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The model's last hidden state of a padded batch."""
        raise NotImplementedError

    def to_device(self, device: str) -> None:
        """Run on `device` from now on: a GPU worker's own copy of the weights there (on
        the CPU the module stays the daemon's shared memory)."""
        if device != self.device:
            self.module.to(device)
            self.device = device

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.token_ids(texts)]

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            at = slice(width - len(row), width) if self.pad_left else slice(0, len(row))
            ids[i, at] = torch.tensor(row, dtype=torch.long)
            mask[i, at] = 1
        return ids, mask

    def _forward(self, rows: list[list[int]]) -> torch.Tensor:
        input_ids, attention_mask = (t.to(self.device) for t in self._pad(rows))
        hidden = self._hidden(input_ids, attention_mask)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
        else:
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), p=2, dim=1).cpu()

    def encode(self, texts: list[str]) -> list[list[float]]:
        """Normalised embeddings, in input order; forward passes up to batch_tokens each,
        of texts of about the same length (each text is tokenized once)."""
        if not texts:
            return []
        rows = self.token_ids(texts)
        out: list[list[float] | None] = [None] * len(texts)
        with torch.inference_mode():
            for chunk in plan_passes([len(r) for r in rows], self.batch_tokens):
                vectors = self._forward([rows[i] for i in chunk]).tolist()
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
