"""The task registry of a worker process: name -> function, filled by the @task decorator."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"^[A-Za-z_][\w.\-]{0,127}$")


@dataclass(frozen=True)
class Task:
    name: str
    fn: Callable[[Any], Any]
    timeout: float | None = None  # seconds; None: the configured default
    retryable: bool = False       # a task that raises is retried only if it says so
    batch: bool = False           # fn takes a list of payloads, returns a list of results
    # Seconds before its first retry, doubling; and their bound. None: [queue]'s.
    retry_backoff: float | None = None
    retry_backoff_max: float | None = None

    def info(self) -> dict[str, Any]:
        """What the worker tells the daemon of the task when it is READY."""
        return {"timeout": self.timeout, "retryable": self.retryable,
                "retry_backoff": self.retry_backoff, "retry_backoff_max": self.retry_backoff_max}


_registry: dict[str, Task] = {}


def task(name: str, *, timeout: float | None = None, retryable: bool = False,
         batch: bool = False, retry_backoff: float | None = None,
         retry_backoff_max: float | None = None
         ) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Register `fn(payload) -> result` under `name`; payload and result are JSON values.

    A retryable task that raises runs again after `retry_backoff` seconds, doubling after
    each failure up to `retry_backoff_max` (None: the [queue] settings of the same names).

    With batch=True, `fn(payloads) -> results` gets every job of this task that the worker
    holds at once (one forward pass for many small jobs); an item of the result that is an
    Exception fails that job alone.
    """
    if not _NAME.match(name):
        raise ValueError(f"invalid task name {name!r}")
    for key, value in (("timeout", timeout), ("retry_backoff", retry_backoff),
                       ("retry_backoff_max", retry_backoff_max)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not value >= 0):
            raise ValueError(f"task {name!r}: {key} must be a number of seconds, got {value!r}")

    def register(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        existing = _registry.get(name)
        if existing is not None and existing.fn is not fn:
            raise ValueError(f"task {name!r} is registered twice "
                             f"({existing.fn.__module__} and {fn.__module__})")
        _registry[name] = Task(name, fn, timeout, retryable, batch, retry_backoff,
                               retry_backoff_max)
        return fn

    return register


def registered() -> dict[str, Task]:
    return dict(_registry)


BUILTIN_MODULES = ("workers.builtin",)


class TaskModuleError(Exception):
    """A configured task module raised while it was imported; the message names it."""


def import_task_modules(modules: Iterable[str], path: Iterable[str] = ()) -> dict[str, Task]:
    """Import the built-in and the configured task modules, looking first in the
    directories of `path`; returns the registry."""
    sys.path[:0] = list(path)
    for module in (*BUILTIN_MODULES, *modules):
        try:
            importlib.import_module(module)
        except Exception as exc:  # an ImportError, a SyntaxError, whatever its code raises
            raise TaskModuleError(f"task module {module!r} failed to import: "
                                  f"{type(exc).__name__}: {exc}") from exc
    return dict(_registry)
