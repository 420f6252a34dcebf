"""The transformers form of a sentence encoder: what the daemon loads and checks, and the
workers' fallback for a model the torch form (workers.torchform) cannot take.

Importing this module imports transformers: a worker does so only when it was handed this
form. The module's weights are torch tensors in shared memory (the daemon loads them once
and every worker receives the same storage at spawn): nothing here writes to them.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import tokenizers
import torch
import transformers

from workers.encoder import Encoder, pooling_mode, read_json
from workers.torchform import (TorchEncoder, UnsupportedModel, compact_module, lowercase_first,
                               token_limit)


class TransformersEncoder(Encoder):
    """A transformers AutoModel and its AutoTokenizer."""

    form = "transformers"

    def __init__(self, name: str, path: str, max_tokens: int, batch_tokens: int,
                 dtype: torch.dtype = torch.float32) -> None:
        self.name, self.path, self.batch_tokens = name, path, batch_tokens
        self.module = transformers.AutoModel.from_pretrained(path, local_files_only=True,
                                                             dtype=dtype)
        self.module.eval()
        self.tokenizer = self._load_tokenizer()
        config = self.module.config
        self.dim = int(config.hidden_size)
        model_limit = token_limit(config, int(self._st_config().get("max_seq_length") or 0),
                                  self.tokenizer.model_max_length)
        self.max_tokens = min(max_tokens or model_limit, model_limit)
        self.pooling = pooling_mode(path)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self.pad_left = self.tokenizer.padding_side == "left"
        # As sentence-transformers: what the tokenizer makes and the model's forward takes.
        self._type_ids = "token_type_ids" in self.tokenizer.model_input_names and \
            "token_type_ids" in inspect.signature(self.module.forward).parameters

    def _st_config(self) -> dict[str, Any]:
        return read_json(os.path.join(self.path, "sentence_bert_config.json"))

    def _load_tokenizer(self) -> Any:
        tokenizer = transformers.AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        if self._st_config().get("do_lower_case") and getattr(tokenizer, "is_fast", False):
            lowercase_first(tokenizer.backend_tokenizer)
        return tokenizer

    def __getstate__(self) -> dict[str, Any]:
        # The tokenizer is reloaded from `path` in the worker (small and fast); the module
        # travels with its tensors in shared memory (torch.multiprocessing's reductions).
        state = dict(self.__dict__)
        state["tokenizer"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.tokenizer = self._load_tokenizer()

    def share(self) -> None:
        """Move the weights to shared memory, in place, without changing them."""
        self.module.share_memory()

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_tokens,
                                 add_special_tokens=True)
        return list(encoded["input_ids"])

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra = {"token_type_ids": torch.zeros_like(input_ids)} if self._type_ids else {}
        out = self.module(input_ids=input_ids, attention_mask=attention_mask, **extra)
        hidden: torch.Tensor = out.last_hidden_state
        return hidden

    def torch_form(self) -> TorchEncoder:
        """The same model for workers without transformers: the compact module over these
        very tensors and a copy of the fast tokenizer. UnsupportedModel says why not."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise UnsupportedModel("its tokenizer has no fast (tokenizer.json) form")
        module = compact_module(self.module.config.to_dict(), self.module.state_dict())
        return TorchEncoder(self.name, self.path, module,
                            tokenizers.Tokenizer.from_str(backend.to_str()),
                            max_tokens=self.max_tokens, batch_tokens=self.batch_tokens,
                            pooling=self.pooling, pad_id=self.pad_id, pad_left=self.pad_left)
