"""The models a worker received from the daemon at spawn, for tasks to use.

    from workers import model, task

    @task("classify")
    def classify(payload):
        encoder = model("minilm")          # the daemon's model; weights shared, not copied
        return encoder.encode([payload["text"]])[0]
"""

from __future__ import annotations

from typing import Any

_models: dict[str, Any] = {}


def attach(models: dict[str, Any]) -> None:
    _models.clear()
    _models.update(models)


def names() -> list[str]:
    return sorted(_models)


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
