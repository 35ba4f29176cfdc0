"""The thread runtime's database access: short transactions of the application's session factory,
single autocommit statements on kept connections, and the heartbeat's own connection.

Every block is bounded twice (see ``timeouts``): ``statement_timeout`` on the server for a
transaction, and a client-side deadline that cuts off a connection whose server never answers.
Driver errors come out translated (``outages.translate_error``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from pg_scheduler.config import SchedulerConfig
from pg_scheduler.db.connections import (
    KeptConnection,
    connect,
    past_dead_connections,
    switch_to_autocommit,
)
from pg_scheduler.db.outages import translate_error, unavailable
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.db.timeouts import Deadlines, set_local_timeouts
from pg_scheduler.errors import PgSchedulerError, SchemaNotInstalledError

MakeRepository = Callable[..., JobRepository]


def application_name(node_id: str, role: str) -> str:
    """How a node's dedicated connection shows in pg_stat_activity."""
    return f"pg_scheduler:{node_id}:{role}"[:63]


class SyncDatabase:
    """A node's synchronous database access (see the module docstring)."""

    def __init__(
        self,
        engine: sa.Engine,
        session_factory: Callable[[], Session],
        config: SchedulerConfig,
        *,
        repository: MakeRepository,
        not_installed: Callable[[], PgSchedulerError],
        node_id: str,
    ) -> None:
        self.engine = engine
        self.node_id = node_id  # names the heartbeat's connection
        self.session_factory = session_factory
        self.config = config
        self.repository = repository
        self.not_installed = not_installed
        self.on_schema_missing: Callable[[], None] = lambda: None
        self.deadlines = Deadlines(config.statement_timeout)
        # One kept autocommit connection per stream of the node's own statements.
        self.claim_connection = KeptConnection(engine)
        self.outcome_connection = KeptConnection(engine)
        self.enqueue_connection = KeptConnection(engine)
        self._heartbeat_conn: sa.Connection | None = None

    def error(self, exc: sa.exc.DBAPIError) -> PgSchedulerError | None:
        """What ``exc`` means for the caller, noting a missing schema."""
        error = translate_error(exc, self.engine.url, self.not_installed)
        if isinstance(error, SchemaNotInstalledError):
            self.on_schema_missing()
        return error

    @contextlib.contextmanager
    def transaction(self) -> Iterator[JobRepository]:
        """A repository in a new transaction of the session factory, committed on success."""
        try:
            with self.session_factory() as session, session.begin():
                # Take the connection now, so the whole transaction runs under the deadline.
                conn = past_dead_connections(session.connection, self.engine.pool)
                try:
                    with self.deadlines.guard(conn.connection.dbapi_connection, "a transaction"):
                        set_local_timeouts(conn, self.config)
                        yield self.repository(session)
                except OSError:
                    conn.invalidate()  # see ``Autocommit.__exit__``
                    raise
        except sa.exc.DBAPIError as exc:
            error = self.error(exc)
            if error is None:
                raise
            raise error from exc
        except OSError as exc:
            raise unavailable(exc, self.engine.url) from exc

    def autocommit(self, kept: KeptConnection | None = None) -> Autocommit:
        """A repository on a connection in autocommit: each statement is its own transaction,
        with no BEGIN and COMMIT round trips. Only for callers that run one atomic statement (an
        enqueue, a claim, a group of completions) or only read.

        With ``kept``, that stream's kept connection (see ``connections``) when it is free, else
        a pooled connection."""
        return Autocommit(self, kept)

    @contextlib.contextmanager
    def heartbeat(self) -> Iterator[JobRepository]:
        """A transaction on the heartbeat's own connection (opened on first use, reopened after
        a failure). One caller at a time (the runtime holds a lock)."""
        try:
            conn = self._heartbeat_connection()
            with (
                self.deadlines.guard(conn.connection.dbapi_connection, "a heartbeat"),
                Session(bind=conn) as session,
                session.begin(),
            ):
                set_local_timeouts(session, self.config)
                yield self.repository(session)
        except BaseException as exc:
            self._discard_heartbeat()
            if isinstance(exc, sa.exc.DBAPIError):
                error = self.error(exc)
                if error is not None:
                    raise error from exc
            raise

    def _heartbeat_connection(self) -> sa.Connection:
        conn = self._heartbeat_conn
        if conn is None or conn.closed or conn.invalidated:
            conn = self._heartbeat_conn = connect(self.engine)
            name = application_name(self.node_id, "heartbeat")
            conn.execute(sa.select(sa.func.set_config("application_name", name, False)))
            conn.commit()
        return conn

    def _discard_heartbeat(self) -> None:
        conn, self._heartbeat_conn = self._heartbeat_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()
                conn.close()

    def close(self) -> None:
        """Give the kept connections back to the pool (each is reopened on its next use)."""
        for kept in (self.claim_connection, self.outcome_connection, self.enqueue_connection):
            kept.close()
        conn, self._heartbeat_conn = self._heartbeat_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


class Autocommit:
    """``SyncDatabase.autocommit``'s context. It wraps every enqueue, claim pass and group of
    outcomes, so it is written out as one class: as nested generator contexts (the kept
    connection, the deadline, an exit stack) it cost more CPU than the statement's own trip
    through psycopg. On the kept connection the repository is built once per connection."""

    __slots__ = ("conn", "database", "kept", "watch")

    def __init__(self, database: SyncDatabase, kept: KeptConnection | None) -> None:
        self.database = database
        self.kept = kept
        self.conn: sa.Connection | None = None
        self.watch: Any = None

    def __enter__(self) -> JobRepository:
        d = self.database
        kept = self.kept
        try:
            conn = kept.acquire() if kept is not None else None
            if conn is None:
                self.kept = kept = None
                conn = connect(d.engine)
                try:
                    switch_to_autocommit(conn)
                except BaseException:
                    conn.close()
                    raise
        except sa.exc.DBAPIError as exc:
            error = d.error(exc)
            if error is None:
                raise
            raise error from exc
        self.conn = conn
        try:
            # The client-side deadline only: a transaction-local statement_timeout would end
            # with the first statement.
            dbapi_connection = conn.connection.dbapi_connection
            self.watch = d.deadlines.watch(dbapi_connection, "an autocommit statement")
            if kept is None:
                return d.repository(conn, direct=True)
            repo: JobRepository | None = kept.attached
            if repo is None or repo.session is not conn:
                repo = kept.attached = d.repository(conn, direct=True)
            return repo
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        d = self.database
        d.deadlines.unwatch(self.watch)
        if self.kept is not None:
            self.kept.release(failed=exc is not None)
        elif self.conn is not None:
            if isinstance(exc, OSError):
                # pg8000 lets a reset socket's error out of a statement's first read unwrapped:
                # SQLAlchemy does not know the connection is gone and would pool it again.
                self.conn.invalidate()
            self.conn.close()
        if isinstance(exc, sa.exc.DBAPIError):
            error = d.error(exc)
            if error is not None:
                raise error from exc
        elif isinstance(exc, OSError):
            raise unavailable(exc, d.engine.url) from exc
