"""The form of an encoder model that workers run: torch and `tokenizers` alone.

A worker that imports transformers' modeling code pays 2-2.5 s and about 110 MiB of private
memory for it (transformers.modeling_utils pulls in torch.distributed and much more); the
weights themselves are shared. So the daemon, which loads and checks every model with
transformers, hands workers this form instead: a compact module of the same computation
(BERT's encoder: MiniLM, bge, e5; RoBERTa and XLM-RoBERTa with their position ids offset by
the padding index) whose parameters are the very tensors transformers loaded, in shared
memory, not copies; and the model's fast tokenizer as a `tokenizers.Tokenizer`.

`compact_module` refuses (UnsupportedModel, with the reason) what it does not compute
exactly as transformers does; the daemon then hands workers the transformers form.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import tokenizers
import torch
import torch.nn.functional as F

from workers.encoder import Encoder

# transformers' names (config.hidden_act) of the activations computed here.
ACTIVATIONS: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}
# model_type -> whether positions start after the padding index (fairseq's way).
MODEL_TYPES: Mapping[str, bool] = {"bert": False, "roberta": True, "xlm-roberta": True}
LAYER_WEIGHTS = (
    "attention.self.query", "attention.self.key", "attention.self.value",
    "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
    "output.dense", "output.LayerNorm")
# Weights of the checkpoint that an encoder's last hidden state does not use.
UNUSED_PREFIXES = ("pooler.",)


def token_limit(config: Any, *limits: int) -> int:
    """The longest input a transformers model (its config) takes, in tokens: its positions
    (less the padding offset of RoBERTa's kind) and the other `limits` given, 0 for none."""
    positions = int(getattr(config, "max_position_embeddings", 0) or 0)
    if positions and MODEL_TYPES.get(str(getattr(config, "model_type", ""))):
        positions -= int(config.pad_token_id) + 1  # positions count from the padding index
    return min(x for x in (positions, *limits, 1 << 20) if x > 0)


class UnsupportedModel(Exception):
    """The compact form does not compute this model; the message says why."""


@dataclass(frozen=True)
class Architecture:
    model_type: str
    layers: int
    heads: int
    eps: float
    activation: str
    padding_idx: int | None  # set: positions count from padding_idx + 1, pads keep it

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> "Architecture":
        """From a transformers config (its to_dict()); UnsupportedModel if not computed here."""
        model_type = str(config.get("model_type"))
        if model_type not in MODEL_TYPES:
            raise UnsupportedModel(f"model type {model_type} is not one it computes "
                                   f"({', '.join(MODEL_TYPES)})")
        if config.get("position_embedding_type", "absolute") not in (None, "absolute"):
            raise UnsupportedModel(
                f"position_embedding_type {config.get('position_embedding_type')}")
        if config.get("is_decoder") or config.get("add_cross_attention"):
            raise UnsupportedModel("a decoder")
        activation = str(config.get("hidden_act"))
        if activation not in ACTIVATIONS:
            raise UnsupportedModel(f"activation {activation}")
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        if hidden % heads:
            raise UnsupportedModel(f"hidden_size {hidden} is not a multiple of {heads} heads")
        padding_idx = int(config["pad_token_id"]) if MODEL_TYPES[model_type] else None
        return cls(model_type, int(config["num_hidden_layers"]), heads,
                   float(config.get("layer_norm_eps", 1e-12)), activation, padding_idx)


class _Weights(torch.nn.Module):
    """Named tensors as parameters (which share the given storage, no copy)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        for name, tensor in tensors.items():
            self.register_parameter(name, torch.nn.Parameter(tensor, requires_grad=False))

    def get(self, name: str) -> torch.Tensor:
        tensor: torch.Tensor = getattr(self, name)
        return tensor


class CompactEncoder(torch.nn.Module):
    """BERT's encoder (and RoBERTa's): input ids and mask -> last hidden state."""

    def __init__(self, arch: Architecture, tensors: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.arch = arch
        left = dict(tensors)

        def take(prefix: str, names: tuple[str, ...], required: bool = True
                 ) -> dict[str, torch.Tensor]:
            found = {}
            for name in names:
                key = f"{prefix}.{name}"
                if key in left:
                    found[name.replace(".", "_")] = left.pop(key)
                elif required:
                    raise UnsupportedModel(f"no weight {key}")
            return found

        self.embeddings = _Weights({
            **take("embeddings", ("word_embeddings.weight", "position_embeddings.weight",
                                  "LayerNorm.weight", "LayerNorm.bias")),
            **take("embeddings", ("token_type_embeddings.weight",), required=False)})
        parts = tuple(f"{p}.{w}" for p in LAYER_WEIGHTS for w in ("weight", "bias"))
        self.layers = torch.nn.ModuleList(
            _Weights(take(f"encoder.layer.{i}", parts)) for i in range(arch.layers))
        unused = sorted(k for k in left if not k.startswith(UNUSED_PREFIXES))
        if unused:
            raise UnsupportedModel(f"weights it does not know: {', '.join(unused[:3])}")
        self.hidden = int(self.embeddings.get("word_embeddings_weight").shape[1])
        self._act = ACTIVATIONS[arch.activation]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        arch, emb, width = self.arch, self.embeddings, (self.hidden,)
        if arch.padding_idx is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        else:
            real = input_ids.ne(arch.padding_idx).int()
            positions = (torch.cumsum(real, dim=1) * real).long() + arch.padding_idx
        x = F.embedding(input_ids, emb.get("word_embeddings_weight"))
        if not hasattr(emb, "token_type_embeddings_weight"):
            pass
        elif token_type_ids is None:  # single texts: type 0 throughout
            x = x + emb.get("token_type_embeddings_weight")[0]
        else:  # pairs: the second text's tokens are of type 1
            x = x + F.embedding(token_type_ids, emb.get("token_type_embeddings_weight"))
        x = x + F.embedding(positions, emb.get("position_embeddings_weight"))
        x = F.layer_norm(x, width, emb.get("LayerNorm_weight"), emb.get("LayerNorm_bias"),
                         arch.eps)
        keep = attention_mask.bool()[:, None, None, :]
        batch, length = input_ids.shape
        heads, size = arch.heads, self.hidden // arch.heads
        for layer in self.layers:
            w = cast(_Weights, layer).get

            def split(t: torch.Tensor) -> torch.Tensor:
                return t.view(batch, length, heads, size).transpose(1, 2)

            q = split(F.linear(x, w("attention_self_query_weight"), w("attention_self_query_bias")))
            k = split(F.linear(x, w("attention_self_key_weight"), w("attention_self_key_bias")))
            v = split(F.linear(x, w("attention_self_value_weight"), w("attention_self_value_bias")))
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                                      scale=1 / math.sqrt(size))
            attended = attended.transpose(1, 2).reshape(batch, length, self.hidden)
            attended = F.linear(attended, w("attention_output_dense_weight"),
                                w("attention_output_dense_bias"))
            x = F.layer_norm(attended + x, width, w("attention_output_LayerNorm_weight"),
                             w("attention_output_LayerNorm_bias"), arch.eps)
            inner = self._act(F.linear(x, w("intermediate_dense_weight"),
                                       w("intermediate_dense_bias")))
            out = F.linear(inner, w("output_dense_weight"), w("output_dense_bias"))
            x = F.layer_norm(out + x, width, w("output_LayerNorm_weight"),
                             w("output_LayerNorm_bias"), arch.eps)
        return x

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_act"]  # a lambda: found again by name
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._act = ACTIVATIONS[self.arch.activation]


def compact_module(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
                   ) -> CompactEncoder:
    """The compact module of a transformers encoder (its config.to_dict() and state_dict()):
    its parameters are `tensors` themselves. UnsupportedModel if it cannot compute it."""
    return CompactEncoder(Architecture.of(config), tensors)


def lowercase_first(tokenizer: tokenizers.Tokenizer) -> None:
    """sentence-transformers' `do_lower_case`: texts are lowercased before the normaliser."""
    normalizer = tokenizer.normalizer
    steps: list[Any] = [tokenizers.normalizers.Lowercase()]
    if normalizer is not None:
        steps.append(normalizer)
    tokenizer.normalizer = tokenizers.normalizers.Sequence(steps)


def shared_json(tokenizer: tokenizers.Tokenizer) -> torch.Tensor:
    """A tokenizer's JSON in a shared uint8 tensor: it travels to a worker as a file
    descriptor, as the weights do. In the pickle itself (0.7 MiB for MiniLM's) it would fill
    the spawn pipe, and the daemon would wait for each worker to import torch in turn."""
    data = bytearray(tokenizer.to_str().encode())
    return torch.frombuffer(data, dtype=torch.uint8).share_memory_()


def from_shared_json(data: torch.Tensor) -> tokenizers.Tokenizer:
    text = ctypes.string_at(data.data_ptr(), data.numel()).decode()
    return tokenizers.Tokenizer.from_str(text)


class SharedTokenizer:
    """Pickles its `tokenizer` (a tokenizers.Tokenizer) as its JSON in a shared tensor (see
    shared_json); `configure_tokenizer` sets its padding and truncation again after."""

    tokenizer: tokenizers.Tokenizer

    def configure_tokenizer(self) -> None:
        raise NotImplementedError

    def __getstate__(self) -> dict[str, Any]:
        if getattr(self, "_tokenizer_json", None) is None:
            self._tokenizer_json = shared_json(self.tokenizer)
        state = dict(self.__dict__)
        state["tokenizer"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.tokenizer = from_shared_json(self._tokenizer_json)
        self.configure_tokenizer()


class TorchEncoder(SharedTokenizer, Encoder):
    """The worker's encoder: the compact module and a `tokenizers.Tokenizer`."""

    form = "torch"

    def __init__(self, name: str, path: str, module: CompactEncoder,
                 tokenizer: tokenizers.Tokenizer, *, max_tokens: int, batch_tokens: int,
                 pooling: str, pad_id: int, pad_left: bool) -> None:
        self.name, self.path, self.module = name, path, module
        self.tokenizer = tokenizer
        self.dim, self.max_tokens, self.batch_tokens = module.hidden, max_tokens, batch_tokens
        self.pooling, self.pad_id, self.pad_left = pooling, pad_id, pad_left
        self.configure_tokenizer()

    def configure_tokenizer(self) -> None:
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_tokens)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=True)]

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.module(input_ids, attention_mask)
