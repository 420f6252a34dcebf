"""What one pass of the daemon's loop tells the clients of `queue.sock` (acknowledgements,
rejections, ends of jobs), gathered into one message each, and sent once the pass's commit
is settled (supervisor.jobs.store.Commit): nothing is acknowledged before it is durable."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import zmq

from supervisor.jobs.store import Commit
from supervisor.proto import wire

log = logging.getLogger("supervisor.jobs")
End = tuple[str, str, "dict[str, Any] | None", bytes]  # job id, state, error, result


def _job_results(ends: list[End]) -> wire.JobResult:
    return wire.JobResult(ids=[e[0] for e in ends], states=[e[1] for e in ends],
                          errors=[e[2] for e in ends], data=[e[3] for e in ends])


@dataclass
class Replies:
    rejected: list[tuple[bytes, wire.Rejected]] = field(default_factory=list)
    acks: dict[bytes, list[str]] = field(default_factory=dict)
    ends: dict[bytes, list[End]] = field(default_factory=dict)

    def settle(self, commit: Commit) -> None:
        """A shared store could not keep some submits (their submitters are refused) or
        does not know whether it did (left unanswered: their clients send them again)."""
        if not commit.refused and not commit.unanswered:
            return
        refused, unsure = commit.refused, set(commit.unanswered)
        for client, ids in self.acks.items():
            self.rejected += [(client, wire.Rejected(id=i, error=refused[i]))
                              for i in ids if i in refused]
            self.acks[client] = [i for i in ids if i not in refused and i not in unsure]

    def send(self, sock: zmq.Socket[Any]) -> None:
        out: list[tuple[bytes, list[bytes]]] = [(c, wire.encode(m)) for c, m in self.rejected]
        for client, ids in self.acks.items():
            out += [(client, f) for f in wire.encode_many(lambda i: wire.Accepted(ids=i), ids)]
        for client, ends in self.ends.items():
            out += [(client, f) for f in wire.encode_many(_job_results, ends)]
        for client, frames in out:
            try:
                sock.send_multipart([client, *frames], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                log.debug("queue: reply to a gone client dropped: %s", exc)
