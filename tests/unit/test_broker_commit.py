"""A shared store settles a commit later (its network round trip must not stall the
daemon's loop): the broker then tells a pass's clients only once its commit is settled,
and tells passes in order. Looked-up jobs (`look`, `answers`) are told the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq

from supervisor.conf.config import load_config
from supervisor.jobs.broker import Broker
from supervisor.jobs.sqlite import SqliteStore
from supervisor.jobs.store import Commit
from supervisor.proto import wire


class LateStore(SqliteStore):
    """The journal, with commits settled only when the test says so."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.open: list[Commit] = []

    def commit(self) -> Commit:
        super().commit()
        report = Commit(settled=False)
        self.open.append(report)
        return report


def _setup(tmp_path: Path) -> tuple[Broker, LateStore, zmq.Socket[Any]]:
    config_path = tmp_path / "docbrain.toml"
    config_path.write_text(f'[supervisor]\nstate_dir = "{tmp_path}"\n')
    broker = Broker(load_config(str(config_path)), zmq.Context.instance(),
                    f"ipc://{tmp_path}/q.sock", str(tmp_path / "journal.db"))
    broker.store.close()
    store = LateStore(str(tmp_path / "late.db"))
    broker.store = store
    broker.worker_ready({"echo": {}})
    client: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(f"ipc://{tmp_path}/q.sock")
    return broker, store, client


def _send(broker: Broker, client: zmq.Socket[Any], message: Any) -> None:
    client.send_multipart(wire.encode(message))
    assert broker.sock.poll(5000)
    broker.drain()


def _told(client: zmq.Socket[Any]) -> list[Any]:
    out = []
    while client.poll(200):
        out.append(wire.decode(client.recv_multipart()))
    return out


def test_nothing_is_told_before_its_commit_settles_and_passes_are_told_in_order(
        tmp_path: Path) -> None:
    broker, store, client = _setup(tmp_path)
    try:
        _send(broker, client, wire.Submit(ids=["a"], task="echo", data=[b"1"]))
        broker.flush()
        _send(broker, client, wire.Submit(ids=["b"], task="echo", data=[b"2"]))
        broker.flush()
        assert _told(client) == []          # neither commit is settled
        store.open[1].settled = True
        broker.flush()
        assert _told(client) == []          # b's pass waits for a's
        store.open[0].settled = True
        broker.flush()
        assert _told(client) == [wire.Accepted(ids=["a"]), wire.Accepted(ids=["b"])]
    finally:
        client.close(0)
        broker.close()


def test_a_commit_settled_with_refusals_rejects_those_submits_only(tmp_path: Path) -> None:
    broker, store, client = _setup(tmp_path)
    try:
        _send(broker, client, wire.Submit(ids=["a", "b", "c"], task="echo", wait=True,
                                          data=[b"1", b"2", b"3"]))
        broker.flush()
        report = store.open[0]
        report.refused["b"] = "NATS servers unreachable"
        report.unanswered.append("c")       # stored or not: the client sends it again
        report.settled = True
        broker.flush()
        assert _told(client) == [wire.Rejected(id="b", error="NATS servers unreachable"),
                                 wire.Accepted(ids=["a"])]
        assert "b" not in broker.waiters and "a" in broker.waiters
    finally:
        client.close(0)
        broker.close()


def test_a_wait_on_an_unknown_or_ended_job_is_answered_after_its_commit(
        tmp_path: Path) -> None:
    broker, store, client = _setup(tmp_path)
    try:
        job = store.journal
        assert job.add("old", "echo", b"5", 1.0)
        job.finish("old", "done", 0, 1, 2.0, b"10", None)
        _send(broker, client, wire.Wait(ids=["old", "nonesuch"]))
        broker.flush()                      # the journal answers the look at once...
        broker.flush()
        assert _told(client) == []          # ...but the passes' commits are not settled
        for report in store.open:
            report.settled = True
        broker.flush()
        told = _told(client)
        assert len(told) == 1 and isinstance(told[0], wire.JobResult)
        assert told[0].ids == ["old", "nonesuch"] and told[0].states == ["done", "unknown"]
        assert told[0].data == [b"10", b"null"]
    finally:
        client.close(0)
        broker.close()
