"""Tasks every worker has, with no configuration."""

from __future__ import annotations

from typing import Any

from workers.tasks import task


@task("noop")
def noop(payload: Any) -> None:
    """Does nothing: for measuring the queue itself."""
    return None


@task("echo")
def echo(payload: Any) -> Any:
    """Returns its payload: for checking that jobs go round."""
    return payload
