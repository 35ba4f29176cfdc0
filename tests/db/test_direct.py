"""The hot statements sent straight to the driver's cursor (``pg_scheduler.db.fastpath``).

On psycopg 3 (sync and async) and psycopg2 the enqueue, the claim and the grouped completion
skip SQLAlchemy's execution machinery on the scheduler's own autocommit connections. These tests hold that this
changes nothing visible: the same values come back, errors are SQLAlchemy's, a dead connection is
invalidated, and an application watching its engine's SQL still sees every statement.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from pg_scheduler import Scheduler
from pg_scheduler.db import fastpath as direct
from pg_scheduler.db import queries
from pg_scheduler.db.connections import switch_to_autocommit
from pg_scheduler.db.records import OneTimeSpec, Outcome
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.models import Models
from pg_scheduler.naming import Names
from pg_scheduler.states import JobStatus, RunStatus
from pg_scheduler.testing import TestServer

NODE = "direct-test:1:0badcafe"
PARAMS = {"n": 1, "nested": {"list": [1, "two", None, True]}, "text": "50% off"}


def named_parameters(engine: sa.Engine) -> bool:
    return engine.dialect.paramstyle == "pyformat"


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SQL of every statement sent through ``direct.execute``."""
    sent: list[str] = []
    real = direct.execute

    def execute(
        conn: sa.Connection, statement: direct.DirectStatement, values: Any, **options: Any
    ) -> Any:
        sent.append(statement.sql)
        return real(conn, statement, values, **options)

    monkeypatch.setattr(direct, "execute", execute)
    return sent


@pytest.fixture
def autocommit_conn(engine: sa.Engine) -> Iterator[sa.Connection]:
    with engine.connect() as conn:
        switch_to_autocommit(conn)
        yield conn


def test_hot_statements_have_a_direct_form(engine: sa.Engine, models: Models) -> None:
    statements = {
        "enqueue": queries.with_notify(models, queries.insert_one_time(models)),
        "claim": queries.claim(models),
        "complete": queries.complete_one_time(models),
    }
    for name, statement in statements.items():
        form = direct.direct_form(statement, engine.dialect)
        if named_parameters(engine):
            assert form is not None, name
            assert "POSTCOMPILE" not in form.sql
        else:  # pg8000 takes positional parameters: always SQLAlchemy's path
            assert form is None, name


def test_statements_that_need_sqlalchemy_stay_with_it(engine: sa.Engine, models: Models) -> None:
    jobs = models.jobs
    expanding = sa.select(jobs.c.key).where(jobs.c.status.in_(["pending", "running"]))
    assert direct.direct_form(expanding, engine.dialect) is None


def test_claim_returns_what_sqlalchemy_returns(
    engine: sa.Engine, models: Models, autocommit_conn: sa.Connection, spy: list[str]
) -> None:
    direct_repo = JobRepository(autocommit_conn, models, direct=True)
    key = direct_repo.insert_one_time(OneTimeSpec("direct.job", PARAMS, 2, None))
    claimed = direct_repo.claim(NODE, ["direct.job"], 5)
    assert [c.key for c in claimed] == [key]
    # The same row read through SQLAlchemy's ORM-free Core path, after the claim.
    with engine.connect() as conn:
        record = JobRepository(conn, models).get(key)
    assert record is not None
    assert claimed[0].job == record
    assert claimed[0].job.params == PARAMS
    assert isinstance(claimed[0].lease_id, type(record.lease_id))
    assert isinstance(claimed[0].claimed_at, dt.datetime)
    assert claimed[0].claimed_at.tzinfo is not None

    [result] = direct_repo.finish_many([(claimed[0], Outcome(RunStatus.COMPLETED, 7))])
    assert result.applied and result.status is JobStatus.COMPLETED
    with engine.connect() as conn:
        done = JobRepository(conn, models).get(key)
    assert done is not None and done.status is JobStatus.COMPLETED
    assert done.execution_time_ms == 7
    # Enqueue, claim and completion went straight to the cursor where the driver allows it.
    assert len(spy) == (3 if named_parameters(engine) else 0)


def test_errors_are_sqlalchemy_errors(
    models: Models, autocommit_conn: sa.Connection, spy: list[str]
) -> None:
    repo = JobRepository(autocommit_conn, models, direct=True)
    key = repo.insert_one_time(OneTimeSpec("direct.job", None, 0, None))
    with pytest.raises(sa.exc.IntegrityError):
        repo.insert_one_time(OneTimeSpec("direct.job", None, 0, None), key=key)
    # The connection is still good (autocommit: nothing was left open).
    assert repo.insert_one_time(OneTimeSpec("direct.job", None, 0, None)) != key
    assert len(spy) == (3 if named_parameters(autocommit_conn.engine) else 0)


def test_a_dead_connection_is_invalidated(
    models: Models, owner_engine: sa.Engine, autocommit_conn: sa.Connection
) -> None:
    if not named_parameters(autocommit_conn.engine):
        pytest.skip("pg8000 takes SQLAlchemy's path, whose disconnect handling is its own")
    repo = JobRepository(autocommit_conn, models, direct=True)
    repo.insert_one_time(OneTimeSpec("direct.job", None, 0, None))  # warm: the form is built
    pid = autocommit_conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    with owner_engine.connect() as admin:
        admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    with pytest.raises(sa.exc.DBAPIError) as raised:
        repo.insert_one_time(OneTimeSpec("direct.job", None, 0, None))
    assert raised.value.connection_invalidated
    assert autocommit_conn.invalidated


def backend_pid(dbapi_connection: Any) -> int:
    info = getattr(dbapi_connection, "info", None)
    if info is not None and hasattr(info, "backend_pid"):  # psycopg 3
        return int(info.backend_pid)
    return int(dbapi_connection.get_backend_pid())  # psycopg2


def test_one_cursor_per_connection_and_a_new_one_after_a_restart(
    make_scheduler: Any,
    engine: sa.Engine,
    owner_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each DBAPI connection opens its cursor once; a connection the server ended is replaced,
    and so is its cursor: the enqueue after the restart still lands, exactly once."""
    if not named_parameters(engine):
        pytest.skip("pg8000 takes SQLAlchemy's path")
    used: list[tuple[Any, Any]] = []
    real = direct._cursor

    def record(info: dict[Any, Any], dbapi_connection: Any) -> Any:
        cursor = real(info, dbapi_connection)
        used.append((dbapi_connection, cursor))
        return cursor

    monkeypatch.setattr(direct, "_cursor", record)
    scheduler: Scheduler = make_scheduler()
    scheduler.one_time("direct.job")(lambda ctx: None)
    keys = [scheduler.enqueue("direct.job", {"i": i}) for i in range(3)]
    assert len(used) == 3
    cursors_of: dict[int, set[int]] = {}
    for dbapi_connection, cursor in used:
        cursors_of.setdefault(id(dbapi_connection), set()).add(id(cursor))
    assert all(len(cursors) == 1 for cursors in cursors_of.values())

    ended, ended_cursor = used[-1]
    with owner_engine.connect() as admin:
        admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend_pid(ended)})
    keys.append(scheduler.enqueue("direct.job", {"i": 3}))
    dbapi_connection, cursor = used[-1]
    assert dbapi_connection is not ended and cursor is not ended_cursor
    assert len(set(keys)) == 4 and all(scheduler.get_job(key) is not None for key in keys)


def test_an_application_watching_its_sql_sees_every_statement(
    make_scheduler: Any, engine: sa.Engine, spy: list[str]
) -> None:
    seen: list[str] = []

    def watch(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", watch)
    try:
        scheduler: Scheduler = make_scheduler()
        scheduler.one_time("direct.job")(lambda ctx: None)
        scheduler.enqueue("direct.job", PARAMS)
    finally:
        sa.event.remove(engine, "before_cursor_execute", watch)
    assert any("INSERT INTO" in statement for statement in seen)
    assert spy == []


def test_sql_logging_sees_every_statement(
    make_scheduler: Any, spy: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    # SQL logging switched on through the logging module rather than ``echo=True``.
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine.Engine")
    scheduler: Scheduler = make_scheduler()
    scheduler.one_time("direct.job")(lambda ctx: None)
    scheduler.enqueue("direct.job", PARAMS)
    assert any("INSERT INTO" in record.getMessage() for record in caplog.records)
    assert spy == []


@pytest.mark.parametrize("driver", ["psycopg_async", "asyncpg"])
def test_async_scheduler_goes_direct_on_psycopg_async(
    driver: str, pg_scheduler_server: TestServer, names: Names, spy: list[str]
) -> None:
    """AsyncScheduler's autocommit statements run inside ``run_sync``: on psycopg async they go
    straight to the (adapted) cursor too; asyncpg's positional parameters keep SQLAlchemy's path."""
    from tests.support.runtimes import node

    async def main() -> None:
        settings = {"listen": False, "run_immediately": False}
        async with node(pg_scheduler_server.url_for(driver), names, **settings) as s:
            ran: list[Any] = []

            @s.one_time("direct.async")
            async def job(ctx: Any) -> None:
                ran.append(ctx.params)

            key = await s.enqueue("direct.async", PARAMS)
            assert len(await s.run_pending()) == 1
            record = await s.get_job(key)
        assert ran == [PARAMS]
        assert record is not None and record.status is JobStatus.COMPLETED

    asyncio.run(main())
    if driver == "asyncpg":
        assert spy == []
    else:  # the enqueue, the claim (run_pending may claim again and find nothing), the completion
        assert any("INSERT INTO" in sql and "pg_notify" in sql for sql in spy)
        assert any("SKIP LOCKED" in sql for sql in spy)
        assert any("string_agg" in sql for sql in spy)
