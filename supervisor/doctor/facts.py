"""What `docbrainctl doctor` judges: the daemon's answers, a scan of the processes, the
model files, and a probe subprocess that imports torch and loads the models as a worker
would (supervisor.doctor.probe). The checks (supervisor.doctor.checks) judge these facts.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psutil

from supervisor.conf.settings import MODEL_KINDS, Config, ModelSettings
from supervisor.daemon.models import ModelLoadError, model_dir
from supervisor.doctor.checks import (OUR_PACKAGE, PROBE_MARK, TOKENIZER_FILES, Facts, ModelFiles,
                                      Probe, ProcessInfo)
from supervisor.doctor import queue
from supervisor.doctor.probe import probe_main
from supervisor.pool import stale
from supervisor.proto import control, proctitle
from supervisor.proto.marker import MARKER_ENV, SLOT_ENV
from supervisor.proto.paths import StatePaths
from supervisor.proto.pidfile import running_pid
from supervisor.proto.spec import STANDBY

PROBE_TIMEOUT = 180.0  # seconds for torch's import and every model's load


def _subcommand(args: Sequence[str]) -> str | None:
    """docbrainctl's subcommand in its arguments (after the group's options)."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--config":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def is_daemon_cmdline(cmdline: Sequence[str]) -> bool:
    """`python -m supervisor ... start --foreground`, or `docbrainctl ... start`, or the
    title a daemon gives itself: `docbrain: supervisor (STATE_DIR)`."""
    if proctitle.is_supervisor_title(cmdline):
        return True
    for i, arg in enumerate(cmdline):
        if os.path.basename(arg) == "docbrainctl":
            return _subcommand(cmdline[i + 1:]) == "start"
        if (arg == "-m" and cmdline[i + 1:i + 2] == ["supervisor"]) \
                or arg.endswith(os.path.join("supervisor", "__main__.py")):
            rest = cmdline[i + (2 if arg == "-m" else 1):]
            return _subcommand(rest) == "start" and "--foreground" in rest
    return False


def is_celery_worker(cmdline: Sequence[str]) -> bool:
    return "worker" in cmdline and any("celery" in os.path.basename(a) for a in cmdline)


def _pidfile_dir(proc: psutil.Process) -> str | None:
    """A daemon's state_dir: where the pidfile it holds open lies."""
    try:
        for f in proc.open_files():
            if os.path.basename(f.path) == "docbrain.pid":
                return os.path.dirname(f.path)
    except psutil.Error:
        pass
    return None


def _scan(own_daemon: int | None, named: dict[int, str]
          ) -> tuple[list[ProcessInfo], list[ProcessInfo]]:
    """Other docbrain daemons (by command line, or `named`: pid -> state_dir of the live
    daemons that workers' markers name) and Celery workers, of any user whose command
    lines we can read."""
    others: dict[int, ProcessInfo] = {}
    celery = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proctitle.trimmed(proc.info.get("cmdline") or ())
        if proc.pid in (os.getpid(), own_daemon):
            continue
        if is_daemon_cmdline(cmdline):
            others[proc.pid] = ProcessInfo(proc.pid, cmdline, state_dir=_pidfile_dir(proc)
                                           or named.get(proc.pid)
                                           or proctitle.title_state_dir(cmdline))
        elif is_celery_worker(cmdline):
            celery.append(ProcessInfo(proc.pid, cmdline))
    for pid, state_dir in named.items():
        if pid not in others and pid != own_daemon:
            others[pid] = ProcessInfo(pid, state_dir=state_dir)
    return sorted(others.values(), key=lambda p: p.pid), celery


def _marked_infos(found: list[stale.MarkedProcess]) -> tuple[ProcessInfo, ...]:
    return tuple(ProcessInfo(m.pid, tuple(m.cmdline.split()), state_dir=m.marker.state_dir,
                             daemon_pid=m.marker.daemon_pid) for m in found)


def _worker(pid: int, slot: int) -> ProcessInfo | None:
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            cmdline, ppid = proctitle.trimmed(proc.cmdline()), proc.ppid()
    except psutil.Error:
        return None  # exited since the status reply: nothing to check
    try:
        environ = proc.environ()
    except psutil.Error:
        environ = None
    return ProcessInfo(pid, cmdline, ppid, environ, slot)


# Run with `python -c`, so that sys.path[0] is the current directory, as for any script run
# from there; the project's root is put first only after `supervisor` has been looked up.
# The probe's module is named by the function itself, so that a move cannot leave it stale.
PROBE_SCRIPT = f"""\
import importlib.util, os, sys
spec = importlib.util.find_spec("supervisor")
where = None if spec is None else (os.path.dirname(spec.origin) if spec.origin
                                   else next(iter(spec.submodule_search_locations or []), None))
sys.path.insert(0, sys.argv[1])
from {probe_main.__module__} import probe_main
probe_main(where, sys.argv[2])
"""


def run_probe(models: Mapping[str, ModelSettings], guards: Mapping[str, str],
              timeout: float = PROBE_TIMEOUT) -> Probe:
    """Run the probe with the guards' environment (offline, as the daemon loads models)."""
    env = {k: v for k, v in os.environ.items() if k not in (MARKER_ENV, SLOT_ENV)}
    env.update(guards)
    env["HF_HUB_OFFLINE"] = "1"
    request = json.dumps({name: dataclasses.asdict(s) for name, s in models.items()})
    try:
        done = subprocess.run([sys.executable, "-c", PROBE_SCRIPT, os.path.dirname(OUR_PACKAGE),
                               request], env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Probe(error=f"the probe did not finish within {timeout:g} s")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(PROBE_MARK):
            data = json.loads(line[len(PROBE_MARK):])
            known = {f.name for f in dataclasses.fields(Probe)}
            return Probe(**{k: v for k, v in data.items() if k in known})
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return Probe(error=f"the probe exited with code {done.returncode}: {last}")


def missing_model_files(path: str) -> list[str]:
    names = set(os.listdir(path))
    missing = [] if "config.json" in names else ["config.json"]
    if not any(n.endswith(".safetensors") or (n.startswith("pytorch_model") and
                                              n.endswith(".bin")) for n in names):
        missing.append("weights (*.safetensors or pytorch_model.bin)")
    if not names & TOKENIZER_FILES:
        missing.append("tokenizer files (tokenizer.json or vocab.txt)")
    return missing


def model_files(settings: ModelSettings) -> ModelFiles:
    try:
        path = model_dir(settings, needs_config=settings.kind in MODEL_KINDS)
    except ModelLoadError as exc:
        if not settings.path:
            return ModelFiles(None, str(exc))  # the package is not installed, or ships none
        path = os.path.abspath(os.path.expanduser(settings.path))
        if not os.path.isdir(path):
            return ModelFiles(path, f"{path} is not a directory")
    if settings.kind not in MODEL_KINDS:  # a user's kind: its own files, its own check
        return ModelFiles(path)
    try:
        missing = missing_model_files(path)
    except OSError as exc:
        return ModelFiles(path, f"cannot read {path}: {exc.strerror}")
    return ModelFiles(path, f"{path} lacks {', '.join(missing)}" if missing else None)


def supervisor_distribution() -> str | None:
    """The version of an installed distribution named `supervisor` (supervisord's)."""
    try:
        return importlib.metadata.version("supervisor")
    except importlib.metadata.PackageNotFoundError:
        return None


def gather(config: Config) -> Facts:
    paths = StatePaths.for_state_dir(config.supervisor.state_dir)
    daemon_pid = running_pid(paths.pidfile)
    socket_present = os.path.exists(paths.socket("control"))
    status: dict[str, Any] | None = None
    status_error: str | None = None
    ping_ms: float | None = None
    ping_error: str | None = None
    if socket_present:
        try:
            started = time.perf_counter()
            control.call(paths.endpoint("control"), "ping",
                         timeout=config.supervisor.control_timeout)
            ping_ms = (time.perf_counter() - started) * 1000
            if daemon_pid is not None:
                status = control.call(paths.endpoint("control"), "status",
                                      timeout=config.supervisor.control_timeout)
        except control.ControlError as exc:
            ping_error = status_error = str(exc)
    elif daemon_pid is not None:
        status_error = f"no control socket at {paths.socket('control')}"
    workers = []
    if status is not None:
        pids = [(w["pid"], w["slot"]) for w in status["workers"] if w["pid"]]
        standby = status["supervisor"].get("standby")
        if standby:
            pids.append((standby["pid"], STANDBY))
        workers = [w for w in (_worker(pid, slot) for pid, slot in pids) if w]
    own = int(status["supervisor"]["pid"]) if status else daemon_pid
    marked = stale.survey()
    others, celery = _scan(own, marked.live_daemons())
    orphans, foreign = _marked_infos(marked.stale()), _marked_infos(marked.unknown())
    files = {name: model_files(m) for name, m in config.models.items()}
    facts = Facts(config, paths, daemon_pid, status, status_error, socket_present, ping_ms,
                  ping_error, tuple(others), orphans, tuple(celery), tuple(workers), files,
                  foreign=foreign,
                  environ=dict(os.environ), cwd=os.getcwd(),
                  supervisor_dist=supervisor_distribution(), shared_queue=queue.look(config))
    loadable = {n: m for n, m in config.models.items() if files[n].problem is None}
    return dataclasses.replace(facts, probe=run_probe(loadable, facts.guards()))


