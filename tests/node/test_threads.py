"""What only the threaded ``Scheduler`` has (the contract both runtimes share is
``test_contract.py``): the application's sync sessions, its pooled connections dying under the
scheduler's calls, and the node's heartbeat thread. Real PostgreSQL, real threads, no mocks."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import sessionmaker

from pg_scheduler import (
    JobConfig,
    JobContext,
    JobStatus,
    Scheduler,
    SchedulerConfig,
    errors,
)
from pg_scheduler.db.records import OneTimeSpec
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.naming import Names
from pg_scheduler.runtime.threads import drive
from pg_scheduler.testing import wait_until
from tests.support.jobs import Recording

INTEGERS = postgresql.ARRAY(sa.Integer)


def status(s: Scheduler, key: str) -> JobStatus | None:
    record = s.get_job(key)
    return record.status if record else None


def test_enqueue_joins_the_callers_transaction(make_scheduler: Any, engine: sa.Engine) -> None:
    s = make_scheduler()
    job = Recording(JobConfig.one_time("tx"))
    s.register(job)
    factory = sessionmaker(engine)
    with factory() as session:
        rolled_back = s.enqueue("tx", {"n": 1}, session=session)
        session.rollback()
    with factory() as session, session.begin():
        committed = s.enqueue("tx", {"n": 2}, session=session)
        # Not visible to anyone else until the commit.
        assert s.get_job(committed) is None
    with s:
        wait_until(lambda: status(s, committed) is JobStatus.COMPLETED)
    assert s.get_job(rolled_back) is None
    assert [c.params for c in job.calls] == [{"n": 2}]


def kill_the_pool(engine: sa.Engine, admin: sa.Connection, *, wait: bool = False) -> None:
    """Terminate the backends of all four connections of ``engine``'s pool (they stay pooled,
    dead). ``wait``: until they are gone, so that every pooled connection's ping fails; without
    it, a ping may meet a backend still exiting (what pg8000 sees as a reset)."""
    held = [engine.connect() for _ in range(4)]
    pids = sa.bindparam(
        "pids",
        [conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() for conn in held],
        type_=INTEGERS,
    )
    for conn in held:
        conn.rollback()
        conn.close()
    admin.execute(sa.text("SELECT pg_terminate_backend(p) FROM unnest(:pids) p").bindparams(pids))
    if wait:
        alive = sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)")
        wait_until(lambda: not admin.execute(alive.bindparams(pids)).scalar_one(), timeout=10)


def test_calls_get_past_a_pool_of_connections_the_server_closed(
    pg_scheduler_url: str, names: Names
) -> None:
    # After a restart every idle pooled connection is dead. The pool's pre-ping replaces each one
    # it finds dead, but pg8000 lets a reset socket's ConnectionResetError out of the ping
    # unwrapped (the pool drops only that connection and passes the error on): the scheduler's
    # calls must still succeed, whatever the driver. A pool of 4 holds nothing but the dead.
    engine = sa.create_engine(pg_scheduler_url, pool_size=4, max_overflow=0, pool_pre_ping=True)
    admin = sa.create_engine(
        pg_scheduler_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT"
    ).connect()
    s = Scheduler(SchedulerConfig(engine=engine, table_prefix=names.prefix))
    s.one_time("past_dead")(lambda ctx: None)
    try:
        for _ in range(4):
            kill_the_pool(engine, admin)
            key = s.enqueue("past_dead")
            kill_the_pool(engine, admin)
            assert s.get_job(key) is not None
    finally:
        s.shutdown()
        admin.close()
        engine.dispose()


def test_calls_get_past_a_pre_ping_that_fails_with_a_non_disconnect_error(
    pg_scheduler_url: str, names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    # When the server closes the socket during psycopg's pre-ping, SQLAlchemy's ping can fail
    # putting autocommit back ("can't change 'autocommit' now"), a ProgrammingError the dialect
    # does not read as a disconnect: the pool discards that connection and passes the error on
    # (seen once in CI on PostgreSQL 15). Here every dead connection's ping fails that way, so
    # each checkout of the dead pool does; the scheduler's calls must still succeed.
    # In the race the connection does not yet read as closed, so the dialect's is_disconnect
    # says no; here the ping's error is marked and is_disconnect says no to it.
    engine = sa.create_engine(pg_scheduler_url, pool_size=4, max_overflow=0, pool_pre_ping=True)
    dialect: Any = engine.dialect
    real_ping, real_is_disconnect = dialect.do_ping, dialect.is_disconnect
    raced: list[BaseException] = []

    def ping_as_in_the_race(dbapi_connection: Any) -> bool:
        try:
            return bool(real_ping(dbapi_connection))
        except dialect.loaded_dbapi.Error as exc:
            if not real_is_disconnect(exc, dbapi_connection, None):
                raise
            raced.append(
                dialect.loaded_dbapi.ProgrammingError(
                    "can't change 'autocommit' now: connection in transaction status ACTIVE"
                )
            )
            raise raced[-1] from exc

    def is_disconnect(exc: Any, connection: Any, cursor: Any) -> bool:
        return not any(exc is e for e in raced) and bool(
            real_is_disconnect(exc, connection, cursor)
        )

    monkeypatch.setattr(dialect, "do_ping", ping_as_in_the_race)
    monkeypatch.setattr(dialect, "is_disconnect", is_disconnect)
    admin = sa.create_engine(
        pg_scheduler_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT"
    ).connect()
    s = Scheduler(SchedulerConfig(engine=engine, table_prefix=names.prefix))
    s.one_time("ping_race")(lambda ctx: None)

    try:
        for _ in range(3):
            kill_the_pool(engine, admin, wait=True)
            key = s.enqueue("ping_race")
            kill_the_pool(engine, admin, wait=True)
            assert s.get_job(key) is not None
        assert raced, "no ping failed: the test did not reach the case it is about"
    finally:
        s.shutdown()
        admin.close()
        engine.dispose()


def test_a_connection_closed_under_a_call_reads_as_unavailable(
    pg_scheduler_url: str, names: Names
) -> None:
    # Without pool_pre_ping a pooled connection is handed out unchecked. When the server has
    # closed it, a read fails once with our error, whatever the driver (pg8000 may raise a bare
    # ConnectionResetError from its first read), and the next call gets a new connection.
    engine = sa.create_engine(pg_scheduler_url, pool_size=1, max_overflow=0)
    admin = sa.create_engine(
        pg_scheduler_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT"
    ).connect()
    s = Scheduler(SchedulerConfig(engine=engine, table_prefix=names.prefix))
    s.one_time("closed_under")(lambda ctx: None)

    def close_the_pooled_connection() -> None:
        with engine.connect() as conn:
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            conn.rollback()
        admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    try:
        key = s.enqueue("closed_under")
        for _ in range(4):
            close_the_pooled_connection()
            with pytest.raises(errors.DatabaseUnavailableError, match="database unavailable"):
                s.get_job(key)
            assert s.get_job(key) is not None
            close_the_pooled_connection()
            # An enqueue is sent once more on a new connection (the dead one is not pooled again).
            assert s.get_job(s.enqueue("closed_under")) is not None
    finally:
        s.shutdown()
        admin.close()
        engine.dispose()


@pytest.mark.parametrize(("pool_size", "kept"), [(1, 0), (4, 0), (5, 1)])
def test_a_small_pool_keeps_no_connection_for_enqueues(
    pg_scheduler_url: str, names: Names, pool_size: int, kept: int
) -> None:
    # A kept connection is one of the application's for good: not from a pool that small.
    small = sa.create_engine(pg_scheduler_url, pool_size=pool_size, max_overflow=0)
    try:
        s = Scheduler(SchedulerConfig(engine=small, table_prefix=names.prefix))
        s.one_time("counted")(lambda ctx: None)
        s.enqueue("counted")
        expected = kept if small.dialect.driver in ("psycopg", "psycopg2") else 0
        assert small.pool.checkedout() == expected  # type: ignore[attr-defined]
        s.shutdown()  # a producer that never started gives it back too
        assert small.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        small.dispose()


def test_an_enqueue_sent_twice_is_written_once(make_scheduler: Any) -> None:
    # The connection dies after the insert committed, before the reply: the enqueue is sent
    # again with the same key, meets its own row, and reports success.
    s = make_scheduler()
    s.register(Recording(JobConfig.one_time("twice")))
    sent: list[str] = []

    def insert_then_lose_the_reply(repo: JobRepository) -> list[str]:
        keys = [repo.insert_one_time(OneTimeSpec("twice"), key="twice#fixed")]
        sent.append(keys[0])
        if len(sent) == 1:
            raise errors.DatabaseUnavailableError("server closed the connection unexpectedly")
        return keys

    assert drive(s.node._insert(insert_then_lose_the_reply, ["twice#fixed"])) == ["twice#fixed"]
    assert len(sent) == 1, "the second send met the first one's row"
    assert [j.key for j in s.list_jobs(name="twice")] == ["twice#fixed"]


def test_a_node_hung_inside_its_heartbeat_hands_its_job_back(
    make_scheduler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A node paused or hung between two statements of its heartbeat transaction keeps its jobs'
    # rows locked until that transaction ends (seen in CI: a node stopped with SIGSTOP at that
    # moment). The server must end the transaction, so that another node takes the job back
    # within the promised bound, not when (or if) the hung node wakes up.
    import pg_scheduler.node.heartbeat as heartbeat_module

    first, second = make_scheduler(), make_scheduler()
    hung, wake = threading.Event(), threading.Event()
    real_renew = heartbeat_module.renew

    def renew(repo: Any, node_id: str, leases: list[Any], *args: Any) -> Any:
        if node_id == first.node_id and leases:
            repo.heartbeat(node_id, leases)  # the job's row is now locked until COMMIT
            hung.set()
            wake.wait(30)
        return real_renew(repo, node_id, leases, *args)

    monkeypatch.setattr(heartbeat_module, "renew", renew)
    attempts: list[int] = []

    def sticky(ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        if len(attempts) == 1:
            wake.wait(30)  # runs on the hung node until the end of the test

    first.one_time("sticky")(sticky)
    second.one_time("sticky")(sticky)
    try:
        with first:
            key = first.enqueue("sticky")  # a lost run runs again, whatever its retries
            wait_until(hung.is_set)
            with second:
                # 1.5 s without a heartbeat, then a maintenance pass (0.3 s), then the rerun (on
                # either node: the first one's poller is not hung).
                wait_until(lambda: status(second, key) is JobStatus.COMPLETED, timeout=20)
            assert attempts == [1, 1]
            wake.set()
    finally:
        wake.set()
