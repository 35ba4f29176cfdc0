"""Install and upgrade pg_scheduler's tables with Alembic, from code.

Pattern A (the default): pg_scheduler keeps its own Alembic version table,
``{prefix}alembic_version`` (``alembic_version_pg_scheduler`` for the empty prefix), so it never
touches the host application's migration history::

    import pg_scheduler
    pg_scheduler.migrations.upgrade(engine, table_prefix="app_")

The ``Config`` is built in code (no ini file, so the host's logging is left alone). Pattern B, our
revisions as an independent ``pg_scheduler`` branch in the host's own ``version_locations``, uses the
same revision files; see the README.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import alembic.context
import alembic.op
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from .db.connections import connect, lost_connection
from .errors import (
    MigrationError,
    SchemaNotInstalledError,
    SchemaVersionMismatchError,
)
from .naming import Names

#: Serialises concurrent migrations of one installation (transaction-scoped: safe behind PgBouncer).
ADVISORY_LOCK_SQL = sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))")

_PRIVILEGE_SQLSTATES = {"42501"}  # insufficient_privilege

Bind = sa.Engine | sa.Connection


def script_location() -> str:
    """Where the Alembic environment and the revisions are: ``pg_scheduler/_alembic`` in the wheel,
    and in a checkout the same name, a symlink to the top-level ``alembic/`` (so that
    ``pg_scheduler:_alembic/versions`` names them in an editable install too)."""
    packaged = Path(__file__).parent / "_alembic"
    if packaged.is_dir():
        return str(packaged)
    # A checkout whose symlinks were not kept (core.symlinks off): the top-level folder itself.
    return str(Path(__file__).resolve().parent.parent / "alembic")


def make_config(names: Names, connection: Bind | None = None) -> Config:
    """An Alembic ``Config`` for one installation, built without any ini file."""
    cfg = Config(output_buffer=io.StringIO())
    cfg.set_main_option("script_location", script_location())
    cfg.attributes["pg_scheduler_names"] = names
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _x_args(cfg: Config) -> dict[str, str]:
    raw = getattr(cfg.cmd_opts, "x", None) or []
    return dict(item.partition("=")[::2] for item in raw)


def names_from_alembic(cfg: Config, *, own_environment: bool = False) -> Names:
    """The installation an Alembic run is migrating, under our env.py or a host's.

    Order: ``Config.attributes["pg_scheduler_names"]``; ``-x pg_scheduler.table_prefix=`` /
    ``-x pg_scheduler.schema=`` (and, under our own env.py only, the short ``-x table_prefix=`` /
    ``-x schema=``); the ini options ``pg_scheduler.table_prefix`` / ``pg_scheduler.schema``; then
    the environment variables ``PG_SCHEDULER_TABLE_PREFIX`` / ``PG_SCHEDULER_SCHEMA``.

    Under a host's env.py (our revisions as a branch of its history) the short ``-x`` keys are the
    host's own options: a host's ``-x schema=tenant`` must not move our tables.
    """
    names = cfg.attributes.get("pg_scheduler_names")
    if isinstance(names, Names):
        return names
    x = _x_args(cfg)

    def pick(key: str, env: str) -> str | None:
        candidates = [x.get(f"pg_scheduler.{key}")]
        if own_environment:
            candidates.append(x.get(key))
        candidates += [cfg.get_main_option(f"pg_scheduler.{key}"), os.environ.get(env)]
        for value in candidates:
            if value is not None:
                return value
        return None

    names = Names(
        prefix=pick("table_prefix", "PG_SCHEDULER_TABLE_PREFIX") or "",
        schema=pick("schema", "PG_SCHEDULER_SCHEMA") or None,
    )
    cfg.attributes["pg_scheduler_names"] = names
    return names


def url_from_alembic(cfg: Config) -> str | None:
    """The database URL for command-line Alembic runs (``-x url=`` or ``sqlalchemy.url``)."""
    return _x_args(cfg).get("url") or cfg.get_main_option("sqlalchemy.url") or None


def include_object_filter(*installations: Names) -> Callable[[Any, str, Any], bool]:
    """An ``include_name`` hook that keeps autogenerate to ``installations``' tables only.

    Our own env.py uses it so autogenerate never looks at the host's tables; a host's env.py uses
    ``exclude_from_autogenerate`` (the negation) so its autogenerate never proposes dropping ours.
    """

    def include_name(name: Any, type_: str, parent_names: Any) -> bool:
        if type_ == "schema":
            return any(name == n.schema for n in installations)
        if type_ == "table":
            return any(_owned(n, name, parent_names) for n in installations)
        return True

    return include_name


def exclude_from_autogenerate(*installations: Names) -> Callable[[Any, str, Any], bool]:
    """For a host's env.py: ``context.configure(..., include_name=exclude_from_autogenerate(...))``.

    Without it, the host's ``alembic revision --autogenerate`` sees our tables in the database but
    not in its metadata, and proposes dropping them.
    """
    targets = installations or (Names(),)

    def include_name(name: Any, type_: str, parent_names: Any) -> bool:
        if type_ == "table":
            return not any(_owned(n, name, parent_names) for n in targets)
        return True

    return include_name


def _owned(names: Names, table: Any, parent_names: Any) -> bool:
    schema = (parent_names or {}).get("schema_name")
    if schema != names.schema:
        return False
    return table in {names.jobs_table, names.runs_table, names.nodes_table, names.version_table}


@contextlib.contextmanager
def _connection(bind: Bind) -> Iterator[sa.Connection]:
    if isinstance(bind, sa.Engine):
        # connect(), not begin(): env.py opens and commits the transaction that holds the lock.
        with connect(bind) as conn:
            yield conn
            if conn.in_transaction():
                conn.commit()
    else:
        yield bind


@contextlib.contextmanager
def _nested_alembic_run() -> Iterator[None]:
    """Let one of our Alembic runs happen inside another (a host's env.py calling ``upgrade``).

    Alembic publishes the running environment and operations as module-level proxies
    (``alembic.context``, ``alembic.op``) and deletes them when a run ends: without this, the
    host's env.py would find its ``context`` gone as soon as our upgrade returned.
    """
    saved = [getattr(module, "_proxy", None) for module in (alembic.context, alembic.op)]
    try:
        yield
    finally:
        for proxy in saved:
            if proxy is not None:
                proxy._install_proxy()


#: The host's own version table, where pattern B records our revisions beside its own.
HOST_VERSION_TABLE = "alembic_version"


@functools.cache
def _our_revisions() -> frozenset[str]:
    scripts = ScriptDirectory.from_config(make_config(Names()))
    return frozenset(rev.revision for rev in scripts.walk_revisions())


def _heads(conn: sa.Connection, version_table: str, schema: str | None) -> tuple[str, ...]:
    ctx = MigrationContext.configure(
        conn, opts={"version_table": version_table, "version_table_schema": schema}
    )
    return tuple(ctx.get_current_heads())


def _installed(conn: sa.Connection, names: Names) -> tuple[str | None, bool]:
    """The installed revision, and whether it is recorded as a branch of the host's history.

    Pattern A records it in our own version table. Pattern B records it in the host's
    ``alembic_version`` (in our schema, or the connection's default one), which can hold only one
    installation: we take it as ours when our own version table is empty and our tables exist.
    """
    owned = not conn.in_transaction()
    try:
        heads = _heads(conn, names.version_table, names.schema)
        if heads:
            return heads[0], False
        inspector = sa.inspect(conn)
        if not inspector.has_table(names.jobs_table, schema=names.schema):
            return None, False
        for schema in dict.fromkeys((names.schema, None)):
            if inspector.has_table(HOST_VERSION_TABLE, schema=schema):
                ours = [
                    h for h in _heads(conn, HOST_VERSION_TABLE, schema) if h in _our_revisions()
                ]
                if ours:
                    return ours[0], True
        return None, False
    finally:
        if owned and conn.in_transaction():
            conn.rollback()  # only our own reads; never a caller's transaction


def _branch_install(names: Names, installed: str | None, action: str, revision: str) -> bool:
    """For a pattern B install: True when there is nothing to do, else raise with the command."""
    wanted = head() if revision in ("head", "heads") else revision
    if action == "upgrade" and installed == wanted:
        return True
    raise MigrationError(
        f"cannot {action} pg_scheduler tables {names.qualified(names.jobs_table)}: they are "
        "installed as the 'pg_scheduler' branch of the application's own Alembic history (its "
        f"{HOST_VERSION_TABLE} table), so the application's alembic moves them, e.g. "
        f"`alembic {action} pg_scheduler@{'head' if action == 'upgrade' else 'base'}`"
    )


def _names(table_prefix: str, schema: str | None, names: Names | None) -> Names:
    return names if names is not None else Names(prefix=table_prefix, schema=schema)


def _explain(exc: sa.exc.DBAPIError, action: str, names: Names) -> MigrationError:
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if code is None and exc.orig is not None and exc.orig.args:
        first = exc.orig.args[0]
        code = first.get("C") if isinstance(first, dict) else None  # pg8000
    if code in _PRIVILEGE_SQLSTATES:
        return MigrationError(
            f"cannot {action} pg_scheduler tables {names.qualified(names.jobs_table)}: the database "
            "role lacks the privilege (migrations must run as the role that owns the schema, "
            f"not a runtime role): {_first_line(exc)}"
        )
    if (
        isinstance(exc, sa.exc.OperationalError) and exc.connection_invalidated is False
    ) or lost_connection(exc):
        return MigrationError(f"cannot {action}: database unreachable: {_first_line(exc)}")
    return MigrationError(f"cannot {action} pg_scheduler schema: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


def upgrade(
    bind: Bind,
    table_prefix: str = "",
    schema: str | None = None,
    revision: str = "head",
    *,
    names: Names | None = None,
) -> None:
    """Upgrade (or install) the tables for ``table_prefix``/``schema`` to ``revision``.

    Safe to run from several processes at once (they queue on an advisory lock) and a no-op when the
    schema is already at ``revision``. ``bind`` is an ``Engine`` or a ``Connection``; with a connection
    already in a transaction, the caller commits.
    """
    n = _names(table_prefix, schema, names)
    try:
        with _connection(bind) as conn:
            installed, branch = _installed(conn, n)
            if branch and _branch_install(n, installed, "upgrade", revision):
                return
            with _nested_alembic_run():
                command.upgrade(make_config(n, conn), revision)
    except sa.exc.DBAPIError as exc:
        raise _explain(exc, "upgrade", n) from exc


def downgrade(
    bind: Bind,
    table_prefix: str = "",
    schema: str | None = None,
    revision: str = "base",
    *,
    names: Names | None = None,
) -> None:
    """Downgrade to ``revision``; the default, ``base``, drops every pg_scheduler table."""
    n = _names(table_prefix, schema, names)
    try:
        with _connection(bind) as conn:
            installed, branch = _installed(conn, n)
            if branch:
                _branch_install(n, installed, "downgrade", revision)
            with _nested_alembic_run():
                command.downgrade(make_config(n, conn), revision)
    except sa.exc.DBAPIError as exc:
        raise _explain(exc, "downgrade", n) from exc


def current(
    bind: Bind, table_prefix: str = "", schema: str | None = None, *, names: Names | None = None
) -> str | None:
    """The installed revision, or ``None`` when the tables are not installed."""
    n = _names(table_prefix, schema, names)
    with _connection(bind) as conn:
        installed, _ = _installed(conn, n)
    return installed


def installed_as_branch(bind: Bind, *, names: Names) -> bool:
    """Whether the tables of ``names`` were installed by pattern B: as the ``pg_scheduler`` branch
    of the application's own Alembic history, upgraded by its ``alembic upgrade heads``."""
    with _connection(bind) as conn:
        _, branch = _installed(conn, names)
    return branch


BRANCH_UPGRADE_HINT = (
    "run `alembic upgrade heads` in the application's Alembic project (pg_scheduler is installed "
    f"there, as the 'pg_scheduler' branch of its history, in its {HOST_VERSION_TABLE} table)"
)


def head() -> str:
    """The newest revision this version of pg_scheduler ships."""
    scripts = ScriptDirectory.from_config(make_config(Names()))
    rev = scripts.get_current_head()
    assert rev is not None
    return rev


def is_up_to_date(
    bind: Bind, table_prefix: str = "", schema: str | None = None, *, names: Names | None = None
) -> bool:
    """True when the installed revision is the one this library expects."""
    return current(bind, table_prefix, schema, names=names) == head()


def sql(
    table_prefix: str = "",
    schema: str | None = None,
    revision: str = "head",
    from_revision: str | None = None,
    *,
    names: Names | None = None,
) -> str:
    """The DDL an upgrade would run, as SQL text for a DBA to review (offline; no connection)."""
    n = _names(table_prefix, schema, names)
    cfg = make_config(n)
    target = f"{from_revision}:{revision}" if from_revision else revision
    with _nested_alembic_run():
        command.upgrade(cfg, target, sql=True)
    buffer = cfg.output_buffer
    assert isinstance(buffer, io.StringIO)
    return buffer.getvalue()


def how_to_install(names: Names) -> str:
    """The commands that install the tables of ``names``, for error messages."""
    flags = f" --table-prefix {names.prefix}" if names.prefix else ""
    if names.schema:
        flags += f" --schema {names.schema}"
    return (
        f"run `pg-scheduler db upgrade --url URL{flags}` or "
        f"pg_scheduler.migrations.upgrade(engine, table_prefix={names.prefix!r}"
        + (f", schema={names.schema!r}" if names.schema else "")
        + "), or pass create_schema=True"
    )


def not_installed(names: Names) -> SchemaNotInstalledError:
    where = names.qualified(names.jobs_table)
    return SchemaNotInstalledError(
        f"pg_scheduler tables ({where}) are not installed: {how_to_install(names)}", names=names
    )


def check_schema(bind: Bind, names: Names) -> None:
    """Raise unless the tables for ``names`` are installed at this library's head revision.

    The error names the command for how they were installed: pattern A (our own version table)
    upgrades with ``pg-scheduler db upgrade``; pattern B (our revisions a branch of the host's
    Alembic history) with the host's own ``alembic upgrade heads``.
    """
    with _connection(bind) as conn:
        installed, branch = _installed(conn, names)
    expected = head()
    where = names.qualified(names.jobs_table)
    if installed is None:
        raise not_installed(names)
    fix = BRANCH_UPGRADE_HINT if branch else how_to_install(names)
    if installed != expected:
        raise SchemaVersionMismatchError(
            f"pg_scheduler schema {where} is at revision {installed!r} but this version of "
            f"pg_scheduler needs {expected!r}: {fix}"
        )
