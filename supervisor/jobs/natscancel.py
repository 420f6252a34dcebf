"""Cancelling jobs of the queue shared on NATS (supervisor.jobs.jetstream), as on one host
(supervisor.jobs.cancel): all or none; a job running is cancelled only with terminate.

The canceller (docbrainctl, a SharedClient, Client.cancel on a host) first asks every host
which of the jobs it runs (`NAME.cancel`, answers gathered for ASK_WINDOW: only hosts that
run one answer), and refuses the request if one runs and terminate was not asked. Then per
job it stores the end `cancelled` (the first end stored wins, so a job that ended meanwhile
keeps its end, and is not counted cancelled) with the job's payload (a cancelled job can be
retried), and deletes the job's message from the stream: no host pulls it again. Every host
watches the ends: one that holds the job drops it (pulled, or held by a worker that has not
started it: asked back), and one whose worker runs it stops that worker if the end says
terminate (supervisor.jobs.cancel: `ended_elsewhere`). A host that does not answer in time
(frozen) is taken to run none: its run, if any, ends late and is dropped.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from typing import Any

from supervisor.conf.settings import Config
from supervisor.jobs.jetstream import TASK_HEADER, Layout, decode_record, job_key, level_of
from supervisor.jobs.natslink import Link
from supervisor.jobs.journal import CANCELLED, PENDING

ASK_WINDOW = 0.5  # seconds the canceller gathers the hosts' answers
CANCEL_TIMEOUT = 60.0  # seconds a cancel may take at most (a read of each job, a write)


class CancelError(ValueError):
    """A cancel refused whole: one line naming each job that cannot be; nothing changed."""


async def running_where(layout: Layout, job_ids: list[str]) -> dict[str, str]:
    """Per job that a host's worker runs now: where ("host H, worker slot N")."""
    nc = layout.link.nc
    inbox = nc.new_inbox()
    found: dict[str, str] = {}

    async def answer(msg: Any) -> None:
        try:
            told = json.loads(msg.data)
            for job_id, slot in dict(told.get("running") or {}).items():
                found[str(job_id)] = f"host {told.get('host')}, worker slot {slot}"
        except (ValueError, TypeError, AttributeError):
            pass  # not an answer of ours

    sub = await nc.subscribe(inbox, cb=answer)
    try:
        await nc.publish(layout.cancels, json.dumps({"ids": job_ids}).encode(), reply=inbox)
        await nc.flush()
        await asyncio.sleep(ASK_WINDOW)
    finally:
        await sub.unsubscribe()
    return found


async def cancel(layout: Layout, job_ids: list[str],
                 terminate: bool) -> tuple[list[str], list[str]]:
    """Cancel the jobs, all or none: (the ids cancelled, those of them that were running);
    CancelError naming each that cannot be."""
    if not job_ids:
        raise CancelError("cancel: name at least one job")
    job_ids = list(dict.fromkeys(job_ids))
    found, problems = {}, []
    for job_id in job_ids:
        key = job_key(job_id)
        entry = await layout.entry(key)
        record = decode_record(entry.value or b"{}")[0] if entry is not None else None
        msg = await layout.pending_msg(key)
        if record is not None and record.get("state") != PENDING:
            problems.append(f"{job_id} is {record.get('state')} already")
        elif msg is None:
            problems.append(f"{job_id}: no such job")
        else:
            found[job_id] = msg
    running = await running_where(layout, list(found)) if found else {}
    if not terminate:
        problems += [f"{job_id} is running ({where}): cancel it with --terminate, which "
                     "stops its worker" for job_id, where in running.items()]
    if problems:
        raise CancelError(f"cancel: {'; '.join(problems)} (nothing was cancelled)")
    cancelled = []
    for job_id, msg in found.items():
        if await _cancel_one(layout, job_id, msg, job_id in running):
            cancelled.append(job_id)
    return cancelled, [job_id for job_id in cancelled if job_id in running]


async def _cancel_one(layout: Layout, job_id: str, msg: Any, running: bool) -> bool:
    """Store the job's end `cancelled`, then take its message out of the stream; False if
    it ended meanwhile (its end stays)."""
    from nats.js.errors import NotFoundError

    record = {"id": job_id, "task": (msg.headers or {}).get(TASK_HEADER, "?"),
              "state": CANCELLED, "attempts": 0, "runs": 1 if running else 0,
              "submitted": msg.time.timestamp() if msg.time else None,
              "finished": time.time(), "priority": level_of(msg.subject),
              "host": f"cancelled from {socket.gethostname()}",
              "error": {"reason": "cancelled; its worker was stopped" if running
                        else "cancelled", "terminate": running},
              "payload": (msg.data or b"null").decode()}
    if await layout.store_end(job_key(job_id), record, None) is None:
        return False
    try:
        await layout.link.js.delete_msg(layout.stream, msg.seq)
    except NotFoundError:
        pass  # acknowledged meanwhile (a run that ends now: its end came too late)
    return True


def cancel_once(config: Config, job_ids: list[str], terminate: bool) -> list[str]:
    """A cancel on a connection of its own (Client.cancel on a host whose daemon talks to
    NATS: the daemon's loop does not wait on the hosts' answers); the ids cancelled."""
    s = config.queue.nats
    link = Link(s, f"docbrain cancel {socket.gethostname()} pid {os.getpid()}")
    layout = Layout(link, s, config.queue.result_ttl)

    async def run() -> list[str]:
        await link.connect()
        await layout.ensure()
        return (await cancel(layout, job_ids, terminate))[0]

    try:
        return link.call(run(), s.connect_timeout + CANCEL_TIMEOUT)
    finally:
        link.close()
