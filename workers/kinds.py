"""Model kinds: how the daemon loads and checks a kind of model, how it reaches the workers,
and what a task gets from `model(NAME)`.

A kind is a class with a constructor that takes no argument; `[models.NAME] kind` names a
built-in one (KINDS) or a user's, as "package.module:Class":

    from workers.kinds import ModelKind

    class Tagger(ModelKind):
        def load(self, name, path, settings):
            # In the daemon, once, after the environment guards, on the CPU. Raise to stop
            # the start: the error names the model and says why.
            module = torch.load(os.path.join(path, "tagger.pt"), weights_only=False)
            module.eval().share_memory()   # shared: counted once however many workers
            return module                  # what model(NAME) gives a task in a worker

        def place(self, model, device):
            # In each worker, once, before its task modules import (device "cpu", "cuda",
            # "cuda:N" or "mps"); the default moves a torch Module, or calls to_device.
            return model.to(device)

The object `load` returns is pickled into every worker at spawn: torch tensors in shared
memory travel as file descriptors (torch.multiprocessing), not copies; anything else is
copied. `settings` is the model's table ([models.NAME]): max_tokens, batch_tokens, runtime,
dtype, max_texts. Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

from workers.checking import (FORMS_AGREE, PROBE_TEXT, PROBE_TEXTS, KindError,
                             fallback_note)

class ModelKind:
    """The interface of a kind (see the module's text). `load` must be overridden."""

    def load(self, name: str, path: str, settings: Any) -> Any:
        raise NotImplementedError

    def place(self, model: Any, device: str) -> Any:
        """`model`, to run on `device` in this worker (it returns what tasks get)."""
        if device == "cpu":
            return model
        if callable(getattr(model, "to_device", None)):
            model.to_device(device)
            return model
        if callable(getattr(model, "to", None)):
            return model.to(device)
        raise KindError(f"{type(model).__name__} cannot be moved to {device}: its kind "
                        f"{type(self).__name__} has no place()")

    def describe(self, model: Any) -> dict[str, Any]:
        """What `status` shows of a loaded model."""
        return {key: getattr(model, key, None) for key in ("dim", "max_tokens", "form", "note")}


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16,
            "bfloat16": torch.bfloat16}[name]


class SentenceEmbedding(ModelKind):
    """A sentence-transformers (or plain transformers) encoder: workers.encoder, the
    built-in embed task. Workers get the torch form when it computes the same vectors."""

    def load(self, name: str, path: str, settings: Any) -> Any:
        from workers.embedding import TransformersEncoder
        from workers.torchform import UnsupportedModel

        encoder = TransformersEncoder(name, path, settings.max_tokens, settings.batch_tokens,
                                      torch_dtype(settings.dtype))
        probe = encoder.encode([PROBE_TEXT])
        if len(probe) != 1 or len(probe[0]) != encoder.dim or \
                not all(math.isfinite(x) for x in probe[0]):
            raise KindError("the probe text gave no usable vector")
        encoder.share()
        if settings.runtime != "torch":
            return encoder
        try:
            light = encoder.torch_form()
            texts = list(PROBE_TEXTS)
            if light.token_ids(texts) != encoder.token_ids(texts):
                raise UnsupportedModel("its tokenizer gives other tokens than transformers'")
            agree = min(_cosine(a, b) for a, b in zip(light.encode(texts),
                                                      encoder.encode(texts)))
            if not agree >= FORMS_AGREE:
                raise UnsupportedModel(f"its vectors differ from transformers' "
                                       f"(cosine {agree:.6f})")
            return light
        except Exception as exc:  # UnsupportedModel, or whatever else it raised
            encoder.note = fallback_note(exc)
            return encoder


class CrossEncoder(ModelKind):
    """A cross-encoder (transformers ForSequenceClassification with one label), scored as
    sentence-transformers' CrossEncoder.predict: workers.crossencoder, the rerank task."""

    def load(self, name: str, path: str, settings: Any) -> Any:
        from workers.crossload import load_scorer

        return load_scorer(name, path, settings, torch_dtype(settings.dtype))

    def describe(self, model: Any) -> dict[str, Any]:
        return {"dim": None, "max_tokens": model.max_tokens, "form": model.form,
                "note": model.note}


KINDS: dict[str, type[ModelKind]] = {
    "sentence-embedding": SentenceEmbedding,
    "cross-encoder": CrossEncoder,
}


def resolve(value: str) -> ModelKind:
    """The kind a `kind` setting names, made; KindError saying why it cannot be."""
    if value in KINDS:
        return KINDS[value]()
    module_name, colon, attr = value.partition(":")
    if not colon:
        raise KindError(f"unknown kind {value!r} (built in: {', '.join(KINDS)}; "
                        f"a kind of your own: MODULE:CLASS)")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raised
        raise KindError(f"kind {value}: module {module_name} failed to import: "
                        f"{type(exc).__name__}: {exc}") from None
    cls = getattr(module, attr, None)
    if not isinstance(cls, type) or not callable(getattr(cls, "load", None)):
        raise KindError(f"kind {value}: {module_name} has no class {attr} with a load method")
    try:
        kind = cls()
    except Exception as exc:
        raise KindError(f"kind {value}: {attr}() raised {type(exc).__name__}: {exc}") from None
    for method in ("place", "describe"):  # a class of its own may leave them out
        if not callable(getattr(kind, method, None)):
            setattr(kind, method, getattr(ModelKind(), method))
    return kind


def _cosine(a: list[float], b: list[float]) -> float:
    norm = math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b)) / norm if norm else 0.0
