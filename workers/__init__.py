"""The worker program (data plane): spawned by the daemon, runs tasks.

Task modules register functions with ``from workers import task``.
"""

from workers.tasks import task

__all__ = ["task"]
