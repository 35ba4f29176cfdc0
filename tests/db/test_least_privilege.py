"""Least privilege: an owner role migrates; a runtime role with DML on our tables only runs the
scheduler, and its attempts to migrate fail with a clear ``MigrationError``.

The roles are the two of the README's deployment advice (reliability research §7.4) with the grants
narrowed to one installation. Role names are unique per run (roles are cluster-wide and the
PostgreSQL behind ``PG_SCHEDULER_TEST_DSN`` persists) and are dropped afterwards.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from pg_scheduler import Job, JobConfig, JobContext, Scheduler, SchedulerConfig, migrations
from pg_scheduler.errors import MigrationError
from pg_scheduler.models import build_models
from pg_scheduler.naming import Names
from pg_scheduler.states import TERMINAL_STATUSES, JobStatus
from pg_scheduler.testing import wait_until

INSUFFICIENT_PRIVILEGE = "42501"


@dataclass(frozen=True)
class Roles:
    owner: str
    runtime: str
    owner_engine: sa.Engine
    runtime_engine: sa.Engine
    names: Names


def _q(engine: sa.Engine, identifier: str) -> str:
    return engine.dialect.identifier_preparer.quote_identifier(identifier)


def _sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    orig: Any = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code is None and orig is not None and orig.args and isinstance(orig.args[0], dict):
        code = orig.args[0].get("C")  # pg8000
    return code


def grant_runtime(conn: sa.Connection, names: Names, role: str) -> None:
    """The grants a runtime role needs for one installation: DML on the three tables, read access
    to the version table (the start-up check), and nothing else: no CREATE, TRUNCATE or ownership.
    """
    preparer = conn.dialect.identifier_preparer
    grantee = preparer.quote_identifier(role)
    models = build_models(names)
    conn.exec_driver_sql(
        f"GRANT USAGE ON SCHEMA {preparer.quote_schema(names.schema)} TO {grantee}"
    )
    for table in (models.jobs, models.runs, models.nodes):
        conn.exec_driver_sql(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {preparer.format_table(table)} "
            f"TO {grantee}"
        )
    version = sa.Table(names.version_table, sa.MetaData(), schema=names.schema)
    conn.exec_driver_sql(f"GRANT SELECT ON TABLE {preparer.format_table(version)} TO {grantee}")


@pytest.fixture
def roles(engine: sa.Engine, pg_scheduler_url: str) -> Iterator[Roles]:
    tag = uuid.uuid4().hex[:8]
    owner, runtime, schema = f"pgs_owner_{tag}", f"pgs_runtime_{tag}", f"pgs_lp_{tag}"
    names = Names("lp_", schema)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {_q(engine, owner)} LOGIN")
        conn.exec_driver_sql(f"CREATE ROLE {_q(engine, runtime)} LOGIN")
        # The owner owns the schema but may not create schemas (no CREATE on the database).
        conn.execute(sa.schema.CreateSchema(schema))
        conn.exec_driver_sql(f"ALTER SCHEMA {_q(engine, schema)} OWNER TO {_q(engine, owner)}")
    url = sa.make_url(pg_scheduler_url)
    owner_engine = sa.create_engine(url.set(username=owner, password=None))
    runtime_engine = sa.create_engine(url.set(username=runtime, password=None))
    try:
        for role, role_engine in ((owner, owner_engine), (runtime, runtime_engine)):
            with role_engine.connect() as conn:  # really connected as that role, no superuser
                who = conn.execute(
                    sa.text("SELECT current_user, rolsuper, rolcreatedb FROM pg_roles "
                            "WHERE rolname = current_user")
                ).one()  # fmt: skip
            assert tuple(who) == (role, False, False)
        yield Roles(owner, runtime, owner_engine, runtime_engine, names)
    finally:
        owner_engine.dispose()
        runtime_engine.dispose()
        with engine.begin() as conn:
            conn.execute(sa.schema.DropSchema(schema, cascade=True, if_exists=True))
            conn.exec_driver_sql(f"DROP OWNED BY {_q(engine, owner)}, {_q(engine, runtime)}")
            conn.exec_driver_sql(f"DROP ROLE {_q(engine, runtime)}")
            conn.exec_driver_sql(f"DROP ROLE {_q(engine, owner)}")


@pytest.fixture
def migrated(roles: Roles, engine: sa.Engine) -> Roles:
    """The owner installed the tables (creating nothing but them), then granted the runtime role."""
    migrations.upgrade(roles.owner_engine, names=roles.names)
    with roles.owner_engine.begin() as conn:
        grant_runtime(conn, roles.names, roles.runtime)
    with engine.connect() as conn:
        owners = conn.execute(
            sa.text(
                "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class "
                "WHERE relnamespace = to_regnamespace(:schema)"
            ),
            {"schema": roles.names.schema},
        )
        assert owners.scalars().all() == [roles.owner]
    return roles


class Recorder(Job):
    def __init__(self, config: JobConfig, seen: list[tuple[str, Any]]) -> None:
        super().__init__(config)
        self.seen = seen

    def run(self, ctx: JobContext) -> None:
        self.seen.append((ctx.job_key, ctx.params))


class Fails(Job):
    def run(self, ctx: JobContext) -> None:
        raise RuntimeError("expected failure")


class WaitsForCancel(Job):
    def __init__(self, config: JobConfig) -> None:
        super().__init__(config)
        self.started = threading.Event()

    def run(self, ctx: JobContext) -> None:
        self.started.set()
        wait_until(ctx.is_cancelled, timeout=30, message="cancellation")


def runtime_config(roles: Roles, **overrides: Any) -> SchedulerConfig:
    settings: dict[str, Any] = {
        "engine": roles.runtime_engine,
        "table_prefix": roles.names.prefix,
        "schema": roles.names.schema,
        "job_check_interval": dt.timedelta(milliseconds=200),
        "heartbeat_interval": dt.timedelta(milliseconds=200),
        "no_heartbeat_timeout": dt.timedelta(seconds=2),
        "shutdown_timeout": dt.timedelta(seconds=5),
    }
    settings.update(overrides)
    return SchedulerConfig(**settings)


def test_the_runtime_role_runs_every_operation(migrated: Roles) -> None:
    roles = migrated
    seen: list[tuple[str, Any]] = []
    scheduler = Scheduler(runtime_config(roles))
    scheduler.register(Recorder(JobConfig.one_time("record"), seen))
    scheduler.register(Fails(JobConfig.one_time("fails")))
    waits = scheduler.register(WaitsForCancel(JobConfig.one_time("waits")))
    assert isinstance(waits, WaitsForCancel)
    with scheduler:  # start: schema check, node registration, LISTEN
        scheduler.schedule_job(Recorder(JobConfig.recurring("tick", "* * * * * *"), seen))
        key = scheduler.enqueue("record", {"n": 1})
        failing = scheduler.enqueue("fails")
        later = scheduler.enqueue("record", {"n": 2}, run_at=dt.datetime.now(dt.timezone.utc)
                                  + dt.timedelta(hours=1))  # fmt: skip

        def status(job_key: str) -> JobStatus | None:
            record = scheduler.get_job(job_key)
            return record.status if record is not None else None

        wait_until(lambda: status(key) == JobStatus.COMPLETED, timeout=30, message="completed")
        wait_until(lambda: status(failing) == JobStatus.FAILED, timeout=30, message="failed")
        wait_until(
            lambda: (job := scheduler.get_job("tick")) and job.last_success_at,
            timeout=30,
            message="a tick of the recurring job",
        )
        assert (key, {"n": 1}) in seen

        cancelled = scheduler.cancel_job(later)
        assert cancelled.cancelled
        assert status(later) == JobStatus.CANCELLED

        # Cancelling a running job asks its node to stop it; the heartbeat carries the request.
        waiting = scheduler.enqueue("waits")
        wait_until(waits.started.is_set, timeout=30, message="the job to start")
        assert scheduler.cancel_job(waiting).requested
        wait_until(
            lambda: status(waiting) in TERMINAL_STATUSES, timeout=30, message="the cancelled job"
        )

        assert scheduler.list_runs(key)
        assert [n.node_id for n in scheduler.list_nodes()] == [scheduler.node_id]
        scheduler.heartbeat.run_once()
        scheduler.maintenance.run_once(cleanup=True)
    assert scheduler.list_jobs(status=JobStatus.RUNNING) == []

    # Retention cleanup deletes rows: DELETE is granted too.
    cleaner = Scheduler(runtime_config(roles, finished_job_retention=dt.timedelta(0)))
    assert cleaner.maintenance.run_once(cleanup=True).cleaned >= 3
    assert cleaner.get_job(key) is None


def test_a_runtime_node_with_create_schema_starts_on_a_migrated_schema(migrated: Roles) -> None:
    """``create_schema=True`` is a no-op at head: it needs nothing the runtime role lacks."""
    with Scheduler(runtime_config(migrated, create_schema=True)) as scheduler:
        assert scheduler.enqueue("anything")
    assert migrations.is_up_to_date(migrated.runtime_engine, names=migrated.names)


def assert_clear(error: MigrationError, action: str) -> None:
    message = str(error)
    assert message.startswith(f"cannot {action} pg_scheduler"), message
    assert "privilege" in message
    assert "runtime role" in message  # says which role migrations need
    assert "\n" not in message
    assert "Traceback" not in message and "[SQL:" not in message and "alembic" not in message
    assert isinstance(error.__cause__, sa.exc.DBAPIError)
    assert _sqlstate(error.__cause__) == INSUFFICIENT_PRIVILEGE


def test_the_runtime_role_cannot_migrate(migrated: Roles, engine: sa.Engine) -> None:
    roles, names = migrated, migrated.names
    with pytest.raises(MigrationError) as info:  # a new installation in the granted schema
        migrations.upgrade(roles.runtime_engine, table_prefix="other_", schema=names.schema)
    assert_clear(info.value, "upgrade")

    with pytest.raises(MigrationError) as info:  # dropping the installed tables
        migrations.downgrade(roles.runtime_engine, names=names)
    assert_clear(info.value, "downgrade")
    assert migrations.is_up_to_date(engine, names=names)  # the failed downgrade changed nothing

    fresh_schema = f"{names.schema}_new"
    with pytest.raises(MigrationError) as info:  # a new schema: no CREATE on the database
        migrations.upgrade(roles.runtime_engine, table_prefix="lp_", schema=fresh_schema)
    assert_clear(info.value, "upgrade")

    with pytest.raises(MigrationError) as info:  # a node asked to install a fresh prefix
        Scheduler(runtime_config(roles, table_prefix="node_", create_schema=True)).start()
    assert_clear(info.value, "upgrade")

    with engine.connect() as conn:
        created = conn.execute(
            sa.text("SELECT relname FROM pg_class WHERE relnamespace = to_regnamespace(:s)"),
            {"s": names.schema},
        ).scalars()
        assert not [r for r in created if r.startswith(("other_", "node_"))]
        assert conn.scalar(sa.select(sa.func.to_regnamespace(fresh_schema))) is None


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE {jobs}",
        "ALTER TABLE {jobs} ADD COLUMN extra integer",
        "TRUNCATE {runs}",
        "CREATE INDEX extra_ix ON {jobs} (name)",
        "CREATE TABLE {schema}.extra (id integer)",
    ],
)
def test_the_runtime_role_cannot_change_the_tables_directly(
    migrated: Roles, statement: str
) -> None:
    models, runtime = build_models(migrated.names), migrated.runtime_engine
    preparer = runtime.dialect.identifier_preparer
    sql = statement.format(
        jobs=preparer.format_table(models.jobs),
        runs=preparer.format_table(models.runs),
        schema=preparer.quote_schema(migrated.names.schema or ""),
    )
    with runtime.connect() as conn, pytest.raises(sa.exc.DBAPIError) as info:
        conn.exec_driver_sql(sql)
    assert _sqlstate(info.value) == INSUFFICIENT_PRIVILEGE
