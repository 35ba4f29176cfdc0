"""pg_scheduler's Alembic environment (ships in the wheel as ``pg_scheduler/_alembic``).

It never calls ``logging.config.fileConfig``: run in-process from a host application, that would
disable the host's loggers. Every name comes from ``names_from_alembic`` (prefix and schema from
``Config.attributes``, ``-x`` options, ``pg_scheduler.*`` ini options or the environment).
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

from pg_scheduler.migrations import (
    ADVISORY_LOCK_SQL,
    include_object_filter,
    names_from_alembic,
    url_from_alembic,
)
from pg_scheduler.models import build_models

config = context.config
names = names_from_alembic(config, own_environment=True)
target_metadata = build_models(names).metadata


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        version_table=names.version_table,
        version_table_schema=names.schema,
        include_schemas=names.schema is not None,
        include_name=include_object_filter(names),
        compare_server_default=True,
        process_revision_directives=config.attributes.get("process_revision_directives"),
        **kwargs,  # type: ignore[arg-type]
    )


def run_offline() -> None:
    _configure(
        url=url_from_alembic(config) or "postgresql://",
        dialect_name="postgresql",
        literal_binds=True,
    )
    with context.begin_transaction():
        context.execute(ADVISORY_LOCK_SQL.bindparams(key=names.advisory_lock_key))
        if names.schema:
            context.execute(sa.schema.CreateSchema(names.schema, if_not_exists=True))
        context.run_migrations()


def _migrate(conn: sa.Connection) -> None:
    # Concurrent upgrades (several replicas starting at once) queue here, so only the first one
    # creates anything and the others find the version table already at head.
    conn.execute(ADVISORY_LOCK_SQL, {"key": names.advisory_lock_key})
    # The version table is created before any revision runs, so its schema must exist first.
    # Probe before creating: CREATE SCHEMA IF NOT EXISTS still needs CREATE on the database, which a
    # least-privilege role lacks even when the schema is already there.
    if (
        names.schema
        and not conn.execute(
            sa.select(sa.literal(1))
            .where(sa.column("nspname") == names.schema)
            .select_from(sa.table("pg_namespace", schema="pg_catalog"))
        ).first()
    ):
        conn.execute(sa.schema.CreateSchema(names.schema))
    _configure(connection=conn)
    with context.begin_transaction():
        context.run_migrations()
        # Alembic leaves its version table behind, empty, after a downgrade to base; uninstalled
        # means nothing of ours is left. Done under the lock, so a concurrent install that
        # queued behind this downgrade creates a fresh one.
        if not context.get_context().get_current_heads():
            version = sa.Table(names.version_table, sa.MetaData(), schema=names.schema)
            version.drop(conn, checkfirst=True)


def run_online() -> None:
    bind = config.attributes.get("connection")
    if isinstance(bind, sa.Connection):
        if bind.in_transaction():
            _migrate(bind)  # the caller owns the transaction and commits it
        else:
            with bind.begin():
                _migrate(bind)
        return
    if isinstance(bind, sa.Engine):
        engine = bind
    else:
        url = url_from_alembic(config) or os.environ.get("PG_SCHEDULER_DATABASE_URL")
        if not url:
            raise SystemExit(
                "no database URL: pass -x url=..., set sqlalchemy.url or PG_SCHEDULER_DATABASE_URL"
            )
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn, conn.begin():
        _migrate(conn)


if context.is_offline_mode():
    run_offline()
else:
    run_online()
