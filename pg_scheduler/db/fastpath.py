"""Hot statements sent straight to the driver's cursor, for the node's autocommit streams.

On the enqueue, claim and grouped-completion paths, SQLAlchemy's per-execution work (finding
the compiled form, building the parameters, the execution context, the result object) costs a
large share of what the whole statement costs: one ``enqueue`` spent about 50 us there against
about 230 us for the round trip, the server and the commit together. So these statements, built
once per installation as Core constructs, are compiled once per dialect by SQLAlchemy, and each
execution sends that SQL text with its values on the DBAPI cursor of the same pooled connection.

Only where that changes nothing the application can see:

* the driver takes named parameters as SQLAlchemy renders them (``pyformat``: psycopg 3, also
  through ``AsyncScheduler``'s ``run_sync``, and psycopg2), no parameter is rendered at
  execution time (no expanding ``IN``), and no column type converts values on the way out (a
  parameter type's conversion on the way in is applied, as SQLAlchemy applies it);
* the connection is one of the scheduler's own autocommit connections, so there is no
  SQLAlchemy transaction to keep in step with;
* the engine's SQL is not logged (no ``echo``, ``sqlalchemy.engine`` below INFO) and has no
  cursor-execute listeners: an application that logs or traces its SQL sees these statements
  through the usual path (``has_listeners``).

Errors reach the caller as SQLAlchemy raises them (``DBAPIError.instance``: an
``IntegrityError`` is still an ``IntegrityError``), and a connection the dialect finds
disconnected is invalidated, as SQLAlchemy does.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session


@dataclass(frozen=True)
class DirectStatement:
    """A statement compiled for one dialect: its SQL text, the values of the parameters it
    carries itself (constants bound at build time, already converted), and the conversions its
    types apply to the values each execution brings."""

    sql: str
    defaults: Mapping[str, Any]
    processors: Mapping[str, Callable[[Any], Any]]

    def parameters(self, values: Mapping[str, Any]) -> dict[str, Any]:
        params = {**self.defaults, **values}
        for name, process in self.processors.items():
            value = values.get(name)
            if value is not None:
                params[name] = process(value)
        return params


def direct_form(statement: sa.Executable, dialect: sa.Dialect) -> DirectStatement | None:
    """``statement`` compiled for ``dialect``, or None when it cannot be sent as plain text with
    a dict of values (see the module's docstring). Parameter types that convert values keep
    doing so, as SQLAlchemy would (``DirectStatement.parameters``)."""
    if dialect.paramstyle != "pyformat":
        return None
    compiled: Any = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
    if (
        compiled.positional
        or compiled.post_compile_params
        or compiled.literal_execute_params
        or compiled.escaped_bind_names
    ):
        return None
    for column in getattr(statement, "selected_columns", ()):
        if column.type.dialect_impl(dialect).result_processor(dialect, None) is not None:
            return None
    processors: dict[str, Callable[[Any], Any]] = {}
    for bind, name in compiled.bind_names.items():
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            processors[name] = process
    defaults = {
        name: value if value is None or name not in processors else processors[name](value)
        for name, value in compiled.params.items()
    }
    return DirectStatement(compiled.string, defaults, processors)


def has_listeners(conn: sa.Connection) -> bool:
    """Whether the application watches this engine's SQL: its statements are logged (``echo``,
    or the ``sqlalchemy.engine`` logger at INFO), or it has cursor-execute listeners."""
    engine = conn.engine
    dispatch = engine.dispatch
    return bool(
        engine.logger.isEnabledFor(logging.INFO)
        or dispatch.before_cursor_execute
        or dispatch.after_cursor_execute
    )


def execute(
    conn: sa.Connection,
    statement: DirectStatement,
    values: Mapping[str, Any],
    *,
    rows: bool = True,
    settings: str | None = None,
) -> Sequence[Sequence[Any]]:
    """Run ``statement`` with ``values`` on ``conn``'s DBAPI cursor; returns its rows (none for a
    statement that returns no rows, or with ``rows=False``: a caller that does not read them
    saves building them).

    ``settings``: a statement that sets transaction-local settings (``set_config(..., true)``),
    run first in the same transaction, so they hold for ``statement`` alone (see
    ``_execute_with_settings``)."""
    params = statement.parameters(values)
    fairy = conn.connection
    dbapi_connection: Any = fairy.dbapi_connection
    dialect = conn.dialect
    error_class = dialect.loaded_dbapi.Error
    cursor = _cursor(fairy.info, dbapi_connection)
    try:
        if settings is not None:
            return _execute_with_settings(
                fairy.info,
                dbapi_connection,
                cursor,
                statement.sql,
                params,
                settings=settings,
                rows=rows,
            )
        cursor.execute(statement.sql, params)
        return _rows(cursor, rows)
    except error_class as exc:
        disconnected = dialect.is_disconnect(exc, dbapi_connection, cursor)
        if disconnected:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            statement.sql,
            params,
            exc,
            error_class,
            hide_parameters=conn.engine.hide_parameters,
            connection_invalidated=disconnected,
            dialect=dialect,
        ) from exc


def _rows(cursor: Any, rows: bool) -> Sequence[Sequence[Any]]:
    if not rows or cursor.description is None:
        return ()
    fetched: Sequence[Sequence[Any]] = cursor.fetchall()
    return fetched


def _execute_with_settings(
    info: dict[Any, Any],
    dbapi_connection: Any,
    cursor: Any,
    sql: str,
    params: Mapping[str, Any],
    *,
    settings: str,
    rows: bool,
) -> Sequence[Sequence[Any]]:
    """``settings`` then ``sql`` in one transaction of the autocommit connection; ``sql``'s rows.

    * psycopg2 binds values on the client and sends one simple query: two statements in one
      query string are one implicit transaction, in one round trip.
    * psycopg 3 (sync): both statements in one pipeline, one Sync after them: the extended
      protocol runs what comes before a Sync as one transaction, in one round trip.
    * psycopg 3 async (``AsyncScheduler``, through SQLAlchemy's adapter): the same pipeline on
      the driver's own async connection, awaited from the adapter's greenlet.
    * any other: ``BEGIN`` ... ``COMMIT`` around them.

    Each is one transaction, so it holds through a transaction-pooling PgBouncer too."""
    package = _package(dbapi_connection)
    if package == "psycopg2":
        cursor.execute(f"{settings}; {sql}", params)
        return _rows(cursor, rows)
    if package == "psycopg" and _pipeline_supported():
        side = _cursor(info, dbapi_connection, _SETTINGS_CURSOR_KEY)
        with dbapi_connection.pipeline():
            side.execute(settings)
            cursor.execute(sql, params)
        return _rows(cursor, rows)
    driver = getattr(dbapi_connection, "driver_connection", None)
    if _package(driver) == "psycopg" and _pipeline_supported():
        fetched: Sequence[Sequence[Any]] = _await(
            _async_pipeline(driver, sql, params, settings=settings, rows=rows)
        )
        return fetched
    cursor.execute("BEGIN")
    try:
        cursor.execute(settings)
        cursor.execute(sql, params)
        result = _rows(cursor, rows)
        cursor.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):
            cursor.execute("ROLLBACK")
        raise
    return result


@functools.cache
def _pipeline_supported() -> bool:
    """Whether psycopg's libpq has pipeline mode (libpq 14 and later; psycopg's binary wheels
    bring their own)."""
    import psycopg

    return bool(psycopg.Pipeline.is_supported())


def _package(connection: Any) -> str:
    """The top-level package of a driver's connection class (psycopg's public classes say
    ``psycopg``, psycopg2's ``psycopg2.extensions``)."""
    return type(connection).__module__.split(".", 1)[0]


async def _async_pipeline(
    connection: Any, sql: str, params: Mapping[str, Any], *, settings: str, rows: bool
) -> Sequence[Sequence[Any]]:
    """``_execute_with_settings``'s pipeline on a psycopg ``AsyncConnection``."""
    side = connection.cursor()
    cursor = connection.cursor()
    async with connection.pipeline():
        await side.execute(settings)
        await cursor.execute(sql, params)
    if not rows or cursor.description is None:
        return ()
    fetched: Sequence[Sequence[Any]] = await cursor.fetchall()
    return fetched


def _await(awaitable: Any) -> Any:
    """Run ``awaitable`` from the greenlet of SQLAlchemy's async adapter (``await_`` since
    SQLAlchemy 2.1, ``await_only`` before)."""
    from sqlalchemy.util import concurrency

    run = getattr(concurrency, "await_", None) or concurrency.await_only
    return run(awaitable)


#: Where a pooled connection keeps its cursor for these statements (see ``_cursor``).
_CURSOR_KEY = "pg_scheduler.direct_cursor"
#: ... and the cursor that sets transaction-local settings in the same pipeline (psycopg 3).
_SETTINGS_CURSOR_KEY = "pg_scheduler.direct_settings_cursor"


def _cursor(info: dict[Any, Any], dbapi_connection: Any, key: str = _CURSOR_KEY) -> Any:
    """The cursor these statements use on ``dbapi_connection``, opened once and kept in the
    pool's ``info`` for that DBAPI connection (SQLAlchemy empties it when the connection is
    closed or invalidated, so a new connection gets a new cursor): opening and closing a cursor
    per statement cost about as much as the statement's parameters and result together. A
    connection is used by one thread at a time, and a cursor stays usable after a failed
    statement."""
    cursor = info.get(key)
    if cursor is None:
        cursor = info[key] = dbapi_connection.cursor()
    return cursor


# ---------------------------------------------------------------- prebuilt statements
_S = TypeVar("_S")
# Statements built once per (purpose, installation); see ``prebuilt``.
_PREBUILT: dict[tuple[str, Hashable], Any] = {}
# Per dialect (one per engine), the prebuilt statements' direct forms (None: not eligible).
_DIRECT_FORMS: weakref.WeakKeyDictionary[
    sa.Dialect, dict[tuple[str, Hashable], DirectStatement | None]
] = weakref.WeakKeyDictionary()


def prebuilt(name: str, installation: Hashable, build: Callable[[], _S]) -> _S:
    """A hot-path statement, built once per installation. Building a Core construct and its
    cache key costs more than a small statement's round trip (about 1 ms for the enqueue
    INSERT); a kept construct memoizes its cache key, so SQLAlchemy finds the compiled form
    at once. The statements take every value as a bound parameter."""
    key = (name, installation)
    statement = _PREBUILT.get(key)
    if statement is None:
        statement = _PREBUILT.setdefault(key, build())
    return statement  # type: ignore[no-any-return]


def cached_direct_form(
    name: str, installation: Hashable, statement: sa.Executable, dialect: sa.Dialect
) -> DirectStatement | None:
    """``direct_form`` of the prebuilt statement ``name``, compiled once per dialect."""
    forms = _DIRECT_FORMS.get(dialect)
    if forms is None:
        forms = _DIRECT_FORMS.setdefault(dialect, {})
    key = (name, installation)
    if key not in forms:
        forms[key] = direct_form(statement, dialect)
    return forms[key]


def _direct(
    conn: sa.Connection, name: str, installation: Hashable, statement: sa.Executable
) -> DirectStatement | None:
    if has_listeners(conn):
        return None
    return cached_direct_form(name, installation, statement, conn.dialect)


def run_prebuilt(
    bind: Session | sa.Connection,
    name: str,
    installation: Hashable,
    build: Callable[[], sa.Executable],
    values: dict[str, Any],
    *,
    direct: bool,
    rows: bool = True,
) -> Sequence[Sequence[Any]]:
    """Run the prebuilt statement ``name`` with ``values`` on ``bind`` (a ``Session`` or a
    ``Connection``); its rows (none with ``rows=False``, for a caller that does not read them).
    ``direct``: ``bind`` is one of the scheduler's own autocommit connections, and the statement
    goes straight to the driver's cursor when that changes nothing visible (module docstring)."""
    statement = prebuilt(name, installation, build)
    if direct:
        assert isinstance(bind, sa.Connection)
        form = _direct(bind, name, installation, statement)
        if form is not None:
            return execute(bind, form, values, rows=rows)
    result = bind.execute(statement, values)
    if rows:
        return result.all()
    result.close()
    return ()


def run_prebuilt_planned(
    bind: Session | sa.Connection,
    name: str,
    installation: Hashable,
    build: Callable[[], sa.Executable],
    values: dict[str, Any],
    *,
    direct: bool,
    settings: sa.TextClause,
) -> Sequence[Sequence[Any]]:
    """``run_prebuilt`` under the transaction-local ``settings``: in the caller's transaction,
    the settings first (they last until it ends); on an autocommit connection (``direct``), the
    settings and the statement as one transaction (one round trip on psycopg 3 and psycopg2,
    see ``execute``; else an explicit BEGIN ... COMMIT)."""
    statement = prebuilt(name, installation, build)
    if not direct:
        bind.execute(settings)
        return bind.execute(statement, values).all()
    conn = bind
    assert isinstance(conn, sa.Connection)
    form = _direct(conn, name, installation, statement)
    if form is not None:
        return execute(conn, form, values, settings=settings.text)
    conn.exec_driver_sql("BEGIN")
    try:
        conn.execute(settings)
        found = conn.execute(statement, values).all()
        conn.exec_driver_sql("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):
            conn.exec_driver_sql("ROLLBACK")
        raise
    return found
