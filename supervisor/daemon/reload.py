"""Reload (SIGHUP, `docbrainctl reload`): read the configuration again and apply it live.

    idle/done/failed --request--> (loading models) --> rolling --> done
                                                              \\--> failed (reverted)

A file that does not load, a changed state_dir, or a changed queue backend or NATS
settings in use, is refused: nothing changes. Changed models are loaded in a thread, so
the loop keeps serving meanwhile; one that fails to load fails the reload. Then the new configuration is committed: settings the daemon reads as it
goes (restart policy, queue limits, log level) apply at once, and when anything a worker is
started with changed (tasks, environment, models, worker settings) the pool replaces its
workers one at a time, each by a loaded worker of the new configuration, so no slot goes
without a worker and no job is lost. If the first worker of the new configuration dies
before any loads, the reload failed: the previous configuration is put back (and its
workers with it). A reload asked for during another runs when that one ends.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from supervisor.conf import envguard
from supervisor.conf.config import ConfigError, load_config
from supervisor.conf.settings import Config, MetricsSettings
from supervisor.daemon.metrics import MetricsError
from supervisor.daemon.models import ModelLoadError, preload
from supervisor.jobs.broker import Broker
from supervisor.pool.pool import WorkerPool
from supervisor.service.notify import Notifier

log = logging.getLogger("supervisor.daemon")


class ReloadError(Exception):
    """The reload was refused; the message is one line for the user."""


class ReloadHost(Protocol):
    """What a reload uses of the daemon (supervisor.daemon.daemon.Daemon), which passes
    itself: the handler is given its host, it does not import it."""

    config: Config
    guards: dict[str, str]
    state: str
    ready_sent: bool
    notifier: Notifier
    pool: WorkerPool
    broker: Broker
    models: dict[str, Any]

    def switch_metrics(self, settings: MetricsSettings) -> None: ...

    def status_line(self) -> str: ...


def changes(old: Config, new: Config, old_guards: dict[str, str],
            new_guards: dict[str, str]) -> list[str]:
    """What differs, one "key: before -> after" line each."""
    before, after = _flat(old.to_dict()), _flat(new.to_dict())
    before.update({f"guard.{k}": v for k, v in old_guards.items()})
    after.update({f"guard.{k}": v for k, v in new_guards.items()})
    return [f"{key}: {before.get(key, '(unset)')!r} -> {after.get(key, '(unset)')!r}"
            for key in sorted(before.keys() | after.keys())
            if before.get(key) != after.get(key) and not key.startswith("env.")]


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def placement_change(old: Config, new: Config) -> str | None:
    """What of the devices a reload would change (the daemon places workers at start:
    pool.gpus.plan), or None. A model added or removed counts as on the CPU where absent."""
    def device(config: Config, name: str) -> str:
        return config.models[name].device if name in config.models else "cpu"
    moved = sorted(n for n in {*old.models, *new.models} if device(old, n) != device(new, n))
    if moved:
        return f"the device of model {', '.join(moved)}"
    return "workers.gpus" if new.workers.gpus != old.workers.gpus else None


def worker_inputs(config: Config, guards: dict[str, str]) -> tuple[Any, ...]:
    """Everything a worker is started with: when it changes, workers are replaced."""
    w = config.workers
    return (w.tasks, w.heartbeat_interval, w.heartbeat_liveness, w.max_jobs_per_worker,
            w.max_memory_mb, config.supervisor.log_level, dict(config.models), guards)


class Reloader:
    def __init__(self, daemon: ReloadHost, environ: dict[str, str],
                 overrides: dict[str, Any]) -> None:
        self.d = daemon
        self.environ = environ      # the daemon's environment as it started
        self.overrides = overrides  # the flags `start` was given: still in force
        self.state = "idle"
        self.generation = 0
        self.changes: list[str] = []
        self.error: str | None = None
        self.pending: str | None = None  # asked for during a reload: why
        self._new: tuple[Config, dict[str, str]] | None = None
        # What a failed reload puts back: config, models, guards, pool generation and size.
        self._previous: tuple[Config, dict[str, Any], dict[str, str], int, int] | None = None
        self._loading: Future[dict[str, Any]] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def busy(self) -> bool:
        return self.state in ("loading", "rolling")

    def request(self, why: str) -> dict[str, Any]:
        """Start a reload; raises ReloadError (nothing changed) if it cannot be."""
        if self.d.state != "running":
            raise ReloadError(f"reload refused: the daemon is {self.d.state}")
        if self.busy:
            self.pending = why
            log.info("reload (%s): queued behind the reload in progress", why)
            # Reloads asked for meanwhile are one: the next generation.
            return {**self.status(), "generation": self.generation + 1, "changes": [],
                    "queued": True}
        old = self.d.config
        try:
            new = load_config(old.path, environ=self.environ, overrides=self.overrides)
        except ConfigError as exc:
            raise self._refuse(why, str(exc)) from None
        if new.supervisor.state_dir != old.supervisor.state_dir:
            raise self._refuse(why, "supervisor.state_dir cannot change while running; "
                                    "use docbrainctl restart")
        # Compared as settings, not as to_dict(): that masks a changed password.
        if (new.queue.backend, new.queue.nats) != (old.queue.backend, old.queue.nats) and \
                (new.queue.backend == "nats" or old.queue.backend == "nats"):
            raise self._refuse(why, "queue.backend and [queue.nats] cannot change while "
                                    "running; use docbrainctl restart")
        moved = placement_change(old, new)
        if moved:
            raise self._refuse(why, f"{moved} cannot change while running; use docbrainctl "
                                    "restart")
        if new.metrics != old.metrics:
            try:
                self.d.switch_metrics(new.metrics)
            except MetricsError as exc:
                raise self._refuse(why, str(exc)) from None
        guards = envguard.guards(new)
        self.generation += 1
        self.changes = changes(old, new, self.d.guards, guards)
        running = self.d.pool.target
        if running != new.workers.count and old.workers.count == new.workers.count:
            self.changes.append(f"workers running: {running} -> {new.workers.count} "
                                "(the count `scale` set ends)")
        self.error = None
        log.info("reload (%s), generation %d: %s", why, self.generation,
                 "; ".join(self.changes) or "no changes")
        if self.d.ready_sent:  # systemd hears of reloads once it heard READY=1
            self.d.notifier.reloading()
        self._new = (new, guards)
        wanted = {n: m for n, m in new.models.items() if old.models.get(n) != m}
        if wanted:
            self.state = "loading"
            self._executor = self._executor or ThreadPoolExecutor(1, "reload-models")
            self._loading = self._executor.submit(preload, wanted, new.module_path())
        else:
            self._commit({})
        return self.status()

    def _refuse(self, why: str, reason: str) -> ReloadError:
        log.error("reload (%s) refused: %s; the configuration in force is unchanged", why,
                  reason)
        return ReloadError(f"reload refused: {reason}")

    def poll(self, now: float) -> None:
        """Called by the loop each pass: move the reload on when it can."""
        if self.state == "loading" and self._loading is not None and self._loading.done():
            future, self._loading = self._loading, None
            try:
                loaded = future.result()
            except ModelLoadError as exc:
                self._end("failed", str(exc))
                return
            except Exception as exc:  # the loader's own bug: fail the reload, not the daemon
                log.exception("reload: loading models failed")
                self._end("failed", f"loading models failed: {type(exc).__name__}: {exc}")
                return
            self._commit(loaded)
        elif self.state == "rolling":
            pool = self.d.pool
            if pool.rollout.canary_failure is not None:
                self._revert(pool.rollout.canary_failure, now)
            elif not pool.rollout.canary_pending and pool.settled():
                self._end("done", None)

    def _commit(self, loaded: dict[str, Any]) -> None:
        assert self._new is not None
        (new, guards), self._new = self._new, None
        d = self.d
        models = {name: loaded.get(name, d.models.get(name)) for name in new.models}
        roll = worker_inputs(new, guards) != worker_inputs(d.config, d.guards)
        self._previous = (d.config, d.models, d.guards, d.pool.rollout.generation, d.pool.target)
        self._apply(new, models, guards)
        d.pool.reconfigure(new, models, time.monotonic(), roll=roll)
        self.state = "rolling"
        if roll:
            log.info("reload: replacing %d worker(s), one at a time", d.pool.rolling())

    def _apply(self, config: Config, models: dict[str, Any], guards: dict[str, str]) -> None:
        d = self.d
        for name in d.guards.keys() - guards.keys():  # a variable [env] no longer sets
            if name in self.environ:
                os.environ[name] = self.environ[name]
            else:
                os.environ.pop(name, None)
        envguard.apply(guards)
        logging.getLogger().setLevel(config.supervisor.log_level.upper())
        d.config, d.models, d.guards = config, models, guards
        d.broker.reconfigure(config)

    def _revert(self, why: str, now: float) -> None:
        assert self._previous is not None
        config, models, guards, generation, count = self._previous
        self._apply(config, models, guards)
        self.d.pool.revert(config, models, generation, count, now)
        self._end("failed", why)

    def _end(self, state: str, error: str | None) -> None:
        self.state, self.error = state, error
        self._previous = None
        if error is None:
            log.info("reload: done (generation %d)", self.generation)
        else:
            log.error("reload failed: %s; the previous configuration is in force", error)
        if self.d.ready_sent:
            self.d.notifier.ready(self.d.status_line())  # the reload is over either way
        if self.pending is not None:
            why, self.pending = self.pending, None
            try:
                self.request(why)
            except ReloadError:
                pass  # logged

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "generation": self.generation, "changes": self.changes,
                "error": self.error}

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
