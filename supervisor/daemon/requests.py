"""The daemon's answers to control requests (docbrainctl): one method per request name.

Arguments come from the wire as JSON: each is checked here, and a bad one is refused with a
one-line RequestError that names it, changing nothing.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from supervisor import __version__
from supervisor.conf.settings import MAX_WORKERS, Config
from supervisor.daemon.metrics import Metrics
from supervisor.daemon.models import model_facts
from supervisor.daemon.reload import Reloader, ReloadError
from supervisor.jobs import query
from supervisor.jobs.broker import Broker
from supervisor.jobs.journal import STATES
from supervisor.jobs.store import StoreError
from supervisor.pool.lifecycle import Event
from supervisor.pool.pool import WorkerPool
from supervisor.proto.control import ControlServer, Handler, RequestError
from supervisor.proto.paths import StatePaths

MAX_LIST = 100_000   # most jobs one `jobs` request lists


class RequestHost(Protocol):
    """What the control requests use of the daemon (supervisor.daemon.daemon.Daemon), which
    passes itself: the handlers are given their host, they do not import it."""

    pid: int
    state: str
    started: float
    config: Config
    paths: StatePaths
    guards: dict[str, str]
    models: dict[str, Any]
    frames_dropped: int
    pool: WorkerPool
    broker: Broker
    control: ControlServer
    reloader: Reloader
    metrics: Metrics | None

    def begin_stop(self, timeout: float | None = None) -> None: ...

    def scale(self, count: int, why: str) -> None: ...


class ControlRequests:
    def __init__(self, daemon: RequestHost) -> None:
        self.d = daemon

    def handlers(self) -> dict[str, Handler]:
        return {"ping": lambda _args: {"pid": self.d.pid}, "status": self.status,
                "stop": self.stop, "jobs": self.jobs, "job": self.job, "reload": self.reload,
                "scale": self.scale, "cancel": self.cancel, "retry": self.retry,
                "purge": self.purge}

    def reload(self, _args: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.d.reloader.request("docbrainctl reload")
        except ReloadError as exc:
            raise RequestError(str(exc)) from None

    def scale(self, args: dict[str, Any]) -> dict[str, Any]:
        count = args.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or \
                not 1 <= count <= MAX_WORKERS:
            raise RequestError(f"scale: count must be an integer from 1 to {MAX_WORKERS}, "
                               f"got {count!r}")
        if self.d.state != "running":
            raise RequestError(f"scale refused: the daemon is {self.d.state}")
        was = self.d.pool.target
        self.d.scale(count, "docbrainctl scale")
        return {"count": count, "was": was}

    def stop(self, args: dict[str, Any]) -> dict[str, Any]:
        timeout = args.get("timeout")
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise RequestError(f"stop: timeout must be a positive number, got {timeout!r}")
        self.d.begin_stop(None if timeout is None else float(timeout))
        return {"pid": self.d.pid}

    def jobs(self, args: dict[str, Any]) -> dict[str, Any]:
        state, limit = args.get("state"), args.get("limit", 100)
        if state is not None and state not in STATES:
            raise RequestError(f"jobs: state must be one of {', '.join(STATES)}, got {state!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
            raise RequestError(f"jobs: limit must be an integer from 1 to {MAX_LIST}, "
                               f"got {limit!r}")
        task, since = args.get("task"), args.get("since")
        if task is not None and not isinstance(task, str):
            raise RequestError(f"jobs: task must be a string, got {task!r}")
        if since is not None and (isinstance(since, bool) or
                                  not isinstance(since, (int, float))):
            raise RequestError(f"jobs: since must be a time (seconds since the epoch), "
                               f"got {since!r}")
        broker = self.d.broker
        try:
            return {"jobs": query.recent(broker.store, broker.held, state, limit, task, since)}
        except (StoreError, TimeoutError) as exc:  # a shared store out of reach
            raise RequestError(f"jobs: {exc}") from None

    def job(self, args: dict[str, Any]) -> dict[str, Any]:
        job_id = args.get("id")
        broker = self.d.broker
        try:
            info = query.job_info(broker.store, broker.held, job_id) \
                if isinstance(job_id, str) else None
        except (StoreError, TimeoutError) as exc:
            raise RequestError(f"job {job_id}: {exc}") from None
        if info is None:
            raise RequestError(f"no such job: {job_id}")
        return {"job": info}

    def cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        """Cancel jobs, all or none (supervisor.jobs.cancel); a running one only with
        terminate: its worker is killed, and replaced as after a crash."""
        ids, terminate = args.get("ids"), args.get("terminate", False)
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise RequestError(f"cancel: ids must be a list of job ids, got {ids!r}")
        if not isinstance(terminate, bool):
            raise RequestError(f"cancel: terminate must be true or false, got {terminate!r}")
        stopped = self.d.broker.cancel(ids, terminate)
        self.d.broker.store.commit()  # durable before the answer (clients are told at flush)
        now = time.monotonic()
        for job_id, slot in stopped:
            if slot is not None:
                self.d.pool.apply(self.d.pool.slots[slot], Event.KILL, now,
                                  f"job {job_id} cancelled with terminate")
        return {"cancelled": [job_id for job_id, _ in stopped],
                "terminated": [job_id for job_id, slot in stopped if slot is not None]}

    def retry(self, args: dict[str, Any]) -> dict[str, Any]:
        """Run ended jobs again, all or none (supervisor.jobs.upkeep)."""
        ids, state, task = args.get("ids", []), args.get("state"), args.get("task")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise RequestError(f"retry: ids must be a list of job ids, got {ids!r}")
        for name, value in (("state", state), ("task", task)):
            if value is not None and not isinstance(value, str):
                raise RequestError(f"retry: {name} must be a string, got {value!r}")
        retried = self.d.broker.retry_jobs(ids, state, task)
        self.d.broker.store.commit()
        return {"retried": retried}

    def purge(self, args: dict[str, Any]) -> dict[str, Any]:
        """Forget the jobs of a state (with apply; else only count them)."""
        state, task = args.get("state"), args.get("task")
        older_than, apply = args.get("older_than"), args.get("apply", False)
        if not isinstance(state, str):
            raise RequestError(f"purge: a state is required, got {state!r}")
        if task is not None and not isinstance(task, str):
            raise RequestError(f"purge: task must be a string, got {task!r}")
        if older_than is not None and (isinstance(older_than, bool) or
                                       not isinstance(older_than, (int, float)) or
                                       not older_than >= 0):
            raise RequestError(f"purge: older_than must be seconds (>= 0), got {older_than!r}")
        if not isinstance(apply, bool):
            raise RequestError(f"purge: apply must be true or false, got {apply!r}")
        before = None if older_than is None else time.time() - older_than
        count = self.d.broker.purge_jobs(state, task, before, apply)
        self.d.broker.store.commit()
        return {"count": count, "applied": apply}

    def status(self, _args: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        workers = self.d.pool.status(now)
        for row in workers:
            queue = self.d.broker.held
            current, since = queue.current(row["slot"]), queue.current_since(row["slot"])
            row["jobs_done"] = self.d.broker.jobs_done.get(row["slot"], 0)
            row["current_job"] = current.id if current else None
            row["current_task"] = current.task if current else None
            row["current_job_s"] = round(now - since, 3) if current and since else None
        return {
            "supervisor": {
                "pid": self.d.pid,
                "state": self.d.state,
                "uptime_s": round(now - self.d.started, 3),
                "version": __version__,
                "state_dir": self.d.paths.state_dir,
                "config": self.d.config.path,
                "log_file": self.d.paths.log_file,
                "frames_dropped": self.d.frames_dropped + self.d.control.dropped
                + self.d.pool.foreign_messages + self.d.broker.dropped,
                "standby": self.d.pool.spare.status(),
                "workers_target": self.d.pool.target,
                "reload": self.d.reloader.status(),
                "metrics_port": self.d.metrics.port if self.d.metrics else None,
                "models": model_facts(self.d.config.models, self.d.models),
            },
            "queue": self.d.broker.status(),
            "store": self.d.broker.store.status(),
            "workers": workers,
            "env": self.d.guards,
        }
