"""Connections the node keeps checked out, in autocommit, for its own hot statements.

Checking a connection out of the pool, switching it to autocommit and back, and checking it in
cost about 0.35 ms, more than the claim or the grouped completion it would carry. So each of the
node's statement streams (claims, outcome writes, enqueues without a session) keeps one
connection of its own, already in autocommit. Streams do not share one: a claim pass and a group
write run at the same time on a busy node, and the loser used to fall back to the slow path.

A kept connection is checked before each use without a round trip (an idle connection has nothing
to read, so a readable socket means the server closed it), dropped after any error, and reopened
on the next use. That is only possible where the driver exposes its socket (psycopg, psycopg2);
other drivers take a pooled connection each time. A kept connection is one of the application's
pooled connections held for good, so none is kept from a pool of fewer than
``MIN_POOL_SIZE_TO_KEEP`` connections: there every statement checks one out and back in.
"""

from __future__ import annotations

import contextlib
import select
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

T = TypeVar("T")

#: Drivers whose connection's socket can be checked for "closed by the server" without a query.
_SOCKET_DRIVERS = ("psycopg", "psycopg2")

#: Smallest ``pool_size`` from which connections are kept (a node may keep three).
MIN_POOL_SIZE_TO_KEEP = 5


class KeptConnection:
    """One connection kept for one stream of autocommit statements; used by one thread at a time."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.enabled = engine.dialect.driver in _SOCKET_DRIVERS and pool_can_spare(engine.pool)
        self._lock = threading.Lock()
        self._conn: sa.Connection | None = None
        #: Whatever the stream's user built for the current connection (the scheduler keeps its
        #: repository on it here); forgotten whenever the connection is dropped or closed.
        self.attached: Any = None

    def acquire(self) -> sa.Connection | None:
        """The kept connection, sound and in autocommit, held by the caller until ``release``;
        ``None`` when another thread is using it (or the driver cannot keep one): take a pooled
        connection instead (and release nothing)."""
        if not self.enabled or not self._lock.acquire(blocking=False):
            return None
        try:
            conn = self._conn
            if conn is not None and not idle_and_sound(conn):
                self._drop()
                conn = None
            if conn is None:
                conn = connect(self.engine)
                switch_to_autocommit(conn)
                self._conn = conn
        except BaseException:
            self._lock.release()
            raise
        return conn

    def release(self, *, failed: bool) -> None:
        """Give back what ``acquire`` returned; ``failed``: something went wrong while it was
        held, so the connection is dropped."""
        try:
            if failed:
                self._drop()
        finally:
            self._lock.release()

    def close(self) -> None:
        """Give the connection back to the pool (it is reopened on the next use)."""
        with self._lock:
            conn, self._conn = self._conn, None
            self.attached = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self.attached = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()
                conn.close()


def pool_can_spare(pool: sa.pool.Pool) -> bool:
    """Whether holding a connection of ``pool`` for good leaves the application enough: a
    ``NullPool`` opens a connection per checkout anyway; a ``QueuePool`` needs ``pool_size`` of at
    least ``MIN_POOL_SIZE_TO_KEEP``; any other pool keeps nothing."""
    if isinstance(pool, sa.pool.NullPool):
        return True
    if isinstance(pool, sa.pool.QueuePool):
        return pool.size() >= MIN_POOL_SIZE_TO_KEEP
    return False


def idle_and_sound(conn: sa.Connection) -> bool:
    """Whether an idle connection is still usable, without a round trip: an idle connection has
    nothing to read, so input waiting on its socket means the server closed it (a terminated
    backend, a restart). What the pool's pre-ping does, minus the query."""
    if conn.closed or conn.invalidated:
        return False
    try:
        dbapi_connection: Any = conn.connection.dbapi_connection
        readable, _, _ = select.select([dbapi_connection.fileno()], [], [], 0)
    except (AttributeError, OSError, ValueError):
        return False
    return not readable


def past_dead_connections(checkout: Callable[[], T], pool: sa.pool.Pool) -> T:
    """``checkout()`` (anything that takes a connection from ``pool``), tried again while the
    pool's pre-ping lets a dead connection's error out instead of replacing the connection.

    With ``pool_pre_ping`` the pool tests a connection before handing it out and, when the test
    fails with what the dialect knows as a disconnect, replaces it. Two drivers let other errors
    out of that test, which the pool passes on after discarding that one connection: pg8000
    (1.31) the socket's own ``ConnectionResetError``, unwrapped; psycopg, when the server closes
    the socket during the test's ``SELECT 1``, a ``ProgrammingError`` ("can't change 'autocommit'
    now") from SQLAlchemy's ping putting the connection's autocommit back. After a restart or
    terminated backends every idle pooled connection is just as dead. So such an error is tried
    again, once per connection idle in the pool when it happened (the one just discarded, which
    reconnects without a test, is among them) and, for ``OSError``, once more. A failure to
    connect (``OperationalError``, or pg8000's ``InterfaceError``) is never tried again here."""
    retries: int | None = None
    while True:
        try:
            return checkout()
        except (OSError, sa.exc.DBAPIError) as exc:
            if isinstance(exc, sa.exc.DBAPIError) and (
                isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError))
                or exc.connection_invalidated
            ):
                raise
            if retries is None:
                idle: Any = getattr(pool, "checkedin", None)
                retries = (idle() if callable(idle) else 0) + isinstance(exc, OSError)
            if retries <= 0:
                raise
            retries -= 1


def connect(engine: sa.Engine) -> sa.Connection:
    """``engine.connect()``, past pooled connections the server has closed (see
    ``past_dead_connections``)."""
    return past_dead_connections(engine.connect, engine.pool)


def lost_connection(exc: sa.exc.DBAPIError) -> bool:
    """An ``InterfaceError`` that means the server cannot be reached or went away: SQLAlchemy's
    dialect recognised a disconnect, or the driver's error wraps a socket error (pg8000 reports a
    refused or timed-out connection, and a reset one, as ``InterfaceError`` raised from the
    ``OSError``). Other interface errors (bad connection arguments, a closed cursor) are bugs or
    configuration, and pass through."""
    if not isinstance(exc, sa.exc.InterfaceError):
        return False
    cause = exc.orig.__cause__ if exc.orig is not None else None
    return exc.connection_invalidated or isinstance(cause, OSError)


def switch_to_autocommit(conn: sa.Connection) -> None:
    """Put a checked-out connection in autocommit, with no transaction left open on it.

    pool_pre_ping's ``SELECT 1`` leaves pg8000 inside an implicit transaction, and switching the
    isolation level does not end it: every "autocommit" statement would then run inside it and
    vanish when the connection is checked in (a completed job's row stayed running)."""
    conn.execution_options(isolation_level="AUTOCOMMIT")
    dbapi_connection: Any = conn.connection.dbapi_connection
    if getattr(dbapi_connection, "_in_transaction", False):  # pg8000's transaction status
        dbapi_connection.rollback()
