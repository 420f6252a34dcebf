"""docbrainctl's job commands: submit, jobs, job."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from types import FrameType
from typing import IO, Any

import click

from supervisor.cli import progress, render
from supervisor.cli.common import CliExit, Duration, _call, _config, _paths, _running, fail
from supervisor.client import (Client, DaemonNotRunning, JobCancelled, JobDead, JobError,
                               JobFailed, JobRejected, QueueUnreachable, SharedClient,
                               encode_payload)
from supervisor.conf.settings import Config
from supervisor.jobs.journal import STATES, Journal, StoredJob
from supervisor.jobs.store import StoreError
from supervisor.proto import wire
from supervisor.proto.pidfile import running_pid


def _parse_json(text: str, where: str) -> Any:
    try:
        return wire.loads(text)  # strict: NaN and Infinity are not JSON either
    except (ValueError, RecursionError) as exc:
        fail(2, f"{where} is not JSON: {exc}")


def _read_jsonl(path: str, limit: int, id_field: str | None) -> list[tuple[Any, Any]]:
    """(input id, payload) for every line of the input, parsed and checked as the client
    will check it; a bad line stops everything before a job is sent. With `id_field`, each
    line is an object whose `id_field` key is its id, and the rest is the payload."""
    jobs = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            where = f"{path} line {number}"
            if not line.strip():  # skipping it would shift every output line after it
                fail(2, f"{where}: blank line; give one JSON payload per line")
            payload, input_id = _parse_json(line, where), None
            if id_field is not None:
                if not isinstance(payload, dict) or id_field not in payload:
                    fail(2, f"{where}: no {id_field!r} key (--id-field) in {line.strip()[:60]}")
                input_id = payload.pop(id_field)
            try:
                encode_payload(payload, limit)
            except ValueError as exc:
                fail(2, f"rejected: {where}: {exc}")
            jobs.append((input_id, payload))
    return jobs


def _client(config: Config) -> Client:
    """The client of the daemon here; with the NATS backend and no daemon here, one of the
    shared queue itself."""
    if config.queue.backend != "nats":
        _running(_paths(config))
    try:
        return Client(config)
    except DaemonNotRunning as exc:
        fail(3, str(exc))
    except QueueUnreachable as exc:
        fail(1, str(exc))


@click.command()
@click.argument("task")
@click.argument("payload_json", required=False)
@click.option("--wait", is_flag=True, help="Wait for the job and print its result as JSON.")
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False),
              help="JSON Lines file: one job per line (its payload).")
@click.option("--output", "output_path", type=click.Path(dir_okay=False),
              help="With --input: where to write one line per job, in input order "
                   "(default: stdout).")
@click.option("--id-field", metavar="KEY", default=None,
              help="With --input: each line is an object whose KEY is its id; the rest is "
                   "the payload, and each output line carries the id as input_id.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds to wait for results (default: no limit).")
@click.option("--priority", type=click.IntRange(wire.MIN_PRIORITY, wire.MAX_PRIORITY),
              default=wire.DEFAULT_PRIORITY, show_default=True,
              help="Higher runs first (first in, first out within a priority). Below the "
                   "default: bulk work, handed out in small batches so that a higher job "
                   "waits little.")
@click.option("--delay", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Do not start the job before this many seconds from now.")
@click.option("--eta", default=None, metavar="TIME",
              help="Do not start the job before this time: ISO 8601, such as "
                   "2026-12-24T18:00 (local time) or 2026-12-24T17:00Z.")
@click.option("--progress/--no-progress", "show_progress", default=None,
              help="With --input, on stderr: by default a bar on a terminal, else a line "
                   f"every {progress.INTERVAL:g} s (${progress.INTERVAL_ENV}); "
                   "--progress: the bar in any case; --no-progress: none. Either way a "
                   "summary line at the end: N done, M failed in S s.")
@click.pass_context
def submit(ctx: click.Context, task: str, payload_json: str | None, wait: bool,
           input_path: str | None, output_path: str | None, id_field: str | None,
           timeout: float | None, show_progress: bool | None, priority: int,
           delay: float | None, eta: str | None) -> None:
    """Submit a job of TASK with PAYLOAD_JSON (default null); print its id.

    With --input, one job per line. Ctrl-C stops waiting: the output keeps the lines of
    the jobs that finished, the jobs submitted run on in the daemon (see `jobs`), no
    more are submitted; exit 130. A second Ctrl-C quits at once.
    """
    if input_path and payload_json is not None:
        fail(2, "give either PAYLOAD_JSON or --input, not both")
    for name, given in [("--output", output_path), ("--id-field", id_field),
                        ("--progress" if show_progress else "--no-progress", show_progress)]:
        if given is not None and not input_path:
            fail(2, f"{name} needs --input")
    config = _config(ctx)
    not_before = _start_time(delay, eta)
    if not_before is not None and input_path:
        fail(2, "--delay and --eta are for one job: not with --input")
    if input_path:
        jobs = _read_jsonl(input_path, wire.payload_limit(config.queue.max_payload_bytes),
                           id_field)
        try:
            interval = progress.interval_from_env()
        except ValueError as exc:
            fail(2, str(exc))
        with _client(config) as client:
            shown = progress.Progress(task, len(jobs),
                                      progress.mode_of(show_progress, sys.stderr),
                                      sys.stderr, interval)
            try:
                if output_path:
                    with open(output_path, "w", encoding="utf-8") as out:
                        code = _submit_many(client, task, jobs, id_field, out, timeout,
                                            shown, f"in {output_path}", priority)
                else:
                    code = _submit_many(client, task, jobs, id_field, sys.stdout, timeout,
                                        shown, "on stdout", priority)
            except (TimeoutError, QueueUnreachable) as exc:  # --timeout, or never answered
                fail(1, str(exc))
        if code:
            fail(code, "some jobs did not end done; see their lines in the output")
        return
    payload = None if payload_json is None else _parse_json(payload_json, "PAYLOAD_JSON")
    with _client(config) as client:
        try:
            job_id = client.submit(task, payload, priority=priority, eta=not_before)
            if not wait:
                click.echo(job_id)
                return
            click.echo(json.dumps(client.result(job_id, timeout)))
        except (TimeoutError, QueueUnreachable) as exc:  # QueueRefused: a daemon's, of NATS
            fail(1, str(exc))
        except JobRejected as exc:
            fail(2, f"rejected: {exc}")
        except (JobFailed, JobDead, JobCancelled) as exc:
            fail(1, str(exc))


def _start_time(delay: float | None, eta: str | None) -> float | None:
    """When the jobs may start (wall clock), from --delay or --eta; None: now."""
    if delay is not None and eta is not None:
        fail(2, "give either --delay or --eta, not both")
    if eta is None:
        return time.time() + delay if delay else None
    try:
        when = datetime.fromisoformat(eta.replace("Z", "+00:00")).timestamp()
    except ValueError:
        fail(2, f"--eta: {eta!r} is not an ISO 8601 time, such as 2026-12-24T18:00")
    if when <= time.time():
        click.echo(f"docbrainctl: --eta {eta} is in the past: the job runs now", err=True)
    return when


def _submit_many(client: Client, task: str, jobs: list[tuple[Any, Any]],
                 id_field: str | None, out: IO[str], timeout: float | None,
                 shown: progress.Progress, dest: str, priority: int) -> int:
    taken = 0  # payloads the client took: it takes them only as it submits them

    def payloads() -> Iterator[Any]:
        nonlocal taken
        for _, payload in jobs:
            taken += 1
            yield payload

    with _Interrupt() as interrupt:
        def stop() -> bool:  # the client calls it while it waits, and before it submits
            shown.tick()
            return interrupt.hit
        outcomes = client.map_with_ids(task, payloads(), timeout, return_exceptions=True,
                                       stop=stop, priority=priority)
        try:
            for (input_id, _), (job_id, value) in zip(jobs, outcomes):
                line: dict[str, Any] = {"id": job_id}
                if id_field is not None:
                    line["input_id"] = input_id
                if isinstance(value, JobError):
                    line["state"] = {JobFailed: "failed", JobDead: "dead",
                                     JobCancelled: "cancelled"}.get(type(value), "rejected")
                    line["error"] = _error_of(value)
                else:
                    line.update(state="done", result=value)
                # Whole lines, each as it ends: whatever stops this, the output holds
                # complete lines only, and every one that finished.
                out.write(json.dumps(line) + "\n")
                out.flush()
                shown.finish(not isinstance(value, JobError))
                if interrupt.hit:
                    break
        finally:
            shown.close()
        if interrupt.hit:
            outcomes.close()  # type: ignore[attr-defined]
            _interrupted(client, len(jobs), taken, shown.finished, dest)
    click.echo(shown.summary(), err=True)
    return 1 if shown.failed else 0


SETTLE = 5.0  # seconds an interrupted submit waits for the daemon to confirm submits sent


def _interrupted(client: Client, total: int, taken: int, written: int, dest: str) -> None:
    """After Ctrl-C: nothing more is submitted; say what became of the jobs; exit 130."""
    unanswered = client.settle(0.2)
    if unanswered:
        click.echo(f"docbrainctl: interrupted; waiting up to {SETTLE:g} s for the daemon to "
                   f"confirm {unanswered:,} submits (Ctrl-C again to quit now)", err=True)
        unanswered = client.settle(SETTLE)
    first = (f"interrupted: {taken:,} of {total:,} jobs submitted, {written:,} finished "
             f"(their lines are {dest})")
    if taken < total:
        first += f"; {total - taken:,} were not submitted"
    click.echo(f"docbrainctl: {first}", err=True)
    if taken > written:
        doubt = (f" ({unanswered:,} of them not confirmed by the daemon: those may not run)"
                 if unanswered else "")
        click.echo(f"  the other {taken - written:,} run on in the daemon{doubt}; follow "
                   "them with: docbrainctl jobs --state pending (or running), docbrainctl "
                   "job ID", err=True)
    raise CliExit(130)  # the handler stays: a Ctrl-C from here on quits at once, too


class _Interrupt:
    """SIGINT during a bulk submit. The first sets `hit`, and the loop and the client stop
    at their next step (nothing is cut off midway: no half line, no half-sent submit); a
    second one quits at once, exit 130."""

    def __init__(self) -> None:
        self.hit = False
        self._previous: Any = None

    def __enter__(self) -> "_Interrupt":
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.hit:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.hit:
            os.write(2, b"docbrainctl: interrupted again: quitting now\n")
            os._exit(130)
        self.hit = True


def _error_of(exc: JobError) -> dict[str, Any]:
    if isinstance(exc, JobFailed):
        return {"type": exc.type, "message": exc.message, "traceback": exc.traceback}
    if isinstance(exc, (JobDead, JobCancelled)):
        return {"reason": exc.reason}
    return {"reason": str(exc)}


@click.command()
@click.option("--state", type=click.Choice(STATES), default=None, help="Only jobs in this state.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="How many of the newest jobs.")
@click.option("--task", default=None, help="Only jobs of this task.")
@click.option("--since", type=Duration(), default=None,
              help="Only jobs submitted within this long: 90s, 15m, 2h, 7d.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for programs.")
@click.pass_context
def jobs(ctx: click.Context, state: str | None, limit: int, task: str | None,
         since: float | None, as_json: bool) -> None:
    """List the newest jobs (from the journal itself when no daemon runs), with their
    priority and age."""
    config = _config(ctx)
    journal = _journal_without_daemon(config)
    after = None if since is None else time.time() - since
    if journal is None:
        filters = {k: v for k, v in (("state", state), ("task", task), ("since", after))
                   if v is not None}
        rows = _call(config, "jobs", **filters, limit=limit)["jobs"]
    else:
        # The journal without its daemon: a job it ran is pending, and runs again at start.
        # The shared queue lists ended jobs: running ones are shown by each host's status.
        try:
            rows = [] if state == "running" else \
                [j.summary() for j in journal.recent(state, limit, task, after)]
        except (StoreError, TimeoutError) as exc:
            fail(1, f"jobs not read: {exc}")
        finally:
            journal.close()
    if as_json:
        click.echo(json.dumps({"jobs": rows}, indent=2))
        return
    now = time.time()
    table = [[r["id"], r["task"], r["state"],
              str(r.get("priority", wire.DEFAULT_PRIORITY)), str(r["runs"]),
              str(r["attempts"]), render.duration(now - r["submitted"]) + " ago",
              _last_error(r, now)] for r in rows]
    click.echo(render.table(["ID", "TASK", "STATE", "PRI", "RUNS", "LOST", "SUBMITTED",
                             "ERROR"], table))


def _last_error(row: dict[str, Any], now: float) -> str:
    """The job's error; for a pending one, the failure it waits to retry after."""
    error = row["error"] or {}
    text = error.get("reason") or (f"{error.get('type')}: {error.get('message')}"
                                   if error.get("type") else error.get("message")) or "-"
    retry_at = row.get("retry_at")
    if row["state"] == "pending" and retry_at is not None and text != "-":
        wait = retry_at - now
        return f"retry {'in ' + render.duration(wait) if wait > 0 else 'due'} after {text}"
    return text


@click.command()
@click.argument("job_id")
@click.pass_context
def job(ctx: click.Context, job_id: str) -> None:
    """Show one job, with its result or error, as JSON (from the journal when no daemon
    runs)."""
    config = _config(ctx)
    journal = _journal_without_daemon(config)
    if journal is None:
        info = _call(config, "job", id=job_id)["job"]
    else:
        try:
            stored = journal.get(job_id)
            if stored is None:
                fail(1, f"no such job: {job_id}")
            info = stored.info()
        except (ValueError, StoreError, TimeoutError) as exc:
            fail(1, str(exc))
        finally:
            journal.close()
    click.echo(json.dumps(info, indent=2))


class _NoJournal:
    """The journal of a state_dir where nothing was ever submitted: no jobs."""

    def recent(self, state: str | None, limit: int, task: str | None = None,
               since: float | None = None) -> list[StoredJob]:
        return []

    def get(self, job_id: str) -> StoredJob | None:
        return None

    def close(self) -> None:
        pass


def _journal_without_daemon(config: Config) -> Journal | _NoJournal | SharedClient | None:
    """None while a daemon runs with the SQLite backend (ask it: it knows which jobs run);
    else its journal, read directly (that backend keeps every job there), or, with the NATS
    backend, the shared queue itself (every host's jobs; the daemon's loop is not made to
    wait on NATS for it), with a note on stderr when no daemon runs here."""
    paths = _paths(config)
    running = running_pid(paths.pidfile) is not None
    if config.queue.backend == "nats":
        if not running:
            click.echo(f"docbrain is not running here: jobs as the shared queue has them "
                       f"(NATS stream {config.queue.nats.stream})", err=True)
        try:
            return SharedClient(config)
        except QueueUnreachable as exc:
            fail(1, str(exc))
    if running:
        return None
    click.echo(f"docbrain is not running: jobs as its journal has them "
               f"(state_dir {paths.state_dir})", err=True)
    if not os.path.exists(paths.journal):
        return _NoJournal()
    return Journal(paths.journal, config.queue.synchronous)


COMMANDS = (submit, jobs, job)
