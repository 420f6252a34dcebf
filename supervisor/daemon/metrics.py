"""Prometheus metrics of the daemon, served over HTTP on /metrics when [metrics] port is set.

The daemon's loop thread is the only writer: it calls `set_workers`, `set_jobs`,
`restarted` and `job_finished`. The HTTP thread only reads, and prometheus_client's
metric objects lock their own values, so no lock of ours is needed.

Each `Metrics` owns its registry, never prometheus_client's global one, so that two
instances (tests, a restarted daemon in one process) never share or clash over values.
"""

from __future__ import annotations

import ipaddress
import socket
import socketserver
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from supervisor import __version__
from supervisor.jobs.journal import FINAL_STATES, STATES
from supervisor.pool.lifecycle import WorkerState

WORKER_STATES = tuple(state.name for state in WorkerState)  # as in `status --json`
# Restart reasons are a fixed set so that the label cannot grow without bound; the daemon
# maps what happened (free text in the slot's last_exit) onto one of these.
RESTART_REASONS = ("crashed", "hung", "load_timeout", "job_timeout", "recycled", "reload",
                   "other")
# 1 ms (builtin noop/echo) to 10 min (a long batch, twice the default job_timeout).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
SHUTDOWN_POLL = 0.25  # seconds; how long stop() may wait for the serving loop to notice


class MetricsError(Exception):
    """The endpoint cannot be served; the message is one line for the user."""


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape every few seconds would flood the daemon's log


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scraper must not hold up the daemon's exit

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup of the address (getfqdn), which
        # can stall start-up for seconds on a host with slow DNS; nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


class _Server6(_Server):
    address_family = socket.AF_INET6


def _is_ipv6(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).version == 6
    except ValueError:
        return False  # "localhost" is served on IPv4, 127.0.0.1


class Metrics:
    def __init__(self, version: str = __version__, started: float | None = None) -> None:
        """`started`: time.monotonic() when the daemon started; default now."""
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.workers = Gauge("docbrain_workers", "Worker slots by lifecycle state.",
                             ["state"], registry=reg)
        self.restarts = Counter("docbrain_worker_restarts", "Worker processes replaced, by "
                                "why the previous one went.", ["reason"], registry=reg)
        self.jobs = Gauge("docbrain_jobs", "Jobs in the journal by state (pending: waiting "
                          "for a worker; running: held by a worker).", ["state"], registry=reg)
        self.queue_depth = Gauge("docbrain_queue_depth", "Jobs waiting for a worker.",
                                 registry=reg)
        self.retrying = Gauge("docbrain_jobs_retrying", "Pending jobs whose task raised, "
                              "waiting for their retry backoff.", registry=reg)
        self.finished = Counter("docbrain_jobs_finished", "Jobs that reached a final state.",
                                ["task", "state"], registry=reg)
        self.duration = Histogram("docbrain_job_duration_seconds", "Run time of finished "
                                  "jobs, by task.", ["task"], buckets=DURATION_BUCKETS,
                                  registry=reg)
        self.store_connected = Gauge(
            "docbrain_store_connected", "1 while the job store can be used (the SQLite "
            "journal always; NATS while connected), else 0.", registry=reg)
        self.shared_jobs = Gauge(
            "docbrain_shared_jobs", "Jobs of the queue shared by every host (NATS): waiting "
            "for a host, leased to one.", ["state"], registry=reg)
        self.gpu_memory = Gauge(
            "docbrain_worker_gpu_memory_bytes", "GPU memory torch holds in each worker that "
            "runs a model on a GPU, by slot and GPU (its CUDA_VISIBLE_DEVICES).",
            ["slot", "gpu"], registry=reg)
        info = Gauge("docbrain_info", "The daemon's version (the value is always 1).",
                     ["version"], registry=reg)
        info.labels(version=version).set(1)
        since = time.monotonic() if started is None else started
        uptime = Gauge("docbrain_uptime_seconds", "Seconds since the daemon started.",
                       registry=reg)
        uptime.set_function(lambda: time.monotonic() - since)
        # Every known label value is present from the start, at 0, so that a dashboard's
        # rate() and "== 0" queries work before the first event.
        self.set_workers({})
        self.set_jobs({}, 0)
        self.set_store({"backend": "sqlite"})
        for reason in RESTART_REASONS:
            self.restarts.labels(reason=reason)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- what the daemon's loop reports --------------------------------------------------

    def set_workers(self, counts: Mapping[str, int]) -> None:
        """Slots per state, keyed by WorkerState name ("READY"); missing states are 0."""
        unknown = set(counts) - set(WORKER_STATES)
        if unknown:
            raise ValueError(f"unknown worker states: {', '.join(sorted(unknown))}")
        for name in WORKER_STATES:
            self.workers.labels(state=name).set(counts.get(name, 0))

    def set_gpu_memory(self, workers: Iterable[tuple[int, str | None, int | None]]) -> None:
        """(slot, its GPU, bytes) of each worker; those that report no GPU memory have none."""
        self.gpu_memory.clear()
        for slot, gpu, held in workers:
            if held is not None:
                self.gpu_memory.labels(slot=str(slot), gpu=gpu or "").set(held)

    def restarted(self, reason: str) -> None:
        """One worker process replaced; a reason outside RESTART_REASONS counts as other."""
        self.restarts.labels(reason=reason if reason in RESTART_REASONS else "other").inc()

    def set_jobs(self, counts: Mapping[str, int], queue_depth: int) -> None:
        """Jobs per journal state; keys that are not states are ignored, so that
        `broker.status()` (which also has duplicate_runs) can be passed as it is."""
        for state in STATES:
            self.jobs.labels(state=state).set(counts.get(state, 0))
        self.queue_depth.set(queue_depth)
        self.retrying.set(counts.get("retrying", 0))

    def set_store(self, status: Mapping[str, Any]) -> None:
        """The store's own figures (`JobStore.status()`)."""
        shared = status.get("backend") == "nats"
        up = not shared or (status.get("server") is not None and not status.get("problem"))
        self.store_connected.set(1 if up else 0)
        self.shared_jobs.labels(state="waiting").set(status.get("stream_pending") or 0)
        self.shared_jobs.labels(state="leased").set(status.get("stream_running") or 0)

    def job_finished(self, task: str, state: str, seconds: float | None) -> None:
        """A job reached a final state; `seconds` is its run time, None if it never ran."""
        if state not in FINAL_STATES:
            raise ValueError(f"not a final job state: {state!r}")
        self.finished.labels(task=task, state=state).inc()
        if seconds is not None:
            self.duration.labels(task=task).observe(max(0.0, seconds))

    # -- the HTTP endpoint ---------------------------------------------------------------

    def start(self, address: str, port: int) -> None:
        """Serve /metrics on address:port from a daemon thread (port 0: any free port)."""
        if self._server is not None:
            raise MetricsError("metrics: already serving")
        server_class = _Server6 if _is_ipv6(address) else _Server
        where = f"[{address}]:{port}" if _is_ipv6(address) else f"{address}:{port}"
        try:
            server = server_class((address, port), _QuietHandler)
        except (OSError, OverflowError) as exc:  # OverflowError: a port above 65535
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise MetricsError(f"metrics: cannot listen on {where}: {why}") from None
        server.set_app(make_wsgi_app(self.registry))
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(SHUTDOWN_POLL,),
                                        name="metrics-http", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int | None:
        """The port actually bound (useful after start with port 0); None when stopped."""
        return None if self._server is None else int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop serving and close the listening socket; does nothing when not serving."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()  # returns once serve_forever has left its loop
        server.server_close()
        if thread is not None:
            thread.join()
