"""LISTEN/NOTIFY wake-ups for ``AsyncScheduler``: a task listening on a dedicated connection.

The connection comes from the application's ``AsyncEngine`` (so its connect arguments, TLS and
events apply) and is detached from the pool: a LISTENing connection must never be handed to
someone else. asyncpg delivers notifications to ``add_listener`` callbacks; psycopg's async
connection yields them from ``notifies()``. As with the threaded listener, a notification is only a
hint: after every (re)connection the poller is woken once to cover what was missed, and it keeps
its own timer. Other async drivers fall back to polling alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from .listen import _one_line, listen_sql

logger = logging.getLogger(__name__)

SUPPORTED_DRIVERS = ("asyncpg", "psycopg")
#: How long the listener stays silent before it checks that its connection still answers (a
#: half-open TCP connection delivers nothing and reports no error).
KEEPALIVE_SECONDS = 5.0
RECONNECT_MAX_SECONDS = 5.0


class ListenerLost(ConnectionError):
    """The LISTEN connection was closed."""


class AsyncListener:
    """Listens on ``channel`` and calls ``on_notify(payload)`` (on the loop) for each notification."""

    def __init__(
        self,
        engine: AsyncEngine,
        channel: str,
        on_notify: Callable[[str], None],
        *,
        log: logging.Logger | logging.LoggerAdapter[Any] = logger,
    ) -> None:
        self.engine = engine
        self.channel = channel
        self.on_notify = on_notify
        self.log = log
        self.driver = engine.dialect.driver
        self.connected = asyncio.Event()
        self.backend_pid: int | None = None
        """The server process of the current LISTEN connection (tests terminate it)."""
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def supported(self) -> bool:
        return self.driver in SUPPORTED_DRIVERS

    def start(self) -> None:
        if not self.supported:
            self.log.info(
                "driver %s has no LISTEN support here; polling only",
                self.driver,
                extra={"event": "notify.unsupported"},
            )
            return
        self._task = asyncio.create_task(self._loop(), name="pg_scheduler-listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close()

    async def _connect(self) -> Any:
        fairy = await self.engine.raw_connection()
        driver_conn = fairy.driver_connection  # read before detach(): afterwards it is None
        # Detached: no longer the pool's; we close it ourselves (no GC cleanup after a detach).
        fairy.detach()
        return driver_conn

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        self.backend_pid = None
        self.connected.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), KEEPALIVE_SECONDS)

    def _listening(self, backend_pid: int) -> None:
        self.backend_pid = backend_pid
        self.connected.set()
        self.on_notify("")  # whatever was sent while we were not listening

    async def _loop(self) -> None:
        backoff = 0.1
        while True:
            try:
                self._conn = await self._connect()
                listen = self._listen_asyncpg if self.driver == "asyncpg" else self._listen_psycopg
                await listen(self._conn)  # returns only by raising: the connection was lost
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.connected.is_set():  # it was listening: a fresh failure, retry soon
                    backoff = 0.1
                await self._close()
                self.log.warning(
                    "LISTEN connection failed (%s); retrying in %.1fs",
                    _one_line(exc),
                    backoff,
                    extra={"event": "notify.reconnect"},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_SECONDS)

    async def _listen_asyncpg(self, conn: Any) -> None:
        if conn.is_in_transaction():  # LISTEN in a transaction waits for a COMMIT that never comes
            await conn.execute("ROLLBACK")
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(
            self.channel, lambda _conn, _pid, _channel, payload: self.on_notify(payload)
        )
        self._listening(conn.get_server_pid())
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), KEEPALIVE_SECONDS)
            except asyncio.TimeoutError:
                await asyncio.wait_for(conn.execute("SELECT 1"), KEEPALIVE_SECONDS)
        raise ListenerLost("the LISTEN connection was closed")

    async def _listen_psycopg(self, conn: Any) -> None:
        # A pooled connection may be in a transaction (pool_pre_ping's SELECT 1 opens one), and
        # psycopg refuses to switch to autocommit there.
        await conn.rollback()
        await conn.set_autocommit(True)
        await conn.execute(listen_sql(self.engine.dialect, self.channel))
        self._listening(conn.info.backend_pid)
        while True:
            async for notify in conn.notifies(timeout=KEEPALIVE_SECONDS):
                self.on_notify(notify.payload)
            await asyncio.wait_for(conn.execute("SELECT 1"), KEEPALIVE_SECONDS)
