"""docbrainctl doctor: what stands between this installation and a healthy daemon.

The facts are gathered once, by `supervisor.doctor.facts` (the daemon's answers, a scan of
the processes, one probe subprocess that imports torch and loads the models, a look at the
shared queue: `supervisor.doctor.probe`, `.queue`); each check here is a function from
those facts to a verdict, so a case that no real process can produce is tested with made-up
facts. Everything works without a daemon: what needs one says so."""

from __future__ import annotations

import os
import shutil
import stat
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import supervisor
from supervisor.conf import envguard
from supervisor.conf.settings import FORBIDDEN_ENV, Config
from supervisor.doctor.queue import SharedQueue, judge
from supervisor.doctor.verdict import Status, Verdict
from supervisor.proto import proctitle
from supervisor.proto.paths import MAX_SOCKET_PATH, StatePaths
from supervisor.proto.spec import STANDBY

OUR_PACKAGE = os.path.dirname(os.path.realpath(supervisor.__file__))
LOW_DISK = 1 << 30  # bytes free in state_dir's file system below which logs and journal risk it
PROBE_MARK = "docbrain-doctor-probe: "
TOKENIZER_FILES = frozenset({"tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                             "sentencepiece.bpe.model", "tokenizer.model"})


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    cmdline: tuple[str, ...] = ()
    ppid: int | None = None
    environ: Mapping[str, str] | None = None  # None: not readable
    slot: int | None = None                   # a worker's slot (STANDBY: the spare worker)
    state_dir: str | None = None              # a daemon's or an orphan's, where known
    daemon_pid: int | None = None             # an orphan's daemon, from its marker


@dataclass(frozen=True)
class ModelFiles:
    path: str | None
    problem: str | None = None  # what is missing, or why the directory is not found


@dataclass(frozen=True)
class Probe:
    """What a fresh interpreter sees: where `supervisor` resolves, torch, the models."""
    supervisor_dir: str | None = None
    torch_version: str | None = None
    torch_threads: int | None = None
    torch_import_s: float | None = None
    torch_error: str | None = None
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # dim, load_s | error
    cuda: list[Mapping[str, Any]] | None = None  # GPUs it sees with the guards (devices.py)
    nvml: list[Mapping[str, Any]] | None = None  # all the machine's (nvidia-ml-py, if any)
    error: str | None = None  # the probe itself did not run to its end


@dataclass(frozen=True)
class Facts:
    config: Config
    paths: StatePaths
    daemon_pid: int | None = None  # the holder of the pidfile's lock (-1: pid unreadable)
    status: Mapping[str, Any] | None = None
    status_error: str | None = None
    socket_present: bool = False
    ping_ms: float | None = None
    ping_error: str | None = None
    others: tuple[ProcessInfo, ...] = ()   # docbrain daemons of other state_dirs
    orphans: tuple[ProcessInfo, ...] = ()  # workers whose daemon is proven gone
    celery: tuple[ProcessInfo, ...] = ()
    workers: tuple[ProcessInfo, ...] = ()  # the daemon's live workers
    model_files: Mapping[str, ModelFiles] = field(default_factory=dict)
    probe: Probe | None = None
    supervisor_dist: str | None = None     # version of an installed "supervisor" distribution
    environ: Mapping[str, str] = field(default_factory=dict)  # this command's environment
    cwd: str = ""
    foreign: tuple[ProcessInfo, ...] = ()  # workers of a daemon in another PID namespace
    shared_queue: SharedQueue | None = None  # what NATS said (backend = "nats")

    def guards(self) -> dict[str, str]:
        """The guards in force: the daemon's own when it answers, else the configuration's."""
        if self.status is not None:
            return dict(self.status.get("env") or {})
        return envguard.guards(self.config)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _pids(procs: Sequence[ProcessInfo]) -> str:
    return " ".join(str(p.pid) for p in procs)


def _where(proc: ProcessInfo) -> str:
    return f"pid {proc.pid} (state_dir {proc.state_dir or 'unknown'})"


# -- the checks ------------------------------------------------------------------------------

def check_daemon(f: Facts) -> Verdict:
    if f.daemon_pid is None:
        return Verdict(Status.WARN, f"not running (state_dir {f.paths.state_dir})",
                       "start it with `docbrainctl start`; the other checks use the "
                       "configuration alone")
    pid = "unknown" if f.daemon_pid < 0 else str(f.daemon_pid)
    if f.status is None:
        return Verdict(Status.FAIL, f"pid {pid} holds the pidfile but does not answer: "
                       f"{f.status_error}", f"see `docbrainctl logs`; if it hangs, kill {pid} "
                       "and run `docbrainctl start`")
    sup, workers = f.status["supervisor"], f.status["workers"]
    counts = Counter(w["state"] for w in workers)
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    detail = f"pid {sup['pid']} answers: {sup['state']}, up {sup['uptime_s']:.0f} s, " \
             f"{_plural(len(workers), 'worker')}" + (f": {states}" if states else "")
    fatal = [str(w["slot"]) for w in workers if w["state"] == "FATAL"]
    if fatal:
        return Verdict(Status.WARN, detail, f"`docbrainctl logs --worker {fatal[0]}` says why "
                       "it failed; `docbrainctl restart` clears FATAL slots")
    return Verdict(Status.PASS, detail)


def check_instances(f: Facts) -> Verdict:
    if not f.others:
        return Verdict(Status.PASS, "no other docbrain daemon runs")
    return Verdict(Status.WARN, f"{len(f.others)} other docbrain daemon(s): "
                   + ", ".join(_where(p) for p in f.others),
                   "each one's workers compete for the same cores and memory: stop those "
                   f"you do not need (`docbrainctl --config THEIRS stop`, or kill {_pids(f.others)})")


def _marked(procs: Sequence[ProcessInfo]) -> str:
    return ", ".join(f"pid {p.pid} (daemon {p.daemon_pid}, state_dir {p.state_dir})"
                     for p in procs)


def check_orphans(f: Facts) -> Verdict:
    foreign = ""
    if f.foreign:
        foreign = (f"{len(f.foreign)} worker(s) of a daemon in another PID namespace, which "
                   f"cannot be seen from here: {_marked(f.foreign)}")
    if f.orphans:
        own = [p for p in f.orphans if p.state_dir == f.paths.state_dir]
        how = ("`docbrainctl start` ends this state_dir's first; "
               if own else "") + "`docbrainctl cleanup --all` ends them all"
        return Verdict(Status.FAIL, f"{len(f.orphans)} orphaned worker(s) whose daemon is "
                       f"gone: {_marked(f.orphans)}" + (f"; {foreign}" if foreign else ""),
                       f"{how} (pid {_pids(f.orphans)})")
    if foreign:
        return Verdict(Status.WARN, foreign,
                       "start and cleanup leave them alone; if their daemon (in a container?) "
                       "is gone, `docbrainctl cleanup --pid PID` ends them "
                       f"({_pids(f.foreign)})")
    return Verdict(Status.PASS, "no orphaned workers")


def check_celery(f: Facts) -> Verdict:
    if not f.celery:
        return Verdict(Status.PASS, "no old-style Celery worker runs")
    return Verdict(Status.WARN, f"{len(f.celery)} Celery worker process(es): pid "
                   + _pids(f.celery), "the old workers compete with docbrain's for cores and "
                   f"models: stop them once their queue is drained (kill {_pids(f.celery)})")


def guard_differences(expected: Mapping[str, str], actual: Mapping[str, str],
                      who: str) -> list[str]:
    """Each guard missing or different in `actual`, and each forbidden variable it has."""
    problems = []
    for name, value in sorted(expected.items()):
        if name not in actual:
            problems.append(f"{name} missing in {who}")
        elif actual[name] != value:
            problems.append(f"{name}={actual[name]!r} in {who}, expected {value!r}")
    problems += [f"{name} is set in {who}" for name in sorted(FORBIDDEN_ENV & actual.keys())]
    return problems


def check_guards(f: Facts) -> Verdict:
    configured = envguard.guards(f.config)
    if f.status is None:
        forbidden = guard_differences({}, f.environ, "this environment")
        if forbidden:
            return Verdict(Status.FAIL, "; ".join(forbidden), "unset it: a daemon started "
                           "from here would pass it on to every worker")
        return Verdict(Status.PASS, "daemon not running; the configuration sets "
                       + " ".join(f"{k}={v!r}" for k, v in sorted(configured.items())))
    applied = f.guards()
    problems = guard_differences(configured, applied, "the daemon")
    advice = "the daemon runs with another configuration or environment than this " \
             "command: `docbrainctl reload` applies the current file, `restart` also " \
             "this environment"
    readable = [w for w in f.workers if w.environ is not None]
    if readable:
        worker = readable[0]
        found = guard_differences(applied, worker.environ or {}, f"worker pid {worker.pid}")
        if found and not problems:
            advice = "a worker's environment differs from the daemon's: restart the daemon " \
                     "with `docbrainctl restart`, and check what starts processes outside it"
        problems += found
        checked = f"the daemon and worker pid {worker.pid} carry"
    else:
        checked = "the daemon carries (no worker environment readable)"
    if problems:
        return Verdict(Status.FAIL, "; ".join(problems), advice)
    return Verdict(Status.PASS, f"{checked} all {len(configured)} guards")


def spawn_problems(workers: Sequence[ProcessInfo], daemon_pid: int) -> list[str]:
    """Each worker that is not multiprocessing's spawn child of the daemon."""
    problems = []
    for w in workers:
        name = "standby" if w.slot == STANDBY else f"slot {w.slot}"
        if not proctitle.spawned_worker(w.cmdline):  # the spawn command line, or its title
            problems.append(f"{name} pid {w.pid} is not a spawned process: "
                            f"{' '.join(w.cmdline)[:80] or 'no command line'}")
        if w.ppid != daemon_pid:
            problems.append(f"{name} pid {w.pid} has parent {w.ppid}, not the daemon "
                            f"{daemon_pid}")
    return problems


def check_start_method(f: Facts) -> Verdict:
    if f.status is None:
        return Verdict(Status.PASS, "daemon not running: no workers to check")
    if not f.workers:
        return Verdict(Status.PASS, "no live worker to check")
    daemon_pid = int(f.status["supervisor"]["pid"])
    problems = spawn_problems(f.workers, daemon_pid)
    if problems:
        return Verdict(Status.FAIL, "; ".join(problems), "workers must be spawned by the "
                       "daemon (a forked copy of a process that imported torch crashes or "
                       "deadlocks): `docbrainctl restart`, and start nothing outside it")
    return Verdict(Status.PASS, f"{len(f.workers)} worker(s) are spawn children of the "
                   f"daemon (pid {daemon_pid})")


def check_torch(f: Facts) -> Verdict:
    p = f.probe
    if p is None or (p.torch_version is None and p.torch_error is None):
        return Verdict(Status.FAIL, f"not checked: {p.error if p else 'no probe'}",
                       "run `python -c 'import torch'` with this interpreter to see why")
    if p.torch_error is not None:
        return Verdict(Status.FAIL, f"import torch failed: {p.torch_error}",
                       "install torch into this interpreter's environment (see README, "
                       "Install)")
    wanted = f.guards().get("OMP_NUM_THREADS", "")
    detail = f"torch {p.torch_version}, {p.torch_threads} thread(s), imported in " \
             f"{p.torch_import_s or 0:.1f} s"
    if str(p.torch_threads) != wanted:
        return Verdict(Status.WARN, f"{detail}; OMP_NUM_THREADS is {wanted!r}",
                       "torch does not use the thread budget: check [env] OMP_NUM_THREADS")
    return Verdict(Status.PASS, detail)


def check_models(f: Facts) -> Verdict:
    if not f.config.models:
        return Verdict(Status.PASS, "no models configured")
    parts, failed = [], False
    for name in f.config.models:
        files = f.model_files.get(name, ModelFiles(None, "not checked"))
        loaded = (f.probe.models.get(name) if f.probe else None) or {}
        if files.problem is not None:
            parts.append(f"{name}: {files.problem}")
        elif "dim" in loaded:
            form = ("workers run it with torch alone" if loaded.get("form") == "torch" else
                    f"workers run it with transformers ({loaded.get('note') or 'runtime'})")
            parts.append(f"{name}: dim {loaded['dim']}, loaded in {loaded['load_s']:.1f} s, "
                         f"{form}")
            continue
        elif "error" in loaded:
            parts.append(f"{name}: {loaded['error']}")
        else:
            parts.append(f"{name}: not loaded ({f.probe.error if f.probe else 'no probe'})")
        failed = True
    if failed:
        return Verdict(Status.FAIL, "; ".join(parts), "fix the model's path, or install its "
                       "package; `docbrainctl start` refuses to start until every model loads")
    return Verdict(Status.PASS, "; ".join(parts))


def _dir_state(what: str, path: str) -> tuple[Status, str, str]:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        while parent != os.path.dirname(parent) and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK | os.X_OK):
            return Status.FAIL, f"{what} {path} missing and {parent} is not writable", \
                f"create {path} (mode 0700) or set [supervisor] state_dir"
        return Status.PASS, f"{what} {path} does not exist yet (start creates it)", ""
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode):
        return Status.FAIL, f"{what} {path} is not a directory", \
            "remove it or set [supervisor] state_dir"
    if info.st_uid != os.getuid():
        return Status.FAIL, f"{what} {path} is owned by uid {info.st_uid}, not {os.getuid()}", \
            "use a state_dir of your own"
    if not os.access(path, os.W_OK | os.X_OK):
        return Status.FAIL, f"{what} {path} is not writable", f"chmod 700 {path}"
    if mode & 0o077:
        return Status.WARN, f"{what} {path} is mode {mode:04o}: open to group or others", \
            f"chmod 700 {path} (`docbrainctl start` also does)"
    return Status.PASS, f"{what} {path} 0700, yours, writable", ""


def check_state_dir(f: Facts) -> Verdict:
    notes = [_dir_state("state_dir", f.paths.state_dir), _dir_state("run dir", f.paths.run_dir)]
    for path in f.paths.socket_files():
        if len(path) > MAX_SOCKET_PATH:
            notes.append((Status.FAIL, f"socket path {path} is {len(path)} bytes, over "
                          f"{MAX_SOCKET_PATH}", "set a shorter [supervisor] state_dir"))
    existing = f.paths.state_dir
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    notes.append((Status.WARN if free < LOW_DISK else Status.PASS,
                  f"{free / 2**30:.1f} GiB free", "free some disk space: the journal and "
                  "the log grow there" if free < LOW_DISK else ""))
    worst = max((n[0] for n in notes), key=[Status.PASS, Status.WARN, Status.FAIL].index)
    return Verdict(worst, "; ".join(n[1] for n in notes), "; ".join(n[2] for n in notes if n[2]))


def check_import_name(f: Facts) -> Verdict:
    p = f.probe
    if p is None or (p.supervisor_dir is None and p.error is not None):
        return Verdict(Status.FAIL, f"not checked: {p.error if p else 'no probe'}",
                       "run `python -c 'import supervisor; print(supervisor.__file__)'`")
    if p.supervisor_dir is None:
        return Verdict(Status.FAIL, f"`import supervisor` finds nothing from {f.cwd}",
                       "install this project into the interpreter's environment (make install)")
    if os.path.realpath(p.supervisor_dir) != OUR_PACKAGE:
        return Verdict(Status.FAIL, f"`import supervisor` from {f.cwd} resolves to "
                       f"{p.supervisor_dir}, not this project's {OUR_PACKAGE}",
                       "the Supervisor (supervisord) package, or a directory named supervisor, "
                       "shadows it: uninstall it (pip uninstall supervisor) or use a separate venv")
    if f.supervisor_dist is not None:
        return Verdict(Status.WARN, f"resolves to this project ({OUR_PACKAGE}), but the "
                       f"supervisor {f.supervisor_dist} distribution (supervisord) is installed "
                       "too", "it can shadow this project from another directory or after a "
                       "reinstall: uninstall it (pip uninstall supervisor) or use a separate venv")
    return Verdict(Status.PASS, f"`supervisor` resolves to this project ({OUR_PACKAGE})")


def check_control(f: Facts) -> Verdict:
    sock = f.paths.socket("control")
    if f.ping_ms is not None:
        return Verdict(Status.PASS, f"ping answered in {f.ping_ms:.1f} ms")
    if not f.socket_present:
        if f.daemon_pid is None:
            return Verdict(Status.WARN, "not running", "start it with `docbrainctl start`")
        return Verdict(Status.FAIL, f"the daemon runs but {sock} is missing",
                       f"stop it with kill {f.daemon_pid} (SIGTERM), then `docbrainctl start`")
    if f.daemon_pid is None:
        return Verdict(Status.FAIL, f"{sock} is present but nothing answers: {f.ping_error}",
                       "a daemon killed with -9 left it: `docbrainctl start` replaces it")
    return Verdict(Status.FAIL, f"{sock} is present but nothing answers: {f.ping_error}",
                   f"see `docbrainctl logs`; kill {f.daemon_pid} and `docbrainctl start`")


def check_queue(f: Facts) -> Verdict:
    return judge(f.config, f.shared_queue)
