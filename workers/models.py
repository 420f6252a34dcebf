"""The models a worker received from the daemon at spawn, for tasks to use.

    from workers import model, task

    @task("classify")
    def classify(payload):
        encoder = model("minilm")          # the daemon's model; weights shared, not copied
        return encoder.encode([payload["text"]])[0]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

_models: dict[str, Any] = {}
_kinds: dict[str, str] = {}
_devices: dict[str, str] = {}


class PlacementError(Exception):
    """A model could not be moved to its device in this worker; the message says why."""


def attach(models: Mapping[str, Any], kinds: Mapping[str, str] | None = None,
           devices: Mapping[str, str] | None = None) -> None:
    """Take the daemon's models, each placed on its device (its kind's `place`: a GPU
    worker's copy of the weights on its GPU; on the CPU they stay the daemon's shared
    memory). PlacementError names the model that cannot be placed."""
    from workers.kinds import resolve

    kinds, devices = dict(kinds or {}), dict(devices or {})
    placed = {}
    for name, loaded in models.items():
        device = devices.get(name, "cpu")
        if device != "cpu":
            try:
                loaded = resolve(kinds.get(name, "sentence-embedding")).place(loaded, device)
            except Exception as exc:
                raise PlacementError(f"model {name}: cannot run on {device}: "
                                     f"{type(exc).__name__}: {exc}") from exc
        placed[name] = loaded
    _models.clear()
    _models.update(placed)
    _kinds.clear()
    _kinds.update(kinds)
    _devices.clear()
    _devices.update({name: devices.get(name, "cpu") for name in placed})


def names() -> list[str]:
    return sorted(_models)


def devices() -> dict[str, str]:
    """Each model's device in this worker."""
    return dict(_devices)


def gpu_memory() -> Callable[[], int] | None:
    """What tells the bytes torch holds on this worker's CUDA devices (None: it uses none)."""
    cuda = sorted({d for d in _devices.values() if d.startswith("cuda")})
    if not cuda:
        return None
    import torch

    return lambda: sum(int(torch.cuda.memory_reserved(d)) for d in cuda)


def model(name: str | None = None) -> Any:
    """A preloaded model by name; the only one when `name` is None."""
    if name is None:
        if len(_models) != 1:
            raise LookupError(f"model name required: configured models are "
                              f"{', '.join(sorted(_models)) or '(none)'}")
        return next(iter(_models.values()))
    try:
        return _models[name]
    except KeyError:
        raise LookupError(f"unknown model {name!r} (configured: "
                          f"{', '.join(sorted(_models)) or '(none)'})") from None


def model_of_kind(kind: str, name: str | None = None) -> Any:
    """A preloaded model of `kind` by name; the only one of that kind when `name` is None."""
    if name is not None:
        found = model(name)
        if _kinds.get(name, "sentence-embedding") != kind:
            raise LookupError(f"model {name!r} is a {_kinds.get(name)} model, not {kind}")
        return found
    of_kind = sorted(n for n in _models if _kinds.get(n, "sentence-embedding") == kind)
    if len(of_kind) != 1:
        raise LookupError(f"model name required: {kind} models are "
                          f"{', '.join(of_kind) or '(none)'}")
    return _models[of_kind[0]]
