"""`docbrainctl retry` and `purge` on the queue shared on NATS (supervisor.jobs.jetstream),
made by docbrainctl itself (on the NATS thread of its SharedClient), not by a daemon: they
read the whole results bucket, which no daemon's loop should wait on.

A retry publishes the job again from its stored end (the payload of a job that did not end
done is kept there), with a message id of its own (the stream's duplicate window would
drop the id it had) and the revision of its end in a header; then it puts a pending record
in place of that end, so that clients wait for the new outcome. The end of the new run
replaces either (supervisor.jobs.jetstream: `store_end`), the old outcome kept in its
history. All or none, as on one host (supervisor.jobs.upkeep).

A purge of ended jobs deletes their ends; of pending jobs it empties the stream (waiting,
delayed and held jobs alike: a run going on ends and keeps its end), only whole: the stream
is not searched job by job, so `--task` and `--older-than` are refused there.
"""

from __future__ import annotations

import time
from typing import Any

from supervisor.jobs.jetstream import (RETRY_OF_HEADER, TASK_HEADER, Layout, decode_record,
                                       encode_record, job_key, past)
from supervisor.jobs.journal import PENDING
from supervisor.jobs.upkeep import PURGEABLE, RETRYABLE
from supervisor.proto import wire

ALL_PENDING = ("purge: on the nats backend pending jobs are purged all at once (the whole "
               "stream): not with --task or --older-than")


class UpkeepError(ValueError):
    """A request refused whole: one line, nothing changed."""


async def ends(layout: Layout) -> list[tuple[str, int, dict[str, Any]]]:
    """Every stored end: (key, its revision, its record), read from the results bucket."""
    found = []
    for key, revision, value in await layout.results_now(30.0):
        try:
            found.append((key, revision, decode_record(value)[0]))
        except ValueError:
            continue  # no record of ours
    return found


async def retry(layout: Layout, job_ids: list[str], state: str | None,
                task: str | None) -> list[str]:
    """Run ended jobs again: those named, or every one in `state` (of `task`); their ids."""
    chosen: list[tuple[str, int, dict[str, Any]]] = []
    problems = []
    if state is not None:
        if state not in RETRYABLE:
            raise UpkeepError(f"retry: state must be one of {', '.join(RETRYABLE)}, "
                              f"got {state!r}")
        chosen = [(key, rev, rec) for key, rev, rec in await ends(layout)
                  if rec.get("state") == state and (task is None or rec.get("task") == task)]
    for job_id in dict.fromkeys(job_ids):
        key = job_key(job_id)
        entry = await layout.entry(key)
        record = decode_record(entry.value or b"{}")[0] if entry is not None else None
        if record is None or record.get("state") == PENDING:
            pending = record is not None or await layout.pending(key)
            problems.append(f"{job_id} is pending" if pending else f"{job_id}: no such job")
        elif record.get("state") not in RETRYABLE:
            problems.append(f"{job_id} is {record.get('state')}")
        else:
            chosen.append((key, entry.revision, record))
    for key, _, record in chosen:
        if "payload" not in record:
            problems.append(f"{record.get('id')}: its payload was not kept (it ended before "
                            "this version kept payloads)")
    if problems:
        raise UpkeepError(f"retry: {'; '.join(problems)} (only failed, dead or cancelled "
                          "jobs run again; nothing was retried)")
    for key, revision, record in chosen:
        await _again(layout, key, revision, record)
    return [str(record.get("id")) for _, _, record in chosen]


async def _again(layout: Layout, key: str, revision: int, record: dict[str, Any]) -> None:
    """Publish the job again, then put the pending record in place of its end."""
    from nats.js.errors import KeyWrongLastSequenceError

    history = [*(record.get("history") or []), past(record)]
    priority = int(record.get("priority", wire.DEFAULT_PRIORITY))
    headers = {"Nats-Msg-Id": f"{key}.r{len(history)}", TASK_HEADER: str(record.get("task")),
               RETRY_OF_HEADER: str(revision)}
    await layout.link.js.publish(layout.subject_of(key, priority),
                                 str(record["payload"]).encode(), headers=headers)
    waiting = {"id": record.get("id"), "task": record.get("task"), "state": PENDING,
               "priority": priority, "submitted": time.time(), "history": history}
    try:
        await layout.results.update(key, encode_record(waiting, None), last=revision)
    except KeyWrongLastSequenceError:
        pass  # the new run ended already: its end is there
    await layout.announce({priority})


async def purge(layout: Layout, state: str, task: str | None, before: float | None,
                apply: bool) -> int:
    """How many jobs a purge takes; with `apply`, forget them."""
    if state not in PURGEABLE:
        raise UpkeepError(f"purge: state must be one of {', '.join(PURGEABLE)}, got {state!r}")
    if state == PENDING:
        if task is not None or before is not None:
            raise UpkeepError(ALL_PENDING)
        info = await layout.link.js.stream_info(layout.stream)
        count = int(info.state.messages or 0)
        if apply and count:
            await layout.link.js.purge_stream(layout.stream)
        return count
    keys = [key for key, _, rec in await ends(layout)
            if rec.get("state") == state and (task is None or rec.get("task") == task)
            and (before is None or float(rec.get("finished") or 0.0) < before)]
    if apply:
        for key in keys:
            await layout.results.delete(key)
    return len(keys)
