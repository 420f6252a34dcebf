"""A cross-encoder: scores (query, document) pairs, read together by one model, as
sentence-transformers' `CrossEncoder.predict` does; what the built-in `rerank` task runs.

Both forms tokenize with a `tokenizers.Tokenizer` (the fast tokenizer transformers built:
pairs, their type ids and longest-first truncation as transformers makes them), sent to
workers as JSON in a shared tensor. The torch form's module is the compact encoder of
workers.torchform with the classification head (dense, tanh, out: BERT's pooler and
classifier, RoBERTa's classification head); the transformers form's is the
AutoModelForSequenceClassification itself (a worker that gets it imports transformers).
Weights are the daemon's, in shared memory: nothing here writes to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tokenizers
import torch
import torch.nn.functional as F

from workers.encoder import plan_passes
from workers.torchform import CompactEncoder, SharedTokenizer, UnsupportedModel, compact_module

ACTIVATIONS = ("sigmoid", "identity")
# A classifier's head, by model type: (the name prefix of its base model's weights, the
# head's first linear layer, its last), as transformers' ForSequenceClassification has them.
HEADS: Mapping[str, tuple[str, str, str]] = {
    "bert": ("bert.", "bert.pooler.dense", "classifier"),
    "roberta": ("roberta.", "classifier.dense", "classifier.out_proj"),
    "xlm-roberta": ("roberta.", "classifier.dense", "classifier.out_proj"),
}


class CompactClassifier(torch.nn.Module):
    """The compact encoder, then the first token through dense, tanh, out: the logits."""

    def __init__(self, encoder: CompactEncoder, head: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.encoder = encoder
        for name, tensor in head.items():
            self.register_parameter(name, torch.nn.Parameter(tensor, requires_grad=False))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        first = self.encoder(input_ids, attention_mask, token_type_ids)[:, 0]
        w = self.get_parameter
        inner = torch.tanh(F.linear(first, w("dense_weight"), w("dense_bias")))
        logits: torch.Tensor = F.linear(inner, w("out_weight"), w("out_bias"))
        return logits


def compact_classifier(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
                       ) -> CompactClassifier:
    """The compact form of a transformers ForSequenceClassification model (its config's
    to_dict() and its state_dict()); UnsupportedModel if it cannot compute it."""
    model_type = str(config.get("model_type"))
    if model_type not in HEADS:
        raise UnsupportedModel(f"model type {model_type} is not one it computes "
                               f"({', '.join(HEADS)})")
    prefix, dense, out = HEADS[model_type]
    base = {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}
    head = {}
    for name, layer in (("dense", dense), ("out", out)):
        for part in ("weight", "bias"):
            key = f"{layer}.{part}"
            if key not in tensors:
                raise UnsupportedModel(f"no weight {key}")
            head[f"{name}_{part}"] = tensors[key]
            base.pop(key[len(prefix):], None)
    unused = sorted(k for k in tensors if not k.startswith(prefix) and not k.startswith(
        (f"{dense}.", f"{out}.")))
    if unused:
        raise UnsupportedModel(f"weights it does not know: {', '.join(unused[:3])}")
    return CompactClassifier(compact_module(config, base), head)


class Scorer(SharedTokenizer):
    """A cross-encoder model and its tokenizer; `score` returns one number per pair. It
    travels to workers as TorchEncoder does: weights and tokenizer in shared memory."""

    note = ""  # why a model runs in this form, when it is not the one asked for
    device = "cpu"

    def __init__(self, name: str, path: str, module: torch.nn.Module,
                 tokenizer: tokenizers.Tokenizer, *, form: str, max_tokens: int,
                 batch_tokens: int, pad_id: int, type_ids: bool, activation: str) -> None:
        self.name, self.path, self.module, self.form = name, path, module, form
        self.tokenizer = tokenizer
        self.max_tokens, self.batch_tokens, self.pad_id = max_tokens, batch_tokens, pad_id
        self.type_ids, self.activation = type_ids, activation
        self.configure_tokenizer()

    def configure_tokenizer(self) -> None:
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_tokens, strategy="longest_first")

    def to_device(self, device: str) -> None:
        """Run on `device` from now on (a GPU worker's own copy of the weights there)."""
        if device != self.device:
            self.module.to(device)
            self.device = device

    def encode_pairs(self, pairs: list[tuple[str, str]]) -> list[tokenizers.Encoding]:
        """Each pair's tokens: special tokens, type ids, truncated longest first."""
        return list(self.tokenizer.encode_batch(pairs, add_special_tokens=True))

    def logits(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor
               ) -> torch.Tensor:
        """The model's raw output of a padded batch: (pairs, labels)."""
        extra = {"token_type_ids": types} if self.type_ids else {}
        if self.form == "torch":
            out: torch.Tensor = self.module(ids, mask, types if self.type_ids else None)
            return out
        logits: torch.Tensor = self.module(input_ids=ids, attention_mask=mask, **extra).logits
        return logits

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        """One score per (query, document) pair, in input order; forward passes up to
        batch_tokens each, of pairs of about the same length."""
        if not pairs:
            return []
        encoded = self.encode_pairs(pairs)
        out = [0.0] * len(pairs)
        with torch.inference_mode():
            for chunk in plan_passes([len(e.ids) for e in encoded], self.batch_tokens):
                rows = [encoded[i] for i in chunk]
                width = max(len(e.ids) for e in rows)
                ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                types = torch.zeros((len(rows), width), dtype=torch.long)
                for r, e in enumerate(rows):
                    n = len(e.ids)
                    ids[r, :n] = torch.tensor(e.ids, dtype=torch.long)
                    mask[r, :n] = 1
                    types[r, :n] = torch.tensor(e.type_ids, dtype=torch.long)
                logits = self.logits(ids.to(self.device), mask.to(self.device),
                                     types.to(self.device)).float()[:, 0]
                if self.activation == "sigmoid":
                    logits = torch.sigmoid(logits)
                for i, value in zip(chunk, logits.cpu().tolist()):
                    out[i] = float(value)
        return out

    def rank(self, query: str, documents: list[str]) -> tuple[list[float], list[int]]:
        """The documents' scores against the query, in input order, and their order (the
        indexes of the documents, best first; equal scores in input order)."""
        scores = self.score([(query, d) for d in documents])
        return scores, sorted(range(len(scores)), key=lambda i: -scores[i])
