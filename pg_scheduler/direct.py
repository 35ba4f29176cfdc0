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

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa


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
) -> Sequence[Sequence[Any]]:
    """Run ``statement`` with ``values`` on ``conn``'s DBAPI cursor; returns its rows (none for a
    statement that returns no rows, or with ``rows=False``: a caller that does not read them
    saves building them)."""
    params = statement.parameters(values)
    fairy = conn.connection
    dbapi_connection: Any = fairy.dbapi_connection
    dialect = conn.dialect
    error_class = dialect.loaded_dbapi.Error
    cursor = _cursor(fairy.info, dbapi_connection)
    try:
        cursor.execute(statement.sql, params)
        if not rows or cursor.description is None:
            return ()
        fetched: Sequence[Sequence[Any]] = cursor.fetchall()
        return fetched
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


#: Where a pooled connection keeps its cursor for these statements (see ``_cursor``).
_CURSOR_KEY = "pg_scheduler.direct_cursor"


def _cursor(info: dict[Any, Any], dbapi_connection: Any) -> Any:
    """The cursor these statements use on ``dbapi_connection``, opened once and kept in the
    pool's ``info`` for that DBAPI connection (SQLAlchemy empties it when the connection is
    closed or invalidated, so a new connection gets a new cursor): opening and closing a cursor
    per statement cost about as much as the statement's parameters and result together. A
    connection is used by one thread at a time, and a cursor stays usable after a failed
    statement."""
    cursor = info.get(_CURSOR_KEY)
    if cursor is None:
        cursor = info[_CURSOR_KEY] = dbapi_connection.cursor()
    return cursor
