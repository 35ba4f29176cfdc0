"""LISTEN/NOTIFY wake-ups: a dedicated connection that wakes the poller on each notification; a
thread for ``Scheduler`` (``Listener``), a task for ``AsyncScheduler`` (``AsyncListener``).

A notification is only a hint (it is lost while the listener is disconnected, and never arrives
through PgBouncer's transaction pooling), so the poller also wakes on its own timer; after every
(re)connection the listener wakes it once, to cover whatever was missed. The connection comes from
the application's engine (so its connect arguments, TLS and events apply) and is detached from the
pool: a LISTENing connection must never be handed to someone else.

Each driver waits differently: psycopg 3 has ``notifies(timeout=…)`` (sync and async), psycopg2
``select`` + ``poll``; pg8000 only sees notifications when it reads from the socket, so it sends a
cheap ``SELECT 1`` once a second; asyncpg calls ``add_listener`` callbacks. The async listener
checks a silent connection with ``SELECT 1`` every ``KEEPALIVE_SECONDS`` (a half-open TCP
connection delivers nothing and reports no error). Other drivers fall back to polling alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import select
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from pg_scheduler.db.outages import first_line
from pg_scheduler.db.timeouts import Deadlines

if TYPE_CHECKING:  # SQLAlchemy's asyncio needs greenlet, which a synchronous install may lack
    from sqlalchemy.ext.asyncio import AsyncEngine

logger = logging.getLogger(__name__)

SUPPORTED_DRIVERS = ("psycopg", "psycopg2", "pg8000")
WAIT_SECONDS = 0.5
PG8000_POLL_SECONDS = 1.0
#: How long a listener stays silent before it checks that its connection still answers.
KEEPALIVE_SECONDS = 5.0
RECONNECT_MAX_SECONDS = 5.0


class _Listening:
    """What both listeners are: a channel, the callback, the log, and the drivers they serve."""

    drivers: tuple[str, ...] = ()

    def __init__(
        self,
        engine: sa.Engine | AsyncEngine,
        channel: str,
        on_notify: Callable[[str], None],
        *,
        log: logging.Logger | logging.LoggerAdapter[Any] = logger,
    ) -> None:
        self.channel = channel
        self.on_notify = on_notify
        self.log = log
        self.driver = engine.dialect.driver

    @property
    def supported(self) -> bool:
        return self.driver in self.drivers


class Listener(_Listening):
    """Listens on ``channel`` and calls ``on_notify(payload)`` for each notification."""

    drivers = SUPPORTED_DRIVERS

    def __init__(
        self,
        engine: sa.Engine,
        channel: str,
        on_notify: Callable[[str], None],
        *,
        log: logging.Logger | logging.LoggerAdapter[Any] = logger,
    ) -> None:
        super().__init__(engine, channel, on_notify, log=log)
        self.engine = engine
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self.connected = threading.Event()
        self._deadlines: Deadlines | None = None  # made at start, for the keepalive

    def start(self) -> None:
        if not listens(self):
            return
        self._thread = threading.Thread(
            target=self._loop, name="pg_scheduler-listener", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * PG8000_POLL_SECONDS)
        self._close()

    def _listen_sql(self) -> str:
        return listen_sql(self.engine.dialect, self.channel)

    def _connect(self) -> Any:
        fairy = self.engine.raw_connection()
        driver_conn: Any = fairy.driver_connection
        # Detached: a LISTENing connection must never go back to the pool for someone else.
        fairy.detach()
        # A pooled connection may be inside a transaction (pool_pre_ping's SELECT 1 opens one on
        # pg8000): LISTEN issued there only takes effect at a COMMIT that never comes, and psycopg
        # refuses to switch to autocommit mid-transaction. End it first.
        driver_conn.rollback()
        if self.driver == "psycopg2":
            driver_conn.set_session(autocommit=True)
            with driver_conn.cursor() as cur:
                cur.execute(self._listen_sql())
        else:
            driver_conn.autocommit = True
            cur = driver_conn.cursor()
            cur.execute(self._listen_sql())
            cur.close()
        return driver_conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _loop(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._conn = self._connect()
                self.connected.set()
                backoff = 0.1
                self.on_notify("")  # whatever was sent while we were not listening
                wait = getattr(self, f"_wait_{self.driver}")
                heard = time.monotonic()
                while not self._stop.is_set():
                    payloads = wait(self._conn)
                    if payloads:
                        heard = time.monotonic()
                    elif self.driver != "pg8000" and time.monotonic() - heard >= KEEPALIVE_SECONDS:
                        payloads = self._keepalive(self._conn)
                        heard = time.monotonic()
                    for payload in payloads:
                        self.on_notify(payload)
            except Exception as exc:
                self.connected.clear()
                self._close()
                if self._stop.is_set():
                    return
                self.log.warning(
                    "LISTEN connection failed (%s); retrying in %.1fs",
                    first_line(exc),
                    backoff,
                    extra={"event": "notify.reconnect"},
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _keepalive(self, conn: Any) -> list[str]:
        """After ``KEEPALIVE_SECONDS`` of silence, check that the connection still answers: a
        half-open TCP connection delivers nothing and reports no error. Under a deadline, so a
        black-holed network cuts the connection off (it raises, and the loop reconnects) instead
        of hanging. Returns the notifications psycopg2 read meanwhile (psycopg 3 hands those to
        notify handlers only: like any wake-up lost while the listener is busy, the poller's own
        timer covers it). pg8000's wait is a ``SELECT 1`` already."""
        if self._deadlines is None:
            self._deadlines = Deadlines(
                dt.timedelta(seconds=KEEPALIVE_SECONDS), name="pg_scheduler-listen"
            )
        with self._deadlines.guard(conn, "a LISTEN keepalive"):
            cur = conn.cursor()
            cur.execute("SELECT 1")
            cur.close()
        if self.driver == "psycopg2":
            payloads = [n.payload for n in conn.notifies]
            conn.notifies.clear()
            return payloads
        return []

    def _wait_psycopg(self, conn: Any) -> list[str]:
        # stop_after: return with the first notification. Without it the generator keeps
        # collecting until the timeout, and every wake-up came up to WAIT_SECONDS late.
        return [n.payload for n in conn.notifies(timeout=WAIT_SECONDS, stop_after=1)]

    def _wait_psycopg2(self, conn: Any) -> list[str]:
        ready, _, _ = select.select([conn], [], [], WAIT_SECONDS)
        if not ready:
            return []
        conn.poll()
        payloads = [n.payload for n in conn.notifies]
        conn.notifies.clear()
        return payloads

    def _wait_pg8000(self, conn: Any) -> list[str]:
        if self._stop.wait(PG8000_POLL_SECONDS):
            return []
        cur = conn.cursor()
        cur.execute("SELECT 1")  # reading the reply also reads queued notifications
        cur.close()
        payloads = []
        while conn.notifications:
            payloads.append(conn.notifications.popleft()[2])
        return payloads


def listens(listener: _Listening) -> bool:
    """Whether ``listener``'s driver can LISTEN here; if not, say that the node polls only."""
    if listener.supported:
        return True
    listener.log.info(
        "driver %s has no LISTEN support here; polling only",
        listener.driver,
        extra={"event": "notify.unsupported"},
    )
    return False


def listen_sql(dialect: sa.Dialect, channel: str) -> str:
    # LISTEN takes an identifier, not a bind parameter, so this is the one statement built as
    # text; the channel comes from validated names and is quoted by the dialect's preparer.
    return "LISTEN " + dialect.identifier_preparer.quote_identifier(channel)


ASYNC_DRIVERS = ("asyncpg", "psycopg")


class ListenerLost(ConnectionError):
    """The LISTEN connection was closed."""


class AsyncListener(_Listening):
    """Listens on ``channel`` and calls ``on_notify(payload)`` (on the loop) for each notification."""

    drivers = ASYNC_DRIVERS

    def __init__(
        self,
        engine: AsyncEngine,
        channel: str,
        on_notify: Callable[[str], None],
        *,
        log: logging.Logger | logging.LoggerAdapter[Any] = logger,
    ) -> None:
        super().__init__(engine, channel, on_notify, log=log)
        self.engine = engine
        self.connected = asyncio.Event()
        self.backend_pid: int | None = None
        """The server process of the current LISTEN connection (tests terminate it)."""
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if not listens(self):
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
                    first_line(exc),
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
