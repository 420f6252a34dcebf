"""The model registry of the daemon: every configured model loaded once, before any worker.

Loading happens after the environment guards are set (this is the first place torch is
imported) and each model is checked by encoding a probe text. The loaded weights are then
moved to shared memory; every worker, and every replacement of a worker, receives the same
storage at spawn (torch.multiprocessing passes it as file descriptors), so the weights are
counted once however many workers run. Workers get the torch form of a model
(workers.torchform: no transformers import in a worker), checked here against the
transformers form on the probe texts, or the transformers form where that one cannot be.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from supervisor.conf.settings import ModelSettings
from supervisor.proto import wire
from supervisor.proto.embed import result_bytes

log = logging.getLogger("supervisor.daemon")
PROBE_TEXT = "DocBrain checks that this model loads and encodes."
FORMS_AGREE = 0.99999  # least cosine between the two forms' vectors of a probe text


class ModelLoadError(Exception):
    """A configured model cannot be used; the message names it and says why."""


def model_dir(settings: ModelSettings) -> str:
    """The model directory: `path` itself, or the one an installed package ships."""
    if settings.path:
        path = os.path.abspath(os.path.expanduser(settings.path))
    else:
        module_name = settings.package.replace("-", "_")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelLoadError(f"package {settings.package} is not installed ({exc})") from None
        getter = getattr(module, "get_model_path", None)
        base = os.path.dirname(os.path.abspath(module.__file__ or ""))
        path = str(getter()) if callable(getter) else os.path.join(base, "model")
        if not os.path.isdir(path):
            path = base
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelLoadError(f"{path} is not a model directory (no config.json)")
    return path


def _check_max_texts(max_texts: int, dim: int) -> None:
    """An embed job of max_texts texts must have a result that fits in a message."""
    if result_bytes(max_texts, dim) > wire.MAX_DATA:
        per_text = result_bytes(1, dim) - result_bytes(0, dim)
        most = (wire.MAX_DATA - result_bytes(0, dim)) // per_text
        raise ModelLoadError(
            f"max_texts {max_texts}: the result of that many {dim}-number embeddings can "
            f"pass the result limit of {wire.MAX_DATA >> 20} MiB of JSON; at most {most}")


def _worker_form(name: str, encoder: Any) -> Any:
    """The form workers get: the torch form when it computes the same vectors as the
    transformers form on the probe texts (the same tokens, cosine >= FORMS_AGREE), else the
    transformers form itself, with one log line saying why."""
    from workers.torchform import UnsupportedModel

    try:
        light = encoder.torch_form()
        texts = [PROBE_TEXT, "Ok.", " ".join([PROBE_TEXT] * 100)]  # the last one truncated
        if light.token_ids(texts) != encoder.token_ids(texts):
            raise UnsupportedModel("its tokenizer gives other tokens than transformers'")
        agree = min(_cosine(a, b) for a, b in zip(light.encode(texts), encoder.encode(texts)))
        if not agree >= FORMS_AGREE:
            raise UnsupportedModel(f"its vectors differ from transformers' (cosine {agree:.6f})")
        return light
    except Exception as exc:  # UnsupportedModel, or whatever else it raised: never fatal
        reason = str(exc) if isinstance(exc, UnsupportedModel) else \
            f"{type(exc).__name__}: {exc}"
        encoder.note = f"the torch form does not take it: {reason}"
        log.warning("model %s: workers run it with transformers (they import it, about 2 s "
                    "and 110 MiB more each): %s", name, encoder.note)
        return encoder


def _cosine(a: list[float], b: list[float]) -> float:
    norm = math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b)) / norm if norm else 0.0


def preload(models: Mapping[str, ModelSettings]) -> dict[str, Any]:
    """Load, probe and share every model; raises ModelLoadError naming the first failure.
    Returns, per model, the form workers run (see _worker_form)."""
    if not models:
        return {}
    # Registers the reductions that hand shared tensors to spawned processes.
    import torch.multiprocessing  # noqa: F401
    from transformers.utils import logging as transformers_logging

    from workers.embedding import TransformersEncoder

    # The daemon logs lines: no "Loading weights" bar, whatever [env] says of the guards.
    transformers_logging.disable_progress_bar()

    loaded: dict[str, Any] = {}
    for name, settings in models.items():
        started = time.monotonic()
        try:
            path = model_dir(settings)
            encoder = TransformersEncoder(name, path, settings.max_tokens, settings.batch_tokens)
            probe = encoder.encode([PROBE_TEXT])
            if len(probe) != 1 or len(probe[0]) != encoder.dim or \
                    not all(math.isfinite(x) for x in probe[0]):
                raise ModelLoadError("the probe text gave no usable vector")
            _check_max_texts(settings.max_texts, encoder.dim)
            encoder.share()
            worker = _worker_form(name, encoder) if settings.runtime == "torch" else encoder
        except ModelLoadError as exc:
            raise ModelLoadError(f"model {name} failed to load: {exc}") from None
        except Exception as exc:  # whatever transformers raises for a bad model
            raise ModelLoadError(f"model {name} failed to load: "
                                 f"{type(exc).__name__}: {exc}") from None
        weights = sum(t.numel() * t.element_size() for t in encoder.module.state_dict().values())
        log.info("model %s loaded from %s in %.2f s: %s, dim %d, max %d tokens, "
                 "%.1f MiB of weights in shared memory; workers run it with %s", name, path,
                 time.monotonic() - started, settings.kind, encoder.dim, encoder.max_tokens,
                 weights / 2**20, "torch alone" if worker.form == "torch" else "transformers")
        loaded[name] = worker
    return loaded
