"""Migrations against a real PostgreSQL: round trips, coexistence, idempotence, models == migrations,
offline SQL, the repository's own ``alembic`` command, concurrent upgrades and an installed wheel.

Every test installs into its own schema or under its own prefix and removes it afterwards (the
PostgreSQL behind ``PG_SCHEDULER_TEST_DSN`` persists between runs and is shared with other suites).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import textwrap
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from pg_scheduler import __version__, migrations
from pg_scheduler.db.records import OneTimeSpec
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.errors import (
    MigrationError,
    SchemaNotInstalledError,
    SchemaVersionMismatchError,
)
from pg_scheduler.models import build_models
from pg_scheduler.naming import MAX_PREFIX_LENGTH, Names
from pg_scheduler.testing import TestServer, wait_until

REPO = Path(__file__).resolve().parents[2]
LONGEST_PREFIX = "l" * (MAX_PREFIX_LENGTH - 1) + "_"
DDL_RE = re.compile(r"^\s*(CREATE|ALTER|DROP|INSERT|UPDATE|DELETE|TRUNCATE|COMMENT|GRANT)\b", re.I)


def unique(label: str) -> str:
    return f"{label}{uuid.uuid4().hex[:8]}"


def quote(engine: sa.Engine, identifier: str) -> str:
    return engine.dialect.identifier_preparer.quote_identifier(identifier)


def drop_schema(engine: sa.Engine, schema: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.schema.DropSchema(schema, cascade=True, if_exists=True))


def drop_installation(engine: sa.Engine, names: Names) -> None:
    """Remove every table of ``names``, whatever state a test left them in."""
    with engine.begin() as conn:
        build_models(names).metadata.drop_all(conn, checkfirst=True)
        version = sa.Table(names.version_table, sa.MetaData(), schema=names.schema)
        version.drop(conn, checkfirst=True)


def version_table(names: Names) -> sa.Table:
    return sa.Table(
        names.version_table,
        sa.MetaData(),
        sa.Column("version_num", sa.String(32)),
        schema=names.schema,
    )


def run_in(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def installed_tables(engine: sa.Engine, names: Names) -> set[str]:
    """Which of ``names``' tables exist (the version table included)."""
    ours = {names.jobs_table, names.runs_table, names.nodes_table, names.version_table}
    with engine.connect() as conn:
        return ours & set(sa.inspect(conn).get_table_names(schema=names.schema))


@pytest.fixture
def schemas(engine: sa.Engine) -> Iterator[Callable[[str], str]]:
    """Hands out fresh schema names (not created) and drops them, with their contents, after."""
    made: list[str] = []

    def make(label: str = "tm") -> str:
        made.append(unique(label))
        return made[-1]

    yield make
    failures = []
    for schema in made:  # each one, even when another cannot be dropped
        try:
            drop_schema(engine, schema)
        except sa.exc.DBAPIError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


@pytest.fixture
def search_path_engine(pg_scheduler_url: str, engine: sa.Engine) -> Iterator[sa.Engine]:
    """An engine whose connections default to a private schema, so installations without an
    explicit schema (the empty prefix above all) stay isolated from other tests and other runs."""
    schema = unique("tsp")
    with engine.begin() as conn:
        conn.execute(sa.schema.CreateSchema(schema))
    private = sa.create_engine(pg_scheduler_url, poolclass=sa.pool.NullPool)
    statement = f"SET search_path TO {quote(private, schema)}"

    @sa.event.listens_for(private, "connect", insert=True)  # before the dialect reads it
    def set_search_path(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(statement)
        cursor.close()
        dbapi_connection.commit()

    with private.connect() as conn:
        assert conn.scalar(sa.select(sa.func.current_schema())) == schema
    assert private.dialect.default_schema_name == schema
    yield private
    private.dispose()
    drop_schema(engine, schema)


@pytest.fixture
def cleanup(engine: sa.Engine) -> Iterator[Callable[[Names], Names]]:
    """Registers installations (in the default schema) to remove after the test."""
    registered: list[Names] = []

    def register(names: Names) -> Names:
        registered.append(names)
        return names

    yield register
    failures = []
    for names in registered:
        try:
            drop_installation(engine, names)
        except sa.exc.DBAPIError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


def catalog_names(engine: sa.Engine, names: Names) -> set[str]:
    """Every relation, constraint and domain name in the schema of ``names`` (which holds nothing
    else)."""
    query = sa.text(
        """
        SELECT c.relname FROM pg_class c
          WHERE c.relnamespace = to_regnamespace(coalesce(:schema, current_schema()))
        UNION
        SELECT con.conname FROM pg_constraint con
          WHERE con.connamespace = to_regnamespace(coalesce(:schema, current_schema()))
            AND con.contype <> 'n'
        UNION
        SELECT t.typname FROM pg_type t
          WHERE t.typnamespace = to_regnamespace(coalesce(:schema, current_schema()))
            AND t.typtype = 'd'
        """
    )
    with engine.connect() as conn:
        return set(conn.execute(query, {"schema": names.schema}).scalars())


# ---------------------------------------------------------------- install, round trip, coexist
@pytest.mark.parametrize("case", ["empty prefix", "custom prefix and schema", "longest prefix"])
def test_upgrade_downgrade_upgrade_round_trip(
    case: str,
    search_path_engine: sa.Engine,
    schemas: Callable[[str], str],
    engine: sa.Engine,
) -> None:
    if case == "empty prefix":
        names, bind = Names(""), search_path_engine
    elif case == "custom prefix and schema":
        names, bind = Names("app_", schemas("tms")), engine
    else:
        names, bind = Names(LONGEST_PREFIX), search_path_engine
    tables = {names.jobs_table, names.runs_table, names.nodes_table, names.version_table}

    assert migrations.current(bind, names=names) is None
    migrations.upgrade(bind, names=names)
    assert installed_tables(bind, names) == tables
    assert migrations.current(bind, names=names) == migrations.head()
    # Nothing was truncated or named by PostgreSQL itself: every name is one Names derived.
    assert catalog_names(bind, names) <= set(names.identifiers())

    migrations.downgrade(bind, names=names)
    assert installed_tables(bind, names) == set()  # the version table too: nothing left behind
    assert migrations.current(bind, names=names) is None

    migrations.upgrade(bind, names=names)
    assert installed_tables(bind, names) == tables
    assert migrations.is_up_to_date(bind, names=names)
    migrations.check_schema(bind, names)


def test_an_installation_of_the_first_revision_upgrades_with_its_data(
    engine: sa.Engine, cleanup: Callable[[Names], Names]
) -> None:
    names = cleanup(Names(unique("r") + "_"))
    migrations.upgrade(engine, names=names, revision="pgs_0001")
    dropped = {names.run("job_key_ix"), names.run("finished_ix"), names.job("name_ix")}
    assert dropped <= catalog_names(engine, names)
    models = build_models(names)
    with engine.begin() as conn:
        JobRepository(conn, models).insert_one_time(OneTimeSpec("kept", retries=0), key="kept#1")
    assert not migrations.is_up_to_date(engine, names=names)

    assert runs_storage(engine, names) is None
    migrations.upgrade(engine, names=names)
    assert migrations.current(engine, names=names) == "pgs_0006" == migrations.head()
    assert not dropped & catalog_names(engine, names)
    assert runs_storage(engine, names) == ["fillfactor=50"]
    with engine.connect() as conn:
        assert conn.execute(sa.select(models.jobs.c.key)).scalars().all() == ["kept#1"]

    migrations.downgrade(engine, names=names, revision="pgs_0001")
    assert dropped <= catalog_names(engine, names)
    assert runs_storage(engine, names) is None
    assert migrations.current(engine, names=names) == "pgs_0001"


def test_the_column_domains_keep_every_row_in_place_and_every_rule(
    engine: sa.Engine, cleanup: Callable[[Names], Names]
) -> None:
    # pgs_0005 moves the one-column rules from table CHECKs onto domains: the rows stay where
    # they are (no rewrite), and a bad value is refused before, after and after a downgrade,
    # under the same constraint name.
    names = cleanup(Names(unique("d") + "_"))
    migrations.upgrade(engine, names=names, revision="pgs_0004")
    models = build_models(names)
    jobs = models.jobs
    with engine.begin() as conn:
        repo = JobRepository(conn, models)
        keys = [repo.insert_one_time(OneTimeSpec("kept", {"i": i}, retries=i)) for i in range(50)]
    filenode = sa.text("SELECT pg_relation_filenode(to_regclass(:table))")
    rows = sa.select(jobs.c.key, jobs.c.name, jobs.c.status, jobs.c.max_retries, jobs.c.params)
    bad_values = [
        ("status_ck", {"status": "bogus"}),
        ("job_type_ck", {"job_type": "bogus"}),
        ("misfire_ck", {"misfire": "bogus"}),
        ("counts_ck", {"attempt": -1}),
        ("counts_ck", {"consecutive_failures": -1}),
        ("name_ck", {"name": ""}),
        ("name_ck", {"name": "n" * 201}),
    ]

    def refused_as_before() -> None:
        # (pg8000 reports a check violation as a ProgrammingError, the others as IntegrityError.)
        for constraint, values in bad_values:
            update = sa.update(jobs).where(jobs.c.key == keys[0]).values(values)
            with (
                pytest.raises(sa.exc.DBAPIError, match=re.escape(names.job(constraint))),
                engine.begin() as conn,
            ):
                conn.execute(update)

    with engine.connect() as conn:
        before = conn.execute(filenode, {"table": names.jobs_table}).scalar_one()
        content = conn.execute(rows.order_by(jobs.c.key)).all()
    refused_as_before()

    migrations.upgrade(engine, names=names)
    domains = {names.job(s) for s in ("status_t", "job_type_t", "misfire_t", "count_t", "name_t")}
    assert domains <= catalog_names(engine, names)
    with engine.connect() as conn:
        assert conn.execute(filenode, {"table": names.jobs_table}).scalar_one() == before
        assert conn.execute(rows.order_by(jobs.c.key)).all() == content
    refused_as_before()

    migrations.downgrade(engine, names=names, revision="pgs_0004")
    assert not domains & catalog_names(engine, names)
    with engine.connect() as conn:
        assert conn.execute(rows.order_by(jobs.c.key)).all() == content
    refused_as_before()


def test_lost_runs_are_counted_and_retries_may_be_left_to_the_handler(
    engine: sa.Engine, cleanup: Callable[[Names], Names]
) -> None:
    # pgs_0006: a lost_leases count on every row (0, no rewrite), max_retries may be NULL, and one
    # attempt of one tick may have several run rows; a downgrade keeps each attempt's newest row.
    names = cleanup(Names(unique("l") + "_"))
    migrations.upgrade(engine, names=names, revision="pgs_0005")
    jobs, runs = build_models(names).jobs, build_models(names).runs
    filenode = sa.text("SELECT pg_relation_filenode(to_regclass(:table))")
    old_jobs = sa.table(
        names.jobs_table,
        sa.column("key", sa.Text),
        sa.column("name", sa.Text),
        sa.column("job_type", sa.Text),
        sa.column("max_retries", sa.Integer),
        sa.column("next_run", sa.DateTime(timezone=True)),
        sa.column("scheduled_at", sa.DateTime(timezone=True)),
        schema=names.schema,
    )
    tick = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(old_jobs),
            [
                {
                    "key": f"k#{i}",
                    "name": "k",
                    "job_type": "one_time",
                    "max_retries": i,
                    "next_run": tick,
                    "scheduled_at": tick,
                }
                for i in range(3)
            ],
        )
        before = conn.execute(filenode, {"table": names.jobs_table}).scalar_one()

    migrations.upgrade(engine, names=names, revision="pgs_0006")
    run = {"job_key": "k#0", "name": "k", "scheduled_at": tick, "attempt": 1, "node_id": "n"}
    with engine.begin() as conn:
        assert conn.execute(filenode, {"table": names.jobs_table}).scalar_one() == before
        rows = conn.execute(
            sa.select(jobs.c.key, jobs.c.max_retries, jobs.c.lost_leases).order_by(jobs.c.key)
        ).all()
        assert [tuple(r) for r in rows] == [("k#0", 0, 0), ("k#1", 1, 0), ("k#2", 2, 0)]
        conn.execute(sa.update(jobs).where(jobs.c.key == "k#1").values(max_retries=None))
        # The same attempt of the same tick, twice: a lost run and its rerun.
        conn.execute(
            sa.insert(runs),
            [
                {**run, "lease_id": uuid.uuid4(), "status": "lost"},
                {**run, "lease_id": uuid.uuid4(), "status": "completed"},
            ],
        )
    with (
        pytest.raises(sa.exc.DBAPIError, match=re.escape(names.job("counts_ck"))),
        engine.begin() as conn,
    ):
        conn.execute(sa.update(jobs).where(jobs.c.key == "k#0").values(lost_leases=-1))

    migrations.downgrade(engine, names=names, revision="pgs_0005")
    with engine.connect() as conn:
        assert conn.execute(
            sa.select(old_jobs.c.key, old_jobs.c.max_retries).order_by(old_jobs.c.key)
        ).all() == [("k#0", 0), ("k#1", 0), ("k#2", 2)]
        assert conn.execute(sa.select(runs.c.status)).scalars().all() == ["completed"]
    assert names.run("tick_ix") not in catalog_names(engine, names)
    assert names.run("tick_uq") in catalog_names(engine, names)


def runs_storage(engine: sa.Engine, names: Names) -> Any:
    """The storage parameters of the runs table (None: the defaults)."""
    query = sa.text(
        "SELECT c.reloptions FROM pg_class c WHERE c.relname = :table AND c.relkind = 'r'"
        " AND c.relnamespace = coalesce(to_regnamespace(:schema), current_schema()::regnamespace)"
    )
    with engine.connect() as conn:
        return conn.execute(query, {"table": names.runs_table, "schema": names.schema}).scalar_one()


def test_prefixes_coexist_in_one_schema(search_path_engine: sa.Engine) -> None:
    # "" and "pg_scheduler_" once shared a version table; "b_" is an ordinary neighbour.
    installs = [Names(""), Names("pg_scheduler_"), Names("b_")]
    for names in installs:
        migrations.upgrade(search_path_engine, names=names)
    for names in installs:
        assert migrations.is_up_to_date(search_path_engine, names=names), names
        assert len(installed_tables(search_path_engine, names)) == 4, names

    # A row in one installation is not visible in another, and removing one leaves the others.
    with search_path_engine.begin() as conn:
        conn.execute(
            sa.insert(build_models(installs[1]).nodes).values(
                node_id="n1", node_name="n", hostname="h", pid=1
            )
        )
    with search_path_engine.connect() as conn:
        counts = [
            conn.scalar(sa.select(sa.func.count()).select_from(build_models(names).nodes))
            for names in installs
        ]
    assert counts == [0, 1, 0]
    migrations.downgrade(search_path_engine, names=installs[1])
    assert installed_tables(search_path_engine, installs[1]) == set()
    assert migrations.is_up_to_date(search_path_engine, names=installs[0])
    assert migrations.is_up_to_date(search_path_engine, names=installs[2])


def test_upgrading_twice_runs_no_ddl_the_second_time(
    engine: sa.Engine, schemas: Callable[[str], str], pg_scheduler_url: str
) -> None:
    names = Names("twice_", schemas("tm2"))
    spy = sa.create_engine(pg_scheduler_url, poolclass=sa.pool.NullPool)
    statements: list[str] = []
    sa.event.listen(spy, "before_cursor_execute", lambda c, cur, stmt, *a: statements.append(stmt))
    try:
        migrations.upgrade(spy, names=names)
        first = [s for s in statements if DDL_RE.match(s)]
        statements.clear()
        migrations.upgrade(spy, names=names)
        second = [s for s in statements if DDL_RE.match(s)]
    finally:
        spy.dispose()
    assert any(s.lstrip().upper().startswith("CREATE TABLE") for s in first)  # the spy works
    assert second == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(version_table(names).c.version_num)).scalars().all() == [
            migrations.head()
        ]


def test_upgrade_inside_the_callers_transaction_follows_its_outcome(
    engine: sa.Engine, schemas: Callable[[str], str]
) -> None:
    names = Names("txn_", schemas("tmt"))
    with engine.connect() as conn:
        with conn.begin() as txn:
            migrations.upgrade(conn, names=names)
            assert migrations.current(conn, names=names) == migrations.head()
            txn.rollback()
        assert migrations.current(conn, names=names) is None  # transactional DDL, all undone
        with conn.begin():
            migrations.upgrade(conn, names=names)
    assert migrations.is_up_to_date(engine, names=names)


def test_upgrade_on_a_connection_outside_a_transaction_commits_by_itself(
    engine: sa.Engine, schemas: Callable[[str], str]
) -> None:
    names = Names("own_", schemas("tmo"))
    with engine.connect() as conn:
        migrations.upgrade(conn, names=names)
        assert not conn.in_transaction()
        conn.rollback()  # nothing left to undo
    assert migrations.is_up_to_date(engine, names=names)
    with engine.connect() as conn:
        migrations.downgrade(conn, names=names)
        assert not conn.in_transaction()
    assert installed_tables(engine, names) == set()


def test_current_leaves_no_transaction_open_on_the_callers_connection(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert migrations.current(conn, table_prefix=unique("tcur") + "_") is None
        assert not conn.in_transaction()


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "pg8000"])
def test_upgrade_of_an_unreachable_database_says_so(driver: str) -> None:
    # pg8000 reports a refused connection as an InterfaceError, not an OperationalError.
    engine = sa.create_engine(f"postgresql+{driver}://nobody@127.0.0.1:9/nowhere")
    with pytest.raises(MigrationError, match="cannot upgrade: database unreachable"):
        migrations.upgrade(engine)


# ---------------------------------------------------------------- schema checks
def test_check_schema_names_the_command_that_installs_a_missing_schema(
    engine: sa.Engine, schemas: Callable[[str], str]
) -> None:
    names = Names("chk_", schemas("tmc"))  # the schema does not even exist yet
    assert migrations.current(engine, names=names) is None
    assert not migrations.is_up_to_date(engine, names=names)
    with pytest.raises(SchemaNotInstalledError) as info:
        migrations.check_schema(engine, names)
    message = str(info.value)
    assert f"pg-scheduler db upgrade --url URL --table-prefix chk_ --schema {names.schema}" in (
        message
    )
    assert f"{names.schema}.chk_scheduled_jobs" in message

    migrations.upgrade(engine, names=names)
    migrations.check_schema(engine, names)


def test_check_schema_refuses_another_revision(
    engine: sa.Engine, schemas: Callable[[str], str]
) -> None:
    names = Names("old_", schemas("tmv"))
    migrations.upgrade(engine, names=names)
    with engine.begin() as conn:
        conn.execute(sa.update(version_table(names)).values(version_num="pgs_0000"))
    assert migrations.current(engine, names=names) == "pgs_0000"
    assert not migrations.is_up_to_date(engine, names=names)
    with pytest.raises(SchemaVersionMismatchError) as info:
        migrations.check_schema(engine, names)
    assert "'pgs_0000'" in str(info.value)
    assert repr(migrations.head()) in str(info.value)
    assert "pg-scheduler db upgrade" in str(info.value)


def test_the_revisions_are_found_from_this_install() -> None:
    location = Path(migrations.script_location())
    assert (location / "env.py").is_file()
    assert (location / "versions" / "pgs_0001_initial.py").is_file()
    assert (location / "versions" / "pgs_0002_lighter_run_history.py").is_file()
    assert (location / "versions" / "pgs_0003_no_name_index.py").is_file()
    assert (location / "versions" / "pgs_0004_runs_fillfactor.py").is_file()
    assert (location / "versions" / "pgs_0005_column_domains.py").is_file()
    assert (location / "versions" / "pgs_0006_lost_runs.py").is_file()
    assert migrations.head() == "pgs_0006"


# ---------------------------------------------------------------- models == migrations
CATALOG_SQL = sa.text(
    """
    SELECT 'table', c.relname, c.relkind::text, c.relpersistence::text,
           coalesce(array_to_string(c.reloptions, ','), '')
      FROM pg_class c
     WHERE c.relnamespace = to_regnamespace(:schema) AND c.relkind IN ('r', 'p', 'S', 'v', 'm')
    UNION ALL
    SELECT 'column', c.relname, a.attname,
           format_type(a.atttypid, a.atttypmod)
             || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE ' NULL' END
             || ' identity=' || a.attidentity::text || ' generated=' || a.attgenerated::text,
           coalesce(pg_get_expr(d.adbin, d.adrelid), '')
      FROM pg_attribute a
      JOIN pg_class c ON c.oid = a.attrelid
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE c.relnamespace = to_regnamespace(:schema) AND c.relkind = 'r'
       AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'constraint', c.relname, con.conname, con.contype::text, pg_get_constraintdef(con.oid)
      FROM pg_constraint con
      JOIN pg_class c ON c.oid = con.conrelid
     WHERE con.connamespace = to_regnamespace(:schema)
    UNION ALL
    SELECT 'domain', t.typname, coalesce(con.conname, ''),
           format_type(t.typbasetype, t.typtypmod) || CASE WHEN t.typnotnull THEN ' NOT NULL' ELSE '' END,
           coalesce(pg_get_constraintdef(con.oid), '')
      FROM pg_type t
      LEFT JOIN pg_constraint con ON con.contypid = t.oid AND con.contype = 'c'
     WHERE t.typnamespace = to_regnamespace(:schema) AND t.typtype = 'd'
    UNION ALL
    SELECT 'index', t.relname, i.relname, '', pg_get_indexdef(i.oid)
      FROM pg_index x
      JOIN pg_class i ON i.oid = x.indexrelid
      JOIN pg_class t ON t.oid = x.indrelid
     WHERE t.relnamespace = to_regnamespace(:schema)
    UNION ALL
    SELECT 'sequence', c.relname, format_type(s.seqtypid, NULL),
           s.seqstart || ' ' || s.seqincrement || ' ' || s.seqmin || ' ' || s.seqmax
             || ' ' || s.seqcache || ' ' || s.seqcycle,
           ''
      FROM pg_sequence s
      JOIN pg_class c ON c.oid = s.seqrelid
     WHERE c.relnamespace = to_regnamespace(:schema)
    """
)

Catalog = set[tuple[str, str, str, str, str]]


def catalog(engine: sa.Engine, names: Names) -> Catalog:
    """The catalog of one installation, names included, its schema written out of definitions.

    The version table exists only on the migrated side and is left out."""
    assert names.schema is not None
    version = {names.version_table, f"{names.version_table}_pkc"}
    qualified = f"{names.schema}."
    with engine.connect() as conn:
        rows = conn.execute(CATALOG_SQL, {"schema": names.schema}).all()
    return {
        (kind, table, name, detail.replace(qualified, ""), definition.replace(qualified, ""))
        for kind, table, name, detail, definition in rows
        if table not in version and name not in version
    }


def migrated_and_modelled(
    engine: sa.Engine, schemas: Callable[[str], str], prefix: str
) -> tuple[Names, Names]:
    migrated, modelled = Names(prefix, schemas("tmm")), Names(prefix, schemas("tmd"))
    migrations.upgrade(engine, names=migrated)
    with engine.begin() as conn:
        conn.execute(sa.schema.CreateSchema(modelled.schema or ""))
        build_models(modelled).metadata.create_all(conn)
    return migrated, modelled


@pytest.mark.parametrize("prefix", ["", "app_", "x", LONGEST_PREFIX])
def test_models_equal_migrations_in_the_catalog(
    engine: sa.Engine, schemas: Callable[[str], str], prefix: str
) -> None:
    migrated, modelled = migrated_and_modelled(engine, schemas, prefix)
    from_migrations, from_models = catalog(engine, migrated), catalog(engine, modelled)
    # Not vacuous: the catalog sees the CHECK constraints, the partial index and the columns.
    assert ("constraint", migrated.jobs_table, migrated.job("lease_ck")) in {
        row[:3] for row in from_migrations
    }
    assert any(
        row[0] == "index" and row[2] == migrated.job("due_ix") and "WHERE" in row[4]
        for row in from_migrations
    )
    assert sum(1 for row in from_migrations if row[0] == "column") >= 40
    assert ("table", migrated.runs_table, "r", "p", "fillfactor=50") in from_migrations
    assert sorted(from_migrations ^ from_models) == []


def _autogenerate_diff(engine: sa.Engine, names: Names) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "include_schemas": names.schema is not None,
                "include_name": migrations.include_object_filter(names),
                "compare_server_default": True,
                "compare_type": True,
                "version_table": names.version_table,
                "version_table_schema": names.schema,
            },
        )
        return list(compare_metadata(context, build_models(names).metadata))


@pytest.mark.parametrize("prefix", ["", "app_", LONGEST_PREFIX])
def test_autogenerate_finds_nothing_to_change_after_the_migrations(
    engine: sa.Engine, schemas: Callable[[str], str], prefix: str
) -> None:
    names = Names(prefix, schemas("tma"))
    migrations.upgrade(engine, names=names)
    assert _autogenerate_diff(engine, names) == []


def test_autogenerate_finds_nothing_to_change_without_a_schema(
    search_path_engine: sa.Engine,
) -> None:
    names = Names("nos_")
    migrations.upgrade(search_path_engine, names=names)
    assert _autogenerate_diff(search_path_engine, names) == []


def test_the_catalog_comparison_catches_what_autogenerate_misses(
    engine: sa.Engine, schemas: Callable[[str], str]
) -> None:
    """A CHECK constraint with another condition (or another name) passes compare_metadata."""
    migrated, modelled = migrated_and_modelled(engine, schemas, "drift_")
    jobs = build_models(modelled).jobs
    next_run_ck = modelled.job("next_run_ck")
    weaker = "status <> 'pending' OR next_run IS NOT NULL"
    with engine.begin() as conn:
        conn.execute(
            sa.schema.DropConstraint(sa.CheckConstraint("true", name=next_run_ck, table=jobs))
        )
        conn.execute(
            sa.schema.AddConstraint(sa.CheckConstraint(weaker, name=next_run_ck, table=jobs))
        )
    assert _autogenerate_diff(engine, modelled) == []
    difference = catalog(engine, migrated) ^ catalog(engine, modelled)
    assert {row[2] for row in difference} == {next_run_ck}


# ---------------------------------------------------------------- offline SQL and `alembic`
IDENTIFIER_TOKEN = re.compile(r"[a-z_][a-z0-9_]*")
OUR_BASE_NAMES = ("scheduled_jobs", "job_runs", "nodes", "alembic_version")


def our_tokens(sql: str) -> set[str]:
    """Every identifier-like word of ``sql`` that names one of our objects, whatever its prefix."""
    return {t for t in IDENTIFIER_TOKEN.findall(sql) if any(b in t for b in OUR_BASE_NAMES)}


def test_offline_sql_creates_the_schema_first_and_names_only_this_installation() -> None:
    names = Names("off_", "offline_jobs")
    sql = migrations.sql(names=names)
    create_schema = sql.index("CREATE SCHEMA IF NOT EXISTS offline_jobs")
    create_version = sql.index("CREATE TABLE offline_jobs.off_alembic_version")
    assert sql.index("pg_advisory_xact_lock") < create_schema < create_version
    assert sql.index("CREATE TABLE offline_jobs.off_scheduled_jobs") > create_version
    assert "CREATE INDEX off_scheduled_jobs_due_ix ON offline_jobs.off_scheduled_jobs" in sql
    assert "INSERT INTO offline_jobs.off_alembic_version (version_num) VALUES ('pgs_0001')" in sql
    assert "DROP INDEX offline_jobs.off_job_runs_job_key_ix" in sql  # the second revision
    assert "SET version_num='pgs_0002' WHERE" in sql
    assert "DROP INDEX offline_jobs.off_scheduled_jobs_name_ix" in sql  # the third
    assert "SET version_num='pgs_0006' WHERE" in sql
    assert sql.rstrip().endswith("COMMIT;")
    tokens = our_tokens(sql)
    assert tokens <= set(names.identifiers())
    assert {names.jobs_table, names.runs_table, names.nodes_table} <= tokens


def test_offline_sql_for_the_empty_prefix_has_no_schema_and_its_own_version_table() -> None:
    names = Names("")
    sql = migrations.sql()
    assert "CREATE SCHEMA" not in sql
    assert f"CREATE TABLE {names.version_table} (" in sql
    assert "CREATE TABLE scheduled_jobs (" in sql
    assert our_tokens(sql) <= set(names.identifiers())


def test_offline_sql_quotes_a_schema_that_is_a_reserved_word() -> None:
    sql = migrations.sql(table_prefix="q_", schema="user")
    assert 'CREATE SCHEMA IF NOT EXISTS "user"' in sql
    assert 'CREATE TABLE "user".q_scheduled_jobs' in sql


def test_offline_sql_from_the_head_to_the_head_creates_nothing() -> None:
    head = migrations.head()
    sql = migrations.sql(table_prefix="inc_", from_revision=head, revision=head)
    assert "CREATE TABLE inc_scheduled_jobs" not in sql


def alembic_command() -> list[str]:
    script = Path(sys.executable).with_name("alembic")
    return [str(script)] if script.exists() else [sys.executable, "-m", "alembic"]


def test_alembic_command_line_in_the_repository(
    pg_scheduler_url: str, engine: sa.Engine, cleanup: Callable[[Names], Names]
) -> None:
    names = cleanup(Names(unique("app") + "_"))
    base = [*alembic_command(), "-c", "alembic.ini", "-x", f"url={pg_scheduler_url}"]
    base += ["-x", f"table_prefix={names.prefix}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG_SCHEDULER_")}

    def alembic(*args: str) -> str:
        done = run_in(REPO, env, *base, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    alembic("upgrade", "head")
    assert migrations.current(engine, names=names) == migrations.head()
    assert "pgs_0006 (head)" in alembic("current")
    alembic("downgrade", "base")
    assert migrations.current(engine, names=names) is None
    assert installed_tables(engine, names) == set()


# ---------------------------------------------------------------- concurrent upgrades
WAITERS_SQL = sa.text(
    """
    SELECT count(*) FROM pg_locks
     WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND classid = ((hashtext(:key)::bigint >> 32) & 4294967295)::oid
       AND objid = (hashtext(:key)::bigint & 4294967295)::oid
    """
)

UPGRADE_SCRIPT = textwrap.dedent(
    """
    import sys
    import sqlalchemy as sa
    from pg_scheduler import migrations
    engine = sa.create_engine(sys.argv[1], poolclass=sa.pool.NullPool)
    migrations.upgrade(engine, table_prefix=sys.argv[2], schema=sys.argv[3])
    """
)


def test_concurrent_upgrades_of_a_fresh_installation_serialise_on_the_advisory_lock(
    engine: sa.Engine, schemas: Callable[[str], str], pg_scheduler_url: str
) -> None:
    names = Names("race_", schemas("tmr"))  # fresh: neither the schema nor the tables exist
    procs: list[subprocess.Popen[str]] = []
    script_args = [names.prefix, names.schema or ""]
    with engine.connect() as holder:
        # Hold the lock so that both processes are provably inside upgrade() at the same time.
        holder.execute(migrations.ADVISORY_LOCK_SQL, {"key": names.advisory_lock_key})
        try:
            for _ in range(2):
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", UPGRADE_SCRIPT, pg_scheduler_url, *script_args],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                )

            def both_waiting() -> bool:
                with engine.connect() as conn:
                    waiting = conn.scalar(WAITERS_SQL, {"key": names.advisory_lock_key})
                assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
                return waiting == 2

            wait_until(both_waiting, timeout=60, message="both upgrades waiting on the lock")
        finally:
            holder.rollback()  # releases the lock
        results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    with engine.connect() as conn:
        rows = conn.execute(sa.select(version_table(names).c.version_num)).scalars().all()
    assert rows == [migrations.head()]
    assert migrations.is_up_to_date(engine, names=names)


# ---------------------------------------------------------------- the installed wheel
@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO)],
        check=True,
        timeout=600,
    )
    (built,) = out.glob("sqlalchemy_pg_scheduler-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_ships_the_alembic_environment(wheel: Path) -> None:
    files = set(zipfile.ZipFile(wheel).namelist())
    for path in (
        "pg_scheduler/_alembic/env.py",
        "pg_scheduler/_alembic/script.py.mako",
        "pg_scheduler/_alembic/versions/pgs_0001_initial.py",
        "pg_scheduler/_alembic/versions/pgs_0002_lighter_run_history.py",
        "pg_scheduler/_alembic/versions/pgs_0003_no_name_index.py",
        "pg_scheduler/_alembic/versions/pgs_0004_runs_fillfactor.py",
        "pg_scheduler/_alembic/versions/pgs_0005_column_domains.py",
        "pg_scheduler/_alembic/versions/pgs_0006_lost_runs.py",
        "pg_scheduler/py.typed",
        "pg_scheduler/migrations.py",
    ):
        assert path in files, path
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    assert not [f for f in files if f.endswith("alembic.ini") or f.startswith("tests/")]


@pytest.mark.slow
def test_the_installed_wheel_upgrades_from_the_command_line(
    wheel: Path,
    tmp_path: Path,
    engine: sa.Engine,
    pg_scheduler_server: TestServer,
    cleanup: Callable[[Names], Names],
) -> None:
    # A truly fresh environment: nothing in it but what installing the wheel brings. This pip
    # fills it (from its cache where it can) so the venv needs no pip of its own, and skipping
    # bytecode compilation keeps the test fast.
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env = {k: v for k, v in env.items() if not k.startswith("PG_SCHEDULER_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    subprocess.run(
        [*pip, "install", "--quiet", "--no-compile", f"{wheel}[cli]", "psycopg[binary]"],
        check=True,
        env=env,
        timeout=600,
    )
    listed = run_in(tmp_path, env, str(python), "-c", "import sqlalchemy, alembic, click, rich")
    assert listed.returncode == 0, listed.stderr
    assert run_in(tmp_path, env, str(python), "-c", "import pytest").returncode != 0
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def run(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return run_in(outside, {**env, **extra_env}, *args)

    where = run(
        str(python),
        "-c",
        "import pathlib, pg_scheduler.migrations as m; print(pathlib.Path(m.__file__).parent);"
        " print(m.script_location())",
    )
    assert where.returncode == 0, where.stderr
    package_dir, location = (Path(line) for line in where.stdout.split())
    assert venv in package_dir.parents  # the installed copy, not the checkout
    assert location == package_dir / "_alembic"
    assert (location / "versions" / "pgs_0001_initial.py").is_file()

    url = pg_scheduler_server.url_for("psycopg")
    names = cleanup(Names(unique("w") + "_"))
    pg_scheduler = str(bin_dir / "pg-scheduler")
    version = run(pg_scheduler, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"pg-scheduler (sqlalchemy-pg-scheduler) {__version__}"

    # Pattern B from the wheel: the package form of version_locations finds our revisions.
    host = tmp_path / "host"
    (host / "migrations" / "versions").mkdir(parents=True)
    (host / "migrations" / "env.py").write_text("")
    (host / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\npath_separator = space\n"
        "version_locations = %(here)s/migrations/versions pg_scheduler:_alembic/versions\n"
    )
    heads = run(str(bin_dir / "alembic"), "-c", str(host / "alembic.ini"), "heads")
    assert heads.returncode == 0, heads.stderr
    assert f"{migrations.head()} (pg_scheduler) (head)" in heads.stdout, heads.stdout

    done = run(pg_scheduler, "db", "upgrade", "--url", url, "--table-prefix", names.prefix)
    assert done.returncode == 0, done.stdout + done.stderr
    assert migrations.current(engine, names=names) == migrations.head()

    shown = run(pg_scheduler, "db", "current", "--table-prefix", names.prefix,
                PG_SCHEDULER_DATABASE_URL=url)  # fmt: skip
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert migrations.head() in shown.stdout

    unreachable = run(pg_scheduler, "db", "upgrade", "--url",
                      "postgresql+psycopg://nobody@127.0.0.1:9/nowhere")  # fmt: skip
    assert unreachable.returncode != 0
    assert "Traceback" not in unreachable.stdout + unreachable.stderr
    assert len((unreachable.stdout + unreachable.stderr).strip().splitlines()) == 1
