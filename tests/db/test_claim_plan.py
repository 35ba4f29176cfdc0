"""The claim's plan does not depend on the planner's statistics or on the size of the backlog.

A burst of jobs into a table that was empty (never analyzed, or analyzed before the burst) used to
make every claim read the whole due backlog: the planner, estimating one due row, chose a bitmap
scan of every due row and a sort, then took the limit (5.5 ms per claim with 10,000 due rows,
growing with the backlog). The claim must walk the due index in order and stop at its limit, with
the table never analyzed and after ANALYZE alike. Checked on row counts and buffers, not timings:
the plan's own figures (``EXPLAIN (ANALYZE, BUFFERS)``), and what ``claim`` itself read from the
due index (the server's per-index counters).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from pg_scheduler.db.connections import switch_to_autocommit
from pg_scheduler.db.queries import PLANNER_SETTINGS_SQL
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.models import Models
from pg_scheduler.naming import Names
from pg_scheduler.testing import TestServer

NODE = "plan-test:1:0badcafe"
NAME = "plan_job"
BACKLOG = 20_000
LIMIT = 10


def fill(owner: sa.Engine, names: Names, *, analyzed: bool) -> None:
    """``BACKLOG`` due one-time jobs in one INSERT ... SELECT, with autovacuum off on the table
    (so that it cannot analyze it behind the test's back), then ANALYZE or not."""
    table = names.jobs_table
    with owner.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        conn.exec_driver_sql(
            f"INSERT INTO {table} (key, name, job_type, status, next_run, scheduled_at)"
            f" SELECT 'due#' || lpad(i::text, 9, '0'), '{NAME}', 'one_time', 'pending',"
            " now() - interval '1 minute', now() - interval '1 minute'"
            f" FROM generate_series(1, {BACKLOG}) AS i"
        )
    with owner.connect() as conn:
        switch_to_autocommit(conn)
        if analyzed:
            conn.exec_driver_sql(f"ANALYZE {table}")
        reltuples = conn.exec_driver_sql(
            f"SELECT reltuples FROM pg_class WHERE oid = '{table}'::regclass"
        ).scalar_one()
    if analyzed:
        assert reltuples == BACKLOG
    else:
        assert reltuples == -1  # never analyzed (PostgreSQL 14+)


@pytest.fixture(params=["never_analyzed", "analyzed"])
def backlog(request: pytest.FixtureRequest, owner_engine: sa.Engine, names: Names) -> str:
    fill(owner_engine, names, analyzed=request.param == "analyzed")
    return str(request.param)


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from plan_nodes(child)


def test_the_claims_plan_walks_the_due_index_and_stops_at_the_limit(
    engine: sa.Engine, names: Names, models: Models, backlog: str
) -> None:
    with Session(engine) as session, session.begin():
        repo = JobRepository(session, models)
        stmt = repo.claim_statement(NODE, [NAME, "other_job"], LIMIT)
        compiled = stmt.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
        session.execute(sa.text(PLANNER_SETTINGS_SQL))  # what ``claim`` runs first
        explained = session.execute(
            sa.text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {compiled}")
        ).scalar_one()
        session.rollback()
    if isinstance(explained, str):  # drivers that do not decode json
        import json

        explained = json.loads(explained)
    root = explained[0]["Plan"]
    nodes = list(plan_nodes(root))
    due_ix = names.job("due_ix")
    reads = [n for n in nodes if n.get("Relation Name") == names.jobs_table]
    walk = [n for n in reads if n.get("Index Name") == due_ix]
    summary = [
        (n["Node Type"], n.get("Index Name"), n["Actual Rows"], n.get("Shared Hit Blocks"))
        for n in nodes
    ]
    assert [n["Node Type"] for n in walk] == ["Index Scan"], summary
    assert walk[0]["Actual Rows"] == LIMIT, summary
    # Nothing in the plan reads or sorts the backlog: no node handles more rows than the limit
    # (the pkey look-ups are one row per loop), and the statement touches a few dozen buffers
    # (the 20,000 due rows fill about 400 pages).
    assert max(n["Actual Rows"] for n in nodes) <= LIMIT, summary
    assert not [n for n in nodes if n["Node Type"].startswith("Bitmap")], summary
    assert root["Shared Hit Blocks"] + root.get("Shared Read Blocks", 0) < 200, summary


def due_index_reads(owner: sa.Engine, names: Names) -> int:
    with owner.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        value = conn.exec_driver_sql(
            "SELECT idx_tup_read FROM pg_stat_user_indexes"
            f" WHERE indexrelid = '{names.job('due_ix')}'::regclass"
        ).scalar_one()
        conn.rollback()
    return int(value)


def wait_for_reads(owner: sa.Engine, names: Names, before: int) -> int:
    """The due index's tuple reads since ``before``, once the claiming backend has reported them
    (a backend flushes its counters when it exits; the claim's connection is closed by then)."""
    deadline = time.monotonic() + 15.0
    while True:
        read = due_index_reads(owner, names) - before
        if read > 0 or time.monotonic() > deadline:
            return read
        time.sleep(0.05)


@pytest.mark.parametrize("path", ["autocommit_direct", "autocommit_sqlalchemy", "transaction"])
def test_claim_reads_the_due_index_only_up_to_its_limit(
    engine: sa.Engine,
    owner_engine: sa.Engine,
    names: Names,
    models: Models,
    backlog: str,
    path: str,
) -> None:
    """What ``claim`` itself reads from the due index, on each way it is run: the scheduler's
    autocommit connections straight to the driver's cursor (psycopg, psycopg2) or through
    SQLAlchemy (pg8000, or an application watching its SQL), and inside a caller's transaction."""
    before = due_index_reads(owner_engine, names)
    claimer = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
    if path == "autocommit_sqlalchemy":
        # An application that watches its SQL turns the direct path off (``direct.has_listeners``).
        sa.event.listen(claimer, "before_cursor_execute", lambda *args: None)
    try:
        with claimer.connect() as conn:
            if path == "transaction":
                with conn.begin():
                    claimed = JobRepository(conn, models).claim(NODE, [NAME], LIMIT)
            else:
                switch_to_autocommit(conn)
                claimed = JobRepository(conn, models, direct=True).claim(NODE, [NAME], LIMIT)
                # The settings were the claim's own: nothing is left on the connection.
                assert conn.exec_driver_sql("SHOW enable_bitmapscan").scalar_one() == "on"
    finally:
        claimer.dispose()
    assert len(claimed) == LIMIT
    read = wait_for_reads(owner_engine, names, before)
    # An in-order walk reads the claimed rows' entries (and perhaps a few more); the bitmap plan
    # read all 20,000.
    assert 0 < read <= 2 * LIMIT, read


@pytest.mark.parametrize("driver", ["psycopg_async", "asyncpg"])
def test_claim_reads_the_due_index_only_up_to_its_limit_on_async_drivers(
    driver: str,
    pg_scheduler_server: TestServer,
    owner_engine: sa.Engine,
    names: Names,
    models: Models,
    backlog: str,
) -> None:
    """The same through ``AsyncScheduler``'s way in (``run_sync`` on an autocommit connection):
    psycopg async sends the settings and the claim in one pipeline, asyncpg in BEGIN ... COMMIT."""
    from sqlalchemy.ext.asyncio import create_async_engine

    before = due_index_reads(owner_engine, names)

    async def claim() -> list[Any]:
        claimer = create_async_engine(
            pg_scheduler_server.url_for(driver), poolclass=sa.pool.NullPool
        )
        try:
            async with claimer.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                claimed = await conn.run_sync(
                    lambda sync: JobRepository(sync, models, direct=True).claim(NODE, [NAME], LIMIT)
                )
                setting = await conn.exec_driver_sql("SHOW enable_bitmapscan")
                assert setting.scalar_one() == "on"
                return claimed
        finally:
            await claimer.dispose()

    claimed = asyncio.run(claim())
    assert len(claimed) == LIMIT
    read = wait_for_reads(owner_engine, names, before)
    assert 0 < read <= 2 * LIMIT, read


def index_reads(owner: sa.Engine, index: str) -> int:
    with owner.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        value = conn.exec_driver_sql(
            f"SELECT idx_tup_read FROM pg_stat_user_indexes WHERE indexrelid = '{index}'::regclass"
        ).scalar_one()
        conn.rollback()
    return int(value)


@pytest.mark.parametrize("analyzed", [False, True], ids=["never_analyzed", "analyzed"])
def test_cleanup_reads_the_finished_index_only_up_to_its_limit(
    engine: sa.Engine, owner_engine: sa.Engine, names: Names, models: Models, analyzed: bool
) -> None:
    """The retention cleanup deletes at most ``limit`` expired jobs per call; it must not read
    every expired one to do so (on a table never analyzed it read all of them)."""
    import datetime as dt

    table = names.jobs_table
    with owner_engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        conn.exec_driver_sql(
            f"INSERT INTO {table} (key, name, job_type, status, attempt, scheduled_at, finished_at)"
            f" SELECT 'done#' || i, '{NAME}', 'one_time', 'completed', 1,"
            " now() - interval '3 days', now() - interval '2 days'"
            f" FROM generate_series(1, {BACKLOG}) AS i"
        )
        if analyzed:
            conn.exec_driver_sql(f"ANALYZE {table}")
    finished_ix = names.job("finished_ix")
    before = index_reads(owner_engine, finished_ix)
    cleaner = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
    try:
        with cleaner.begin() as conn:
            deleted = JobRepository(conn, models).cleanup_finished(
                dt.timedelta(days=1), limit=LIMIT
            )
    finally:
        cleaner.dispose()
    assert deleted == LIMIT
    deadline = time.monotonic() + 15.0
    while (read := index_reads(owner_engine, finished_ix) - before) == 0:
        assert time.monotonic() < deadline, "the cleanup's index reads were never reported"
        time.sleep(0.05)
    assert read <= 2 * LIMIT, read


@pytest.mark.parametrize("path", ["autocommit_direct", "autocommit_sqlalchemy"])
def test_a_failing_claim_leaves_no_transaction_and_no_settings(
    engine: sa.Engine, models: Models, path: str
) -> None:
    """When the claim fails (here: cancelled by its lock timeout), the transaction that
    carried the planner settings ends with it: the connection is idle, with its own settings,
    and the next claim works."""
    claimer = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
    if path == "autocommit_sqlalchemy":
        sa.event.listen(claimer, "before_cursor_execute", lambda *args: None)
    try:
        with claimer.connect() as conn:
            switch_to_autocommit(conn)
            repo = JobRepository(conn, models, direct=True)
            # Lock the job table so the claim waits, and let the lock timeout end it.
            conn.exec_driver_sql("SET lock_timeout = '50ms'")
            with engine.connect() as locker, locker.begin():
                locker.exec_driver_sql(f"LOCK TABLE {models.jobs.fullname} IN EXCLUSIVE MODE")
                with pytest.raises(sa.exc.DBAPIError):
                    repo.claim(NODE, [NAME], LIMIT)
            assert conn.exec_driver_sql("SHOW enable_bitmapscan").scalar_one() == "on"
            assert conn.exec_driver_sql("SELECT now() = statement_timestamp()").scalar_one()
            assert repo.claim(NODE, [NAME], LIMIT) == []
    finally:
        claimer.dispose()


class RecordingCursor:
    """A DBAPI cursor that records the SQL sent through it."""

    def __init__(self, cursor: Any, sent: list[str]) -> None:
        self._cursor = cursor
        self._sent = sent

    def execute(self, sql: str, *args: Any) -> Any:
        self._sent.append(sql)
        return self._cursor.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


def test_the_settings_ride_with_the_claim_in_one_round_trip(
    engine: sa.Engine, models: Models
) -> None:
    """On psycopg (one pipeline) and psycopg2 (one query string) the settings and the claim
    need no BEGIN and COMMIT of their own: nothing else is sent on the connection."""
    if engine.dialect.driver not in ("psycopg", "psycopg2"):
        pytest.skip("SQLAlchemy's path: BEGIN ... COMMIT around the claim")
    from pg_scheduler.db import fastpath as direct

    sent: list[str] = []
    with engine.connect() as conn:
        switch_to_autocommit(conn)
        repo = JobRepository(conn, models, direct=True)
        assert repo.claim(NODE, [NAME], LIMIT) == []  # opens the kept cursors
        info = conn.connection.info
        for key in (direct._CURSOR_KEY, direct._SETTINGS_CURSOR_KEY):
            if key in info:
                info[key] = RecordingCursor(info[key], sent)
        assert repo.claim(NODE, [NAME], LIMIT) == []
    assert not [sql for sql in sent if sql.strip().upper() in ("BEGIN", "COMMIT")], sent
    assert any(PLANNER_SETTINGS_SQL in sql for sql in sent), sent
    assert any("SKIP LOCKED" in sql for sql in sent), sent


def test_a_failing_claim_on_psycopg_async_leaves_no_transaction(
    pg_scheduler_server: TestServer, engine: sa.Engine, models: Models
) -> None:
    """The same on psycopg async's pipeline (``AsyncScheduler``'s way in)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    async def main() -> None:
        claimer = create_async_engine(
            pg_scheduler_server.url_for("psycopg_async"), poolclass=sa.pool.NullPool
        )
        try:
            async with claimer.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.exec_driver_sql("SET lock_timeout = '50ms'")

                def claim(sync: sa.Connection) -> list[Any]:
                    return JobRepository(sync, models, direct=True).claim(NODE, [NAME], LIMIT)

                with engine.connect() as locker, locker.begin():
                    locker.exec_driver_sql(f"LOCK TABLE {models.jobs.fullname} IN EXCLUSIVE MODE")
                    with pytest.raises(sa.exc.DBAPIError):
                        await conn.run_sync(claim)
                setting = await conn.exec_driver_sql("SHOW enable_bitmapscan")
                assert setting.scalar_one() == "on"
                idle = await conn.exec_driver_sql("SELECT now() = statement_timestamp()")
                assert idle.scalar_one()
                assert await conn.run_sync(claim) == []
        finally:
            await claimer.dispose()

    asyncio.run(main())
