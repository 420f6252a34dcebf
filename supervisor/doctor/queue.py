"""doctor's look at the job queue: with `[queue] backend = "nats"`, the NATS servers, the
stream and its replicas, and the consumer every host shares, read (never changed) with a
connection of doctor's own, so it works with or without a daemon here."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from supervisor.conf.settings import Config
from supervisor.jobs.jetstream import LEVELS, stream_problems
from supervisor.doctor.verdict import Status, Verdict
from supervisor.jobs.natslink import Link, NatsError, describe_servers
from supervisor.proto.wire import DEFAULT_PRIORITY

READ_TIMEOUT = 10.0  # seconds for the reads after the connection


@dataclass(frozen=True)
class SharedQueue:
    """What NATS says of this configuration's queue."""
    servers: str                               # as configured, without credentials
    error: str | None = None                   # no connection, or the reads failed
    server: str = ""                           # the server doctor connected to
    stream: Mapping[str, Any] | None = None    # replicas, messages, problems; None: absent
    consumer: Mapping[str, Any] | None = None  # ack_wait, waiting, leased, redelivered
    cluster: Mapping[str, Any] | None = None   # leader, replicas [{name, current, lag}]


async def _read(link: Link, config: Config) -> SharedQueue:
    from nats.js.errors import NotFoundError

    s = config.queue.nats
    await link.connect()
    found = SharedQueue(describe_servers(s), server=link.server)
    try:
        info = await link.js.stream_info(s.stream)
    except NotFoundError:
        return found
    cluster = None
    if info.cluster is not None:
        cluster = {"leader": info.cluster.leader, "replicas": [
            {"name": r.name, "current": bool(r.current), "lag": r.lag or 0}
            for r in info.cluster.replicas or []]}
    stream = {"replicas": info.config.num_replicas, "messages": info.state.messages,
              "problems": stream_problems(s.stream, info.config, s)}
    infos = {}  # a consumer per priority (supervisor.jobs.jetstream)
    for level in LEVELS:
        durable = f"{s.stream}_workers" + ("" if level == DEFAULT_PRIORITY else f"_p{level}")
        try:
            infos[level] = await link.js.consumer_info(s.stream, durable)
        except NotFoundError:
            continue
    consumer = None
    if infos:
        first = infos.get(DEFAULT_PRIORITY) or next(iter(infos.values()))
        consumer = {"ack_wait": first.config.ack_wait,
                    "waiting": sum(c.num_pending or 0 for c in infos.values()),
                    "leased": sum(c.num_ack_pending or 0 for c in infos.values()),
                    "redelivered": sum(c.num_redelivered or 0 for c in infos.values())}
    return SharedQueue(found.servers, server=found.server, stream=stream, consumer=consumer,
                       cluster=cluster)


def look(config: Config) -> SharedQueue | None:
    """The shared queue as NATS has it; None with the SQLite backend."""
    if config.queue.backend != "nats":
        return None
    s = config.queue.nats
    link = Link(s, "docbrain doctor")
    try:
        return link.call(_read(link, config), s.connect_timeout + READ_TIMEOUT)
    except (NatsError, TimeoutError, asyncio.TimeoutError) as exc:
        return SharedQueue(describe_servers(s), error=str(exc) or type(exc).__name__)
    except Exception as exc:  # a server that answers oddly: say so, do not fail doctor
        return SharedQueue(describe_servers(s), error=f"{type(exc).__name__}: {exc}")
    finally:
        link.close()


def judge(config: Config, shared: SharedQueue | None) -> Verdict:
    """The queue check: what NATS said (`look`) against the configuration."""
    q = config.queue
    if q.backend != "nats":
        return Verdict(Status.PASS, "SQLite journal in state_dir: one host's queue")
    s = q.nats
    if shared is None or shared.error is not None:
        why = (shared.error if shared is not None else None) or "not looked at"
        return Verdict(Status.FAIL, why, "start the NATS servers, or fix [queue.nats] servers "
                       "and credentials (`docbrainctl config` shows what is in use)")
    if shared.stream is None:
        return Verdict(Status.PASS, f"connected to {shared.server}; stream {s.stream} does "
                       f"not exist yet: the first daemon to start creates it ({s.replicas} "
                       "replicas)")
    problems = list(shared.stream["problems"])
    if problems:
        return Verdict(Status.FAIL, f"stream {s.stream}: {'; '.join(problems)}",
                       "daemons refuse it: change queue.nats.stream, or the stream itself")
    replicas = (shared.cluster or {}).get("replicas") or []
    behind = [r for r in replicas if not r["current"]]
    if behind:
        names = ", ".join(f"{r['name']} (lag {r['lag']})" for r in behind)
        return Verdict(Status.WARN, f"stream {s.stream}: replica(s) not current: {names}",
                       "look at those NATS nodes: a replica behind cannot take over from "
                       "the leader")
    if s.replicas == 1 and len(s.servers) > 1:
        return Verdict(Status.WARN, f"{len(s.servers)} servers configured but replicas = 1: "
                       "the jobs live on one node, and the queue stops with it",
                       "set queue.nats.replicas = 3 (on a new stream name: a stream's "
                       "replicas are not changed here)")
    consumer = shared.consumer or {}
    if consumer and abs(float(consumer["ack_wait"]) - s.ack_wait) > 0.001:
        return Verdict(Status.WARN, f"the consumer's ack_wait is {consumer['ack_wait']:g} s, "
                       f"this configuration says {s.ack_wait:g} s", "give every host the "
                       "same queue.nats.ack_wait (each daemon sets it when it starts)")
    leader = (shared.cluster or {}).get("leader")
    where = f", leader {leader}, all current" if leader and replicas else ""
    counts = (f": {consumer['waiting']} waiting, {consumer['leased']} leased, "
              f"{consumer['redelivered']} redelivered" if consumer else "")
    return Verdict(Status.PASS, f"{shared.server}: stream {s.stream}, "
                   f"{shared.stream['replicas']} replica(s){where}{counts}")
