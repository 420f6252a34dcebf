"""docbrainctl doctor with `[queue] backend = "nats"`: the queue check reads the real
server (never changes it), with or without a daemon here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import Instance

from supervisor.client import Client
from tests.nats_servers import NatsNode

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux /proc")


def _queue_check(instance: Instance) -> tuple[int, dict[str, str]]:
    result = instance.ctl("doctor", "--json")
    assert result.returncode in (0, 1), result.stderr
    checks = {c["check"]: c for c in json.loads(result.stdout)["checks"]}
    return result.returncode, checks["queue"]


def test_doctor_reads_the_shared_queue_and_names_unreachable_servers(
        tmp_path: Path, nats_server: NatsNode) -> None:
    here = Instance(tmp_path, tmp_path / "state")
    here.write_config(f'[queue]\nbackend = "nats"\n[queue.nats]\nservers = ["{nats_server.url}"]\n'
                      "ack_wait = 7\n")
    _, check = _queue_check(here)
    assert check["status"] == "PASS", check
    assert "stream DOCBRAIN does not exist yet" in check["detail"]
    with Client(str(here.config_path)) as client:  # no daemon: it creates the stream
        client.submit_many_nowait("echo", [1, 2, 3])
    _, check = _queue_check(here)
    assert check["status"] == "PASS", check
    assert check["detail"] == (f"{nats_server.url}: stream DOCBRAIN, 1 replica(s): 3 waiting, "
                               "0 leased, 0 redelivered")
    nats_server.stop()
    code, check = _queue_check(here)
    assert code == 1 and check["status"] == "FAIL", check
    assert nats_server.url in check["detail"] and "unreachable" in check["detail"]
