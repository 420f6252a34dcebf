"""The environment guards: variables set before torch is imported in the daemon or a worker.

They replace the old start script's exports. They are applied to the daemon's own
environment before the models are preloaded, and spawned workers inherit them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from supervisor.conf.config import THREAD_VARS
from supervisor.conf.settings import Config


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity API
        return os.cpu_count() or 1


def thread_budget(cores: int, workers: int) -> int:
    """Threads per worker so that N workers do not oversubscribe the cores."""
    return max(1, cores // max(1, workers))


def guard_defaults(cores: int, workers: int, cuda: bool = False,
                   mps: bool = False) -> dict[str, str]:
    """The guards; `cuda` or `mps` when a model asks for that device: its variable is then
    left as the environment has it (each GPU worker gets its own CUDA_VISIBLE_DEVICES)."""
    threads = str(thread_budget(cores, workers))
    return {
        # The MPS watchdog thread is what trips over a fork on macOS.
        "PYTORCH_MPS_ENABLE_WORKSTREAM_WATCHDOG": "0",
        # CPU mode: the default on macOS, and no CUDA context that a child could not use.
        **({} if mps else {"MPS_VISIBLE_DEVICES": ""}),
        **({} if cuda else {"CUDA_VISIBLE_DEVICES": ""}),
        "PYTORCH_ENABLE_MPS_FALLBACK": "1",
        # The tokenizers' Rust thread pool warns and can deadlock across process starts.
        "TOKENIZERS_PARALLELISM": "false",
        # Models load from local files only: nothing is downloaded at run time.
        "HF_HUB_OFFLINE": "1",
        # The daemon and workers log lines: no carriage-return progress bars in the log
        # file, the journal or a process manager's log (transformers' "Loading weights").
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TQDM_DISABLE": "1",
        **{name: threads for name in THREAD_VARS},
    }


def guards(config: Config, cores: int | None = None) -> dict[str, str]:
    """The variables in force: the defaults, then [env] (which may add more)."""
    cores = usable_cores() if cores is None else cores
    devices = {m.device for m in config.models.values()}
    cuda = any(d.startswith("cuda") or d == "auto" for d in devices)
    return {**guard_defaults(cores, config.workers.count, cuda, "mps" in devices), **config.env}


def apply(values: Mapping[str, str], environ: MutableMapping[str, str] | None = None) -> None:
    target = os.environ if environ is None else environ
    target.update(values)
