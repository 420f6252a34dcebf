"""The worker program (data plane): spawned by the daemon, runs tasks.

Task modules register functions with ``from workers import task``, and reach the models
the daemon preloaded with ``from workers import model``.
"""

from workers.models import model
from workers.tasks import task

__all__ = ["model", "task"]
