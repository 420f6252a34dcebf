"""docbrainctl doctor and logs: troubleshooting, with or without a running daemon.

`doctor` gathers the facts (supervisor.doctor.facts) and judges them with the checks of
`supervisor.doctor.checks`. `logs` reads the daemon log: the
last lines, optionally one slot's, and with -f new lines across log rotation.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from typing import IO

import click

from supervisor.cli.common import CliExit, _config, _paths, fail
from supervisor.doctor.checks import Status, Verdict
from supervisor.doctor.every import run_checks
from supervisor.doctor.facts import gather

FOLLOW_POLL = 0.2  # seconds between looks at the log file while following
TAIL_BLOCK = 1 << 16


# -- doctor: the command ---------------------------------------------------------------------

def render(results: list[tuple[str, Verdict]]) -> str:
    width = max(len(name) for name, _ in results)
    lines = []
    for name, v in results:
        lines.append(f"{v.status}  {name.ljust(width)}  {v.detail}")
        if v.advice and v.status is not Status.PASS:
            lines.append(f"{'':4}  {'':{width}}  -> {v.advice}")
    counts = {s: sum(1 for _, v in results if v.status is s) for s in Status}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


@click.command()
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object: {ok, checks: [{check, status, detail, advice}]}.")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check the installation, the configuration and the daemon (exit 1 if a check FAILs)."""
    results = run_checks(gather(_config(ctx)))
    ok = all(v.status is not Status.FAIL for _, v in results)
    if as_json:
        click.echo(json.dumps({"ok": ok, "checks": [
            {"check": name, "status": str(v.status), "detail": v.detail, "advice": v.advice}
            for name, v in results]}, indent=2))
    else:
        click.echo(render(results))
    if not ok:
        raise CliExit(1)


# -- logs ------------------------------------------------------------------------------------

def slot_filter(slot: int | None) -> Callable[[str], bool]:
    """Lines about one slot: its worker's output `[slot N pid P]` and the pool's `slot N:`."""
    if slot is None:
        return lambda _line: True
    pattern = re.compile(rf"\[slot {slot} pid \d+\]|\bslot {slot}: ")
    return lambda line: pattern.search(line) is not None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").rstrip("\r")


def tail(fh: IO[bytes], count: int, keep: Callable[[str], bool]) -> tuple[list[str], int]:
    """The last `count` complete lines that `keep` accepts, read backwards from the end,
    and the offset after the last complete line (where following goes on)."""
    size = fh.seek(0, os.SEEK_END)
    pos, carry, end = size, b"", None
    found: list[str] = []
    while pos > 0 and (end is None or len(found) < count):
        step = min(TAIL_BLOCK, pos)
        pos -= step
        fh.seek(pos)
        parts = (fh.read(step) + carry).split(b"\n")
        carry = parts.pop(0)  # maybe the end of a line that started in an earlier block
        if end is None and parts:
            end = size - len(parts.pop())  # what follows the last newline is unfinished
        for raw in reversed(parts):
            if len(found) < count and keep(_text(raw)):
                found.append(_text(raw))
    if pos == 0 and end is not None and len(found) < count and keep(_text(carry)):
        found.append(_text(carry))
    return found[::-1], end or 0


def follow(fh: IO[bytes], path: str, offset: int, keep: Callable[[str], bool],
           emit: Callable[[str], None]) -> None:
    """Print new lines for ever; reopen `path` when it is a new file (rotated: its inode
    changed) or shorter than what was read (truncated). Ends only by KeyboardInterrupt."""
    fh.seek(offset)
    inode, partial = os.fstat(fh.fileno()).st_ino, b""
    try:
        while True:
            data = fh.read()
            if data:
                *lines, partial = (partial + data).split(b"\n")
                for raw in lines:
                    if keep(_text(raw)):
                        emit(_text(raw))
                continue
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None  # moved away and not yet recreated: the old file may still grow
            if now is not None and (now.st_ino != inode or now.st_size < fh.tell()):
                # The old file has been read to its end above; on to the new one.
                try:
                    new = open(path, "rb")
                except FileNotFoundError:
                    continue  # moved again meanwhile: look again
                fh.close()
                fh, inode, partial = new, os.fstat(new.fileno()).st_ino, b""
                continue
            time.sleep(FOLLOW_POLL)
    finally:
        fh.close()


@click.command()
@click.option("-n", "--lines", "count", type=click.IntRange(min=0), default=50,
              show_default=True, help="How many of the last lines to print.")
@click.option("-f", "--follow", "following", is_flag=True,
              help="Then print new lines as they come, across log rotation; Ctrl-C ends.")
@click.option("--worker", "slot", type=click.IntRange(min=0), default=None,
              help="Only the lines about this worker slot.")
@click.pass_context
def logs(ctx: click.Context, count: int, following: bool, slot: int | None) -> None:
    """Print the daemon log (its workers' output included); no daemon needed."""
    path = _paths(_config(ctx)).log_file
    keep = slot_filter(slot)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        fail(1, f"no log file at {path}")
    except OSError as exc:
        fail(1, f"cannot read {path}: {exc.strerror}")
    try:
        lines, end = tail(fh, count, keep)
        for line in lines:
            click.echo(line)
        if following:
            follow(fh, path, end, keep, click.echo)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how -f ends
    except BrokenPipeError:
        # The reader went away (`| head`): quietly, and without a second error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        fh.close()


COMMANDS = (doctor, logs)
