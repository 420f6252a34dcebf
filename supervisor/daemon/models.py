"""The model registry of the daemon: every configured model loaded once, before any worker.

Loading happens after the environment guards are set (this is the first place torch is
imported), on the CPU, by the model's kind (workers.kinds), which checks it on probe inputs.
The loaded weights are then in shared memory; every worker, and every replacement of a
worker, receives the same storage at spawn (torch.multiprocessing passes it as file
descriptors), so the weights are counted once however many workers run. The built-in
kinds hand workers the torch form of a model (no transformers import in a worker), checked
here against the transformers form, or the transformers form where that one cannot be.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from supervisor.conf.settings import ModelSettings
from supervisor.proto import wire
from supervisor.proto.embed import result_bytes

log = logging.getLogger("supervisor.daemon")


class ModelLoadError(Exception):
    """A configured model cannot be used; the message names it and says why."""


def model_dir(settings: ModelSettings, needs_config: bool = True) -> str:
    """The model directory: `path` itself, or the one an installed package ships. A
    built-in kind's has a config.json; a user's kind's need only exist."""
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
    if needs_config and not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelLoadError(f"{path} is not a model directory (no config.json)")
    if not os.path.isdir(path):
        raise ModelLoadError(f"{path} is not a directory")
    return path


def _check_max_texts(max_texts: int, dim: int) -> None:
    """An embed job of max_texts texts must have a result that fits in a message."""
    if result_bytes(max_texts, dim) > wire.MAX_DATA:
        per_text = result_bytes(1, dim) - result_bytes(0, dim)
        most = (wire.MAX_DATA - result_bytes(0, dim)) // per_text
        raise ModelLoadError(
            f"max_texts {max_texts}: the result of that many {dim}-number embeddings can "
            f"pass the result limit of {wire.MAX_DATA >> 20} MiB of JSON; at most {most}")


def preload(models: Mapping[str, ModelSettings], module_path: Iterable[str] = ()
            ) -> dict[str, Any]:
    """Load, probe and share every model with its kind (workers.kinds); raises
    ModelLoadError naming the first failure. Returns, per model, what workers get. A user's
    kind is imported from the daemon's sys.path, `module_path` first (as task modules)."""
    if not models:
        return {}
    # Registers the reductions that hand shared tensors to spawned processes.
    import torch.multiprocessing  # noqa: F401
    from transformers.utils import logging as transformers_logging

    from workers import kinds

    # The daemon logs lines: no "Loading weights" bar, whatever [env] says of the guards.
    transformers_logging.disable_progress_bar()
    for entry in reversed(list(module_path)):
        if entry not in sys.path:
            sys.path.insert(0, entry)

    loaded: dict[str, Any] = {}
    for name, settings in models.items():
        started = time.monotonic()
        try:
            kind = kinds.resolve(settings.kind)
            path = model_dir(settings, needs_config=settings.kind in kinds.KINDS)
            model = kind.load(name, path, settings)
            facts = kind.describe(model)
            if settings.kind == "sentence-embedding":
                _check_max_texts(settings.max_texts, facts["dim"])
        except ModelLoadError as exc:
            raise ModelLoadError(f"model {name} failed to load: {exc}") from None
        except Exception as exc:  # whatever the kind's load raises for a bad model
            reason = str(exc) if isinstance(exc, kinds.KindError) else \
                f"{type(exc).__name__}: {exc}"
            raise ModelLoadError(f"model {name} failed to load: {reason}") from None
        if facts.get("form") == "transformers" and facts.get("note"):
            log.warning("model %s: workers run it with transformers (they import it, about "
                        "2 s and 110 MiB more each): %s", name, facts["note"])
        log.info("model %s loaded from %s in %.2f s: %s%s%s, %.1f MiB of weights in shared "
                 "memory%s", name, path, time.monotonic() - started, settings.kind,
                 f", dim {facts['dim']}" if facts.get("dim") else "",
                 f", max {facts['max_tokens']} tokens" if facts.get("max_tokens") else "",
                 shared_bytes(model) / 2**20,
                 {"torch": "; workers run it with torch alone",
                  "transformers": "; workers run it with transformers"}.get(
                     str(facts.get("form")), ""))
        loaded[name] = model
    return loaded


def shared_bytes(model: Any) -> int:
    """Bytes of the torch tensors in shared memory that a loaded model holds (its module's
    parameters and buffers, or the model itself when it is a module)."""
    import torch

    module = getattr(model, "module", model)
    if not isinstance(module, torch.nn.Module):
        return 0
    seen, total = set(), 0
    for tensor in (*module.parameters(), *module.buffers()):
        key = tensor.untyped_storage().data_ptr()
        if tensor.is_shared() and key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
    return total


def model_facts(models: Mapping[str, ModelSettings], loaded: Mapping[str, Any]
                ) -> dict[str, dict[str, Any]]:
    """What `status` shows of each loaded model: its kind, then what the kind says of it
    (dim, max_tokens, form, note for the built-in kinds)."""
    from workers import kinds

    out = {}
    for name, model in loaded.items():
        settings = models.get(name)
        kind = settings.kind if settings else ""
        try:
            facts = kinds.resolve(kind).describe(model) if kind else {}
        except Exception as exc:  # a user's describe(): its failure is not the status's
            facts = {"error": f"{type(exc).__name__}: {exc}"}
        out[name] = {"kind": kind, **facts}
    return out
