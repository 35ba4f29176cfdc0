"""Timeouts on the scheduler's own database work, so that no network fault can hang a node.

Two layers, both from ``SchedulerConfig.statement_timeout``:

* **Server side**: every transaction the scheduler opens starts with
  ``set_config('statement_timeout', …, true)``. The setting is transaction-local, so it never
  leaks into the application's pooled connections. It ends slow statements and lock waits.
  The same statement sets ``idle_in_transaction_session_timeout`` (to ``no_heartbeat_timeout``)
  for the transaction: a node paused or hung between two statements of a transaction (a heartbeat
  holds its jobs' rows locked until its COMMIT) would otherwise keep those locks for as long as it
  stays paused, and no other node could take its jobs back. The server ends such a session instead.
* **Client side**: a server-side timeout cannot fire when the server never receives the statement
  (a black-holed network, a hung pooler or proxy): the driver then waits for a reply forever. The
  ``Deadlines`` watchdog shuts down the socket of a connection whose guarded block has outlived
  its deadline; the driver sees the connection drop, raises, and SQLAlchemy discards the connection.

What this does not cover: opening a connection (use the driver's ``connect_timeout``), and
SQLAlchemy's ``pool_pre_ping``, which runs before the scheduler holds the connection (in a real
network partition, libpq's ``keepalives*`` and ``tcp_user_timeout`` options end it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from pg_scheduler.config import SchedulerConfig

logger = logging.getLogger(__name__)

#: How late the client-side cut-off comes after the server-side timeout: the server's own error
#: is the better one when the server is reachable, so it gets the first chance.
CLIENT_GRACE_SECONDS = 1.0
_CHECK_SECONDS = 0.1


def set_local_timeouts(conn: sa.Connection | Any, config: SchedulerConfig) -> None:
    """Bound every statement of the current transaction (``statement_timeout``), and how long the
    transaction may sit idle between two statements (``no_heartbeat_timeout``), in one round trip
    (transaction-local: no leak)."""
    settings = [
        sa.func.set_config(name, f"{max(1, int(timeout.total_seconds() * 1000))}ms", True)
        for name, timeout in (
            ("statement_timeout", config.statement_timeout),
            ("idle_in_transaction_session_timeout", config.no_heartbeat_timeout),
        )
        if timeout is not None
    ]
    conn.execute(sa.select(*settings))


class _Watch:
    """One guarded block: its deadline and the connection to cut off after it."""

    __slots__ = ("dbapi_connection", "deadline", "fired", "what")

    def __init__(self, deadline: float, dbapi_connection: Any, what: str) -> None:
        self.deadline = deadline
        self.dbapi_connection = dbapi_connection
        self.what = what
        self.fired = False


class Deadlines:
    """A watchdog thread that cuts off connections whose guarded block overran its deadline."""

    def __init__(self, timeout: dt.timedelta | None, *, name: str = "pg_scheduler") -> None:
        self.seconds = None if timeout is None else timeout.total_seconds() + CLIENT_GRACE_SECONDS
        self.name = name
        self._watches: set[_Watch] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.cut_off = 0

    @contextlib.contextmanager
    def guard(self, dbapi_connection: Any, what: str) -> Iterator[None]:
        """Cut ``dbapi_connection`` off if the block is still running after the deadline."""
        watch = self.watch(dbapi_connection, what)
        try:
            yield
        finally:
            self.unwatch(watch)

    def watch(self, dbapi_connection: Any, what: str) -> _Watch | None:
        """Start guarding ``dbapi_connection`` (``guard`` as two calls, for a caller on the hot
        path that is itself a context manager); end with ``unwatch``."""
        if self.seconds is None or dbapi_connection is None:
            return None
        watch = _Watch(time.monotonic() + self.seconds, dbapi_connection, what)
        with self._lock:
            self._watches.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name=f"{self.name}-deadlines", daemon=True
                )
                self._thread.start()
        return watch

    def unwatch(self, watch: _Watch | None) -> None:
        """Stop guarding. Under the lock: once the block has left, its connection is never cut
        (it may be back in the application's pool by then)."""
        if watch is not None:
            with self._lock:
                self._watches.discard(watch)

    def _loop(self) -> None:
        while True:
            self._wake.wait(_CHECK_SECONDS)
            now = time.monotonic()
            with self._lock:
                for watch in self._watches:
                    if not watch.fired and now >= watch.deadline:
                        watch.fired = True
                        self.cut_off += 1
                        cut_off(watch.dbapi_connection)
                        logger.warning(
                            "%s took longer than %.1fs; its database connection was cut off",
                            watch.what,
                            self.seconds,
                            extra={"event": "db.timeout", "what": watch.what},
                        )


def cut_off(dbapi_connection: Any) -> bool:
    """Shut the connection's socket down in both directions: a driver blocked on it returns with
    an error at once. Returns False when the driver does not expose its socket."""
    fileno = _fileno(dbapi_connection)
    if fileno is None:
        return False
    try:
        dup = os.dup(fileno)
    except OSError:
        return False
    try:
        with socket.socket(fileno=dup) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        return False
    return True


def _fileno(dbapi_connection: Any) -> int | None:
    # psycopg (3) and psycopg2 expose fileno(); pg8000 keeps its socket in _usock.
    fileno = getattr(dbapi_connection, "fileno", None)
    if callable(fileno):
        try:
            return int(fileno())
        except Exception:
            return None
    sock = getattr(dbapi_connection, "_usock", None)
    if isinstance(sock, socket.socket):
        return sock.fileno()
    return None
