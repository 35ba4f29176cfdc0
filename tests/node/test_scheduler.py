"""The scheduler in one process: real PostgreSQL, real threads, no mocks."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, sessionmaker

from pg_scheduler import (
    Job,
    JobConfig,
    JobContext,
    JobStatus,
    RunStatus,
    Scheduler,
    SchedulerConfig,
    errors,
)
from pg_scheduler.db.repository import JobRepository, OneTimeSpec
from pg_scheduler.naming import Names
from pg_scheduler.testing import wait_until

INTEGERS = postgresql.ARRAY(sa.Integer)


class Recording(Job):
    """Records each run's context; optionally fails, sleeps or waits for a gate."""

    def __init__(self, config: JobConfig, *, fail: bool = False, seconds: float = 0.0) -> None:
        super().__init__(config)
        self.calls: list[JobContext] = []
        self.fail = fail
        self.seconds = seconds
        self.lock = threading.Lock()

    def run(self, ctx: JobContext) -> None:
        with self.lock:
            self.calls.append(ctx)
        if self.seconds:
            time.sleep(self.seconds)
        if self.fail:
            raise ValueError(f"boom on attempt {ctx.attempt}")


def status(s: Scheduler, key: str) -> JobStatus | None:
    record = s.get_job(key)
    return record.status if record else None


def test_one_time_job_runs_once_with_its_params(make_scheduler: Any) -> None:
    s = make_scheduler()
    job = Recording(JobConfig.one_time("email", {"to": "a@b.c", "n": [1, 2.5, None]}))
    with s:
        key = s.schedule_job(job)
        wait_until(lambda: status(s, key) is JobStatus.COMPLETED, message="job completed")
    assert len(job.calls) == 1
    ctx = job.calls[0]
    assert ctx.params == {"to": "a@b.c", "n": [1, 2.5, None]}
    assert (ctx.job_name, ctx.job_key, ctx.attempt, ctx.node_id) == ("email", key, 1, s.node_id)
    runs = s.list_runs(key)
    assert [r.status for r in runs] == [RunStatus.COMPLETED]


def test_retries_give_n_plus_one_attempts_with_identical_params(make_scheduler: Any) -> None:
    s = make_scheduler()
    job = Recording(JobConfig.one_time("flaky"), fail=True)
    s.register(job)
    with s:
        key = s.enqueue("flaky", {"payload": {"deep": ["x"]}}, retries=2)
        wait_until(lambda: status(s, key) is JobStatus.FAILED, message="job failed")
    assert [c.attempt for c in job.calls] == [1, 2, 3]
    assert all(c.params == {"payload": {"deep": ["x"]}} for c in job.calls)
    record = s.get_job(key)
    assert record is not None
    assert record.last_error is not None and "ValueError: boom on attempt 3" in record.last_error
    assert record.consecutive_failures == 3 and record.finished_at is not None
    assert [r.status for r in s.list_runs(key)] == [RunStatus.FAILED] * 3


def test_max_concurrent_jobs_is_a_true_cap(make_scheduler: Any) -> None:
    s = make_scheduler(max_concurrent_jobs=2)
    active = 0
    peak = 0
    lock = threading.Lock()

    def slow(ctx: JobContext) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.3)
        with lock:
            active -= 1

    s.one_time("slow")(slow)
    keys = s.enqueue_many("slow", [{"i": i} for i in range(6)])
    with s:
        wait_until(
            lambda: all(status(s, k) is JobStatus.COMPLETED for k in keys),
            timeout=20,
            message="all six done",
        )
    assert peak == 2


def test_one_time_keys_sort_in_enqueue_order(
    make_scheduler: Any, engine: sa.Engine, names: Names
) -> None:
    """Keys are UUIDv7: the database's own key order (its primary-key index) is enqueue order."""
    s = make_scheduler()
    s.one_time("ordered")(lambda ctx: None)
    keys = [s.enqueue("ordered")]
    keys += s.enqueue_many("ordered", [{"i": i} for i in range(500)])
    keys.append(s.enqueue("ordered", {"last": True}))
    assert {uuid.UUID(key.partition("#")[2]).version for key in keys} == {7}
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text(f"SELECT key FROM {names.jobs_table} WHERE name = 'ordered' ORDER BY key")
        ).scalars()
        assert list(stored) == keys


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


def test_shutdown_records_finished_outcomes_and_hands_back_the_rest(
    make_scheduler: Any, engine: sa.Engine, names: Names
) -> None:
    s = make_scheduler(shutdown_timeout=dt.timedelta(seconds=1))
    started = threading.Barrier(3)

    def quick(ctx: JobContext) -> None:
        started.wait(5)
        time.sleep(0.2)  # finishes within the shutdown timeout, ignoring cancellation

    def stubborn(ctx: JobContext) -> None:
        started.wait(5)
        time.sleep(4)  # ignores cancellation, outlives the shutdown timeout

    s.one_time("quick")(quick)
    s.one_time("stubborn")(stubborn)
    quick_key = s.enqueue("quick")
    stubborn_key = s.enqueue("stubborn", retries=3)
    s.start()
    started.wait(10)
    t0 = time.monotonic()
    s.shutdown()
    assert time.monotonic() - t0 < 3
    assert status(s, quick_key) is JobStatus.COMPLETED
    back = s.get_job(stubborn_key)
    # Handed back: no attempt used up (the next run is attempt 1 again).
    assert back is not None and back.status is JobStatus.PENDING and back.attempt == 0
    assert back.lease_id is None
    with engine.connect() as conn:
        running = conn.execute(
            sa.text(
                f"SELECT count(*) FROM {names.jobs_table} WHERE node_id = :n AND status = 'running'"
            ),
            {"n": s.node_id},
        ).scalar()
    assert running == 0
    assert [r.status for r in s.list_runs(stubborn_key)] == [RunStatus.RELEASED]


def test_a_job_that_stops_on_shutdown_is_handed_back_not_failed(make_scheduler: Any) -> None:
    s = make_scheduler()
    entered = threading.Event()

    def polite(ctx: JobContext) -> None:
        entered.set()
        ctx.cancelled.wait(10)
        ctx.raise_if_cancelled()

    s.one_time("polite")(polite)
    key = s.enqueue("polite")
    s.start()
    assert entered.wait(10)
    s.shutdown()
    record = s.get_job(key)
    assert record is not None and record.status is JobStatus.PENDING
    assert record.last_error is None  # handing back is not a failure


def test_start_twice_raises_and_shutdown_twice_is_harmless(make_scheduler: Any) -> None:
    s = make_scheduler()
    s.start()
    with pytest.raises(errors.SchedulerStateError, match="already running"):
        s.start()
    s.shutdown()
    s.shutdown()
    with pytest.raises(errors.SchedulerStateError, match="create a new Scheduler"):
        s.start()


def test_start_refuses_a_missing_schema_and_names_the_fix(engine: sa.Engine) -> None:
    config = SchedulerConfig(engine=engine, table_prefix="never_installed_")
    with pytest.raises(errors.SchemaNotInstalledError, match="pg-scheduler db upgrade"):
        Scheduler(config).start()


@pytest.mark.owner_only  # it migrates
def test_create_schema_installs_through_the_migrations(engine: sa.Engine) -> None:
    from pg_scheduler import migrations

    names = Names(prefix=f"cs{time.time_ns() % 10**8}_")
    s = Scheduler(SchedulerConfig(engine=engine, table_prefix=names.prefix, create_schema=True))
    try:
        s.start()
        assert migrations.is_up_to_date(engine, names=names)
    finally:
        s.shutdown()
        migrations.downgrade(engine, names=names)


def test_notify_wakes_an_idle_node_at_once(make_scheduler: Any) -> None:
    # With a 100 s check interval only a notification can make this job run quickly.
    s = make_scheduler(job_check_interval=dt.timedelta(seconds=100))
    job = Recording(JobConfig.one_time("wake"))
    s.register(job)
    with s:
        wait_until(lambda: s.listener.connected.is_set() or not s.listener.supported)
        time.sleep(0.05)
        key = s.enqueue("wake")
        wait_until(lambda: status(s, key) is JobStatus.COMPLETED, timeout=5)


def test_a_producer_naming_the_public_schema_wakes_a_node_left_on_the_default(
    make_scheduler: Any, engine: sa.Engine
) -> None:
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT current_schema()")).scalar() != "public":
            pytest.skip("the test tables are not in the public schema")
    node = make_scheduler(job_check_interval=dt.timedelta(seconds=100), run_immediately=False)
    producer = make_scheduler(schema="public")
    node.register(Recording(JobConfig.one_time("wake_public")))
    with node:
        wait_until(lambda: node.listener.connected.is_set() or not node.listener.supported)
        if not node.listener.supported:
            pytest.skip("this driver has no LISTEN")
        key = producer.enqueue("wake_public")
        # Only a notification makes the node look before its 100 s check interval.
        wait_until(lambda: status(node, key) is JobStatus.COMPLETED, timeout=10)


def test_node_survives_terminated_backends(make_scheduler: Any, engine: sa.Engine) -> None:
    s = make_scheduler(job_check_interval=dt.timedelta(seconds=1))
    job = Recording(JobConfig.one_time("after_kill"))
    s.register(job)
    with s:
        first = s.enqueue("after_kill")
        wait_until(lambda: status(s, first) is JobStatus.COMPLETED)
        with engine.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE pid <> pg_backend_pid() AND datname = current_database() "
                    "AND backend_type = 'client backend'"
                )
            )
            conn.commit()
        second = s.enqueue("after_kill")  # on a connection the server has just closed
        wait_until(lambda: status(s, second) is JobStatus.COMPLETED, timeout=10)


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

    assert s._insert(insert_then_lose_the_reply, ["twice#fixed"]) == ["twice#fixed"]
    assert len(sent) == 1, "the second send met the first one's row"
    assert [j.key for j in s.list_jobs(name="twice")] == ["twice#fixed"]


def test_run_pending_runs_what_is_due_and_returns_when_it_is_written(
    make_scheduler: Any,
) -> None:
    # On a scheduler that is not started (a started one claims by itself: run_pending refuses).
    s = make_scheduler()
    job = Recording(JobConfig.one_time("pending_now"))
    s.register(job)
    keys = [s.enqueue("pending_now", {"n": n}) for n in range(3)]
    assert sorted(run.job_key for run in s.run_pending()) == sorted(keys)
    assert [status(s, key) for key in keys] == [JobStatus.COMPLETED] * 3  # already written
    assert s.run_pending() == []
    with s, pytest.raises(errors.SchedulerStateError):
        s.run_pending()


def test_a_failing_recurring_job_keeps_its_schedule(make_scheduler: Any) -> None:
    # The original left a failed recurring job "picked" forever (seed bug G1-1).
    s = make_scheduler()
    job = Recording(JobConfig.recurring("always_fails", "* * * * * *"), fail=True)
    with s:
        s.schedule_job(job)
        wait_until(lambda: len(job.calls) >= 3, timeout=10, message="three ticks")
    ticks = [c.scheduled_at for c in job.calls]
    assert len(set(ticks)) == len(ticks)  # never the same tick twice
    record = s.get_job("always_fails")
    assert record is not None and record.status is JobStatus.PENDING
    assert record.consecutive_failures >= 3 and record.attempt == 0


def test_recurring_retries_stay_within_one_tick(make_scheduler: Any) -> None:
    s = make_scheduler()
    job = Recording(JobConfig.recurring("retrying", "0 0 1 1 *", retries=2), fail=True)
    with s:
        s.schedule_job(job)
        s.trigger("retrying")
        wait_until(lambda: len(job.calls) == 3, timeout=10)
        wait_until(lambda: (r := s.get_job("retrying")) is not None and r.attempt == 0)
    assert {c.scheduled_at for c in job.calls} == {job.calls[0].scheduled_at}
    assert [c.attempt for c in job.calls] == [1, 2, 3]
    record = s.get_job("retrying")
    assert record is not None and record.next_run is not None
    assert record.next_run.month == 1 and record.next_run.day == 1  # back on its yearly schedule


def test_init_and_shutdown_hooks(make_scheduler: Any, caplog: pytest.LogCaptureFixture) -> None:
    events: list[str] = []

    class Hooked(Job):
        def init(self, ctx: JobContext) -> None:
            events.append(f"init {ctx.params['mode']}")
            if ctx.params["mode"] == "bad_init":
                raise RuntimeError("init failed")

        def run(self, ctx: JobContext) -> None:
            events.append(f"run {ctx.params['mode']}")

        def shutdown(self, ctx: JobContext) -> None:
            events.append(f"shutdown {ctx.params['mode']}")
            if ctx.params["mode"] == "bad_shutdown":
                raise RuntimeError("teardown failed")

    s = make_scheduler(max_concurrent_jobs=1)
    s.register(Hooked(JobConfig.one_time("hooked")))
    with caplog.at_level(logging.ERROR, logger="pg_scheduler"), s:
        bad_init = s.enqueue("hooked", {"mode": "bad_init"})
        wait_until(lambda: status(s, bad_init) is JobStatus.FAILED)
        bad_shutdown = s.enqueue("hooked", {"mode": "bad_shutdown"})
        wait_until(lambda: status(s, bad_shutdown) is JobStatus.COMPLETED)
    assert events == [
        "init bad_init",
        "shutdown bad_init",
        "init bad_shutdown",
        "run bad_shutdown",
        "shutdown bad_shutdown",
    ]
    assert any(getattr(r, "event", "") == "job.shutdown_hook_failed" for r in caplog.records)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_are_recorded_and_the_node_goes_on(
    make_scheduler: Any, exc: type[BaseException]
) -> None:
    s = make_scheduler(max_concurrent_jobs=1)

    def raiser(ctx: JobContext) -> None:
        raise exc()

    s.one_time("raiser")(raiser)
    ok = Recording(JobConfig.one_time("ok"))
    s.register(ok)
    with s:
        bad = s.enqueue("raiser")
        wait_until(lambda: status(s, bad) is JobStatus.FAILED)
        good = s.enqueue("ok")
        wait_until(lambda: status(s, good) is JobStatus.COMPLETED)
    record = s.get_job(bad)
    assert record is not None and exc.__name__ in (record.last_error or "")


def test_cancel_pending_and_running_jobs(make_scheduler: Any) -> None:
    s = make_scheduler()
    entered = threading.Event()
    ran: list[str] = []

    def cooperative(ctx: JobContext) -> None:
        ran.append(ctx.job_key)
        entered.set()
        ctx.cancelled.wait(10)
        ctx.raise_if_cancelled()

    s.one_time("coop")(cooperative)
    later = s.enqueue("coop", run_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    assert s.cancel_job(later).cancelled
    with s:
        now_key = s.enqueue("coop")
        assert entered.wait(10)
        result = s.cancel_job(now_key)
        assert result.requested and not result.cancelled
        wait_until(lambda: status(s, now_key) is JobStatus.CANCELLED)
    assert status(s, later) is JobStatus.CANCELLED and ran == [now_key]
    with pytest.raises(errors.JobNotFoundError):
        s.cancel_job("no_such#key")
    with pytest.raises(errors.InvalidStateError):
        s.cancel_job(now_key)


def test_trigger_runs_a_recurring_job_now(make_scheduler: Any) -> None:
    s = make_scheduler()
    job = Recording(JobConfig.recurring("yearly", "0 0 1 1 *"))
    with s:
        s.schedule_job(job)
        before = s.get_job("yearly")
        assert before is not None and before.next_run is not None
        s.trigger("yearly")
        wait_until(lambda: len(job.calls) == 1)
        wait_until(lambda: (r := s.get_job("yearly")) is not None and r.last_success_at is not None)
    after = s.get_job("yearly")
    assert after is not None and after.next_run == before.next_run


def test_a_lost_lease_drops_the_late_outcome(
    make_scheduler: Any, engine: sa.Engine, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    # Long heartbeat period: the lease is taken away by hand, as if this node had been paused.
    s = make_scheduler(
        heartbeat_interval=dt.timedelta(seconds=30), no_heartbeat_timeout=dt.timedelta(minutes=5)
    )
    gate = threading.Event()
    attempts: list[int] = []

    def gated(ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        if len(attempts) == 1:
            gate.wait(10)
            raise RuntimeError("late failure of a stale attempt")

    s.one_time("gated")(gated)
    with caplog.at_level(logging.WARNING, logger="pg_scheduler"), s:
        key = s.enqueue("gated", retries=1)
        wait_until(lambda: attempts == [1])
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    f"UPDATE {names.jobs_table} SET heartbeat_at = now() - interval '1 hour' "
                    "WHERE key = :k"
                ),
                {"k": key},
            )
        assert s.maintenance.run_once(cleanup=False).rescued == 1
        wait_until(lambda: status(s, key) is JobStatus.COMPLETED)  # the rerun, same node
        result = s.heartbeat.run_once()
        assert len(result.lost) == 1
        gate.set()
        wait_until(lambda: len(s.inflight) == 0)
    assert attempts == [1, 1]  # the lost run used up no attempt
    record = s.get_job(key)
    assert record is not None and record.status is JobStatus.COMPLETED and record.last_error is None
    assert [r.status for r in s.list_runs(key)] == [RunStatus.COMPLETED, RunStatus.LOST]
    assert any(getattr(r, "event", "") == "job.lease_lost" for r in caplog.records)


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


def test_decorators_for_plain_functions(make_scheduler: Any) -> None:
    s = make_scheduler()
    seen: list[Any] = []

    @s.one_time("greet", retries=1)
    def greet(ctx: JobContext) -> None:
        seen.append(ctx.params)

    @s.recurring("every_second", "* * * * * *")
    def tick(ctx: JobContext) -> None:
        seen.append(ctx.scheduled_at)

    with s:
        key = s.enqueue("greet", {"who": "world"})
        wait_until(lambda: status(s, key) is JobStatus.COMPLETED)
        wait_until(lambda: any(isinstance(x, dt.datetime) for x in seen), timeout=5)
    record = s.get_job(key)
    assert record is not None and record.max_retries == 1  # the decorator's default
    assert {"who": "world"} in seen


def test_bad_input_is_refused_before_anything_is_written(
    make_scheduler: Any, engine: sa.Engine, names: Names
) -> None:
    s = make_scheduler()
    with pytest.raises(errors.PayloadNotJSONError):
        s.enqueue("x", {"obj": object()})
    with pytest.raises(errors.PayloadNotJSONError):
        s.enqueue("x", {"nan": float("nan")})
    with pytest.raises(errors.InvalidJobNameError):
        s.enqueue("", {})
    with pytest.raises(errors.InvalidCronError, match="0 0 31 2"):
        JobConfig.recurring("never", "0 0 31 2 *")
    with pytest.raises(errors.PayloadNotJSONError):
        JobConfig.one_time("bad", {1, 2, 3})
    with Session(engine) as session:
        count = session.execute(sa.text(f"SELECT count(*) FROM {names.jobs_table}")).scalar()
    assert count == 0


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "pg8000"])
def test_dead_database_gives_a_clear_error(driver: str) -> None:
    # pg8000 reports a refused connection as an InterfaceError (raised from the OSError), not
    # an OperationalError: it must read the same.
    engine = sa.create_engine(f"postgresql+{driver}://nobody@127.0.0.1:1/none")
    s = Scheduler(SchedulerConfig(engine=engine, table_prefix="x_"))
    calls: list[Callable[[], object]] = [
        lambda: s.enqueue("x", {}),
        lambda: s.get_job("x#1"),
        s.list_jobs,
    ]
    for call in calls:
        with pytest.raises(errors.DatabaseUnavailableError, match="database unavailable"):
            call()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_concurrent_jobs", 0, "max_concurrent_jobs must be at least 1"),
        ("max_lost_leases", 0, "max_lost_leases must be an integer of at least 1"),
        ("max_lost_leases", True, "max_lost_leases must be an integer of at least 1"),
        ("max_lost_leases", 2.5, "max_lost_leases must be an integer of at least 1"),
        ("heartbeat_interval", dt.timedelta(seconds=-1), "heartbeat_interval must be a positive"),
        ("heartbeat_interval", 30, "heartbeat_interval must be a datetime.timedelta"),
        ("no_heartbeat_timeout", dt.timedelta(seconds=40), "at least twice"),
        ("table_prefix", 'x"; drop table y; --', "invalid table prefix"),
        ("schema", "Bad", "invalid schema name"),
        ("shutdown_timeout", dt.timedelta(seconds=-5), "shutdown_timeout"),
    ],
)
def test_invalid_settings_raise_at_construction(
    engine: sa.Engine, field: str, value: object, message: str
) -> None:
    with pytest.raises(errors.ConfigError, match=message):
        SchedulerConfig(engine=engine, **{field: value})  # type: ignore[arg-type]


def test_sqlite_is_refused() -> None:
    with pytest.raises(errors.ConfigError, match="needs PostgreSQL"):
        SchedulerConfig(engine=sa.create_engine("sqlite://"))
