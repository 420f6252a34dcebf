"""The connection to NATS (`[queue.nats]`): nats-py runs on an asyncio loop in a thread of
its own; the daemon's thread (or a client's) hands it coroutines and waits on their
futures. nats-py reconnects by itself, to any server of the list, forever."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit

from supervisor.conf.settings import NatsSettings, redacted_url
from supervisor.jobs.store import StoreError

log = logging.getLogger("supervisor.jobs")
T = TypeVar("T")
JS_TIMEOUT = 5.0
DEFAULT_PORTS = {"nats": 4222, "tls": 4222, "ws": 80, "wss": 443}


class NatsError(StoreError):
    """NATS cannot be used as configured: one line for the user."""


class NatsUnreachable(NatsError):
    """No server of the configuration answers (it may later)."""


def transient(exc: BaseException) -> bool:
    """Is this a failure that may pass (a timeout, a reconnect, a cluster electing a
    leader), after which the same write is worth sending again?"""
    from nats import errors
    from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

    return isinstance(exc, (asyncio.TimeoutError, errors.NoRespondersError,
                            errors.ConnectionClosedError, errors.StaleConnectionError,
                            errors.ConnectionReconnectingError, errors.OutboundBufferLimitError,
                            ServiceUnavailableError, NoStreamResponseError, ConnectionError))


def describe_servers(settings: NatsSettings) -> str:
    return ", ".join(redacted_url(url) for url in settings.servers)


def _connect_options(settings: NatsSettings) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if settings.creds:
        options["user_credentials"] = settings.creds
    if settings.nkey:
        options["nkeys_seed"] = settings.nkey
    if settings.user:
        options["user"], options["password"] = settings.user, settings.password
    if settings.token:
        options["token"] = settings.token
    if settings.tls_ca or settings.tls_cert:
        context = ssl.create_default_context(cafile=settings.tls_ca or None)
        if settings.tls_cert:
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
        options["tls"] = context
    return options


class Link:
    """nats-py on its own thread. `run` schedules a coroutine there and returns its future;
    `call` waits for it. The connection reconnects by itself (nats-py), forever; losing it
    and getting it back are logged once each."""

    def __init__(self, settings: NatsSettings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.nc: Any = None
        self.js: Any = None
        self.up = threading.Event()  # connected now
        self.down_since = time.monotonic()  # when the connection was lost (or tried first)
        self.closing = False
        self.server = ""             # the server connected to (no credentials)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="nats", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = self.run(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"NATS did not answer within {timeout:g} s") from None

    async def connect(self) -> None:
        """Connect once (raises NatsError naming the servers); reconnects after that."""
        import nats
        from nats.errors import NoServersError

        s = self.settings

        async def disconnected() -> None:
            if self.up.is_set() and not self.closing:
                self.up.clear()
                self.down_since = time.monotonic()
                log.warning("NATS: connection to %s lost; reconnecting", self.server)

        async def reconnected() -> None:
            self._note_server()
            log.info("NATS: connected again, to %s", self.server)

        async def error(exc: Exception) -> None:
            log.debug("NATS: %s", exc)

        if not await self._any_reachable():
            raise NatsUnreachable(f"NATS servers unreachable ({describe_servers(s)}): no "
                                  f"server accepted a connection within "
                                  f"{s.connect_timeout:g} s")
        try:
            self.nc = await nats.connect(
                servers=list(s.servers), name=self.name,
                connect_timeout=max(1, round(s.connect_timeout)),
                allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=1,
                disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error,
                **_connect_options(s))
        except (NoServersError, OSError, asyncio.TimeoutError) as exc:
            raise NatsUnreachable(f"NATS servers unreachable ({describe_servers(s)}): "
                            f"{exc or type(exc).__name__}") from None
        except Exception as exc:  # authentication, TLS: nats-py has no common base for them
            raise NatsError(f"NATS connection to {describe_servers(s)} refused: {exc}") from None
        # Requests wait this long: a cluster that lost a node takes seconds to elect leaders.
        self.js = self.nc.jetstream(timeout=max(JS_TIMEOUT, s.connect_timeout))
        self._note_server()

    async def _any_reachable(self) -> bool:
        """Does any server accept a TCP connection? (nats-py itself would try forever.)"""
        async def reachable(url: str) -> bool:
            parts = urlsplit(url if "://" in url else f"nats://{url}")
            port = parts.port or DEFAULT_PORTS.get(parts.scheme, 4222)
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(parts.hostname, port), self.settings.connect_timeout)
            except (OSError, asyncio.TimeoutError):
                return False
            writer.close()
            return True
        return any(await asyncio.gather(*(reachable(u) for u in self.settings.servers)))

    def _note_server(self) -> None:
        url = self.nc.connected_url if self.nc is not None else None
        self.server = redacted_url(url.geturl()) if url is not None else ""
        self.up.set()

    async def _close(self) -> None:
        self.closing = True
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), 5)
            except Exception as exc:  # a close must not fail the daemon's stop
                log.debug("NATS: drain at close: %s", exc)
                await self.nc.close()
        this = asyncio.current_task()
        left = [task for task in asyncio.all_tasks() if task is not this]
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    def close(self) -> None:
        try:
            self.call(self._close(), 10)
        except (TimeoutError, RuntimeError) as exc:
            log.debug("NATS: close: %s", exc)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
