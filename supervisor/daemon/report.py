"""Telling the service manager and the metrics how the daemon stands, from its loop:
READY=1 once every worker is, STATUS= and metrics each second, WATCHDOG=1 while healthy
(the loop runs, since this is called from it, and not every slot is FATAL)."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Protocol

from supervisor.daemon.metrics import Metrics
from supervisor.daemon.reload import Reloader
from supervisor.jobs.broker import Broker
from supervisor.pool.lifecycle import SERVING_STATES, WorkerState
from supervisor.pool.pool import WorkerPool
from supervisor.service.notify import Notifier

log = logging.getLogger("supervisor.daemon")
SERVICE_EVERY = 1.0  # seconds between STATUS= updates and metrics refreshes


class ReportHost(Protocol):
    """What is reported on: the daemon (supervisor.daemon.daemon.Daemon) passes itself."""

    state: str
    ready_sent: bool
    notifier: Notifier
    pool: WorkerPool
    broker: Broker
    reloader: Reloader
    metrics: Metrics | None

    def status_line(self) -> str: ...


class Reporter:
    def __init__(self, host: ReportHost) -> None:
        self.host = host
        self._all_fatal = False  # every slot FATAL: the watchdog is not fed
        self._next = 0.0

    def tell(self, now: float) -> None:
        d = self.host
        d.notifier.flush()  # what a reader that was behind could not take yet
        if not d.ready_sent and d.state == "running" and all(
                s.state.state in SERVING_STATES for s in d.pool.slots):
            d.ready_sent = True
            log.info("all %d workers READY", len(d.pool.slots))
            d.notifier.ready(d.status_line())
        if now >= self._next:
            self._next = now + SERVICE_EVERY
            if d.ready_sent and not d.reloader.busy and d.state == "running":
                d.notifier.status(d.status_line())
            if d.metrics is not None:
                d.metrics.set_workers(Counter(s.state.state.name for s in d.pool.slots))
                d.metrics.set_gpu_memory((s.index, d.pool.placement.gpu_of(s.index),
                                          s.gpu_memory) for s in d.pool.slots)
                queue = d.broker.status()
                d.metrics.set_jobs(queue, queue_depth=queue["pending"])
                d.metrics.set_store(d.broker.store.status())
        all_fatal = all(s.state.state == WorkerState.FATAL for s in d.pool.slots)
        if all_fatal != self._all_fatal:
            self._all_fatal = all_fatal
            if all_fatal:
                log.error("every worker slot is FATAL: no job can run; WATCHDOG=1 withheld "
                          "(docbrainctl reload or restart starts them again)")
            else:
                log.info("a worker slot serves again; WATCHDOG=1 resumed")
        if not all_fatal:
            d.notifier.watchdog(now)
