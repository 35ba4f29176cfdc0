"""The scheduler's contract, once for both runtimes: every test runs on ``Scheduler`` (``threads``)
and on ``AsyncScheduler`` (``asyncio``, on each async driver), through ``tests.support.runtimes``'s
``Node``. Real PostgreSQL, real threads and loops, no mocks; nothing sleeps for a fixed time.

Job code is synchronous unless the test is about ``async def`` jobs (``node.code`` makes a
non-blocking body an ``async def`` on asyncio): synchronous jobs run on worker threads under both
runtimes. What only one runtime has is in ``test_threads.py`` and ``test_asyncio.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from pg_scheduler import Job, JobConfig, JobContext, JobStatus, RunStatus, errors, migrations
from pg_scheduler.naming import Names
from pg_scheduler.testing import unique_prefix, wait_until
from tests.support.jobs import Recording
from tests.support.runtimes import Gauge, Node, Nodes, enqueue_elsewhere, events


def completed(s: Node, *keys: str) -> None:
    for key in keys:
        wait_until(lambda k=key: s.status(k) is JobStatus.COMPLETED, message=f"{key} completed")


# ---------------------------------------------------------------------- running jobs


def test_one_time_job_runs_once_with_its_params(make_node: Nodes) -> None:
    s = make_node()
    job = Recording(JobConfig.one_time("email", {"to": "a@b.c", "n": [1, 2.5, None]}))
    with s:
        key = s.schedule_job(job)
        completed(s, key)
        assert [r.status for r in s.list_runs(key)] == [RunStatus.COMPLETED]
    assert len(job.calls) == 1
    ctx = job.calls[0]
    assert ctx.params == {"to": "a@b.c", "n": [1, 2.5, None]}
    assert (ctx.job_name, ctx.job_key, ctx.attempt, ctx.node_id) == ("email", key, 1, s.node_id)


def test_async_and_sync_jobs_run_with_their_params(make_node: Nodes) -> None:
    s = make_node()
    seen: dict[str, Any] = {}

    @s.one_time("async_job")
    async def async_job(ctx: JobContext) -> None:
        seen["async"] = (ctx.params, ctx.attempt)

    @s.one_time("sync_job")
    def sync_job(ctx: JobContext) -> None:
        seen.setdefault("sync", []).append(ctx.params)

    with s:
        key = s.enqueue("async_job", {"to": "a@b.c", "n": [1, 2.5, None]})
        keys = s.enqueue_many("sync_job", [{"i": 1}, {"i": 2}])
        completed(s, key, *keys)
        assert {j.key for j in s.list_jobs(name="sync_job")} == set(keys)
        assert [n.node_id for n in s.list_nodes()] == [s.node_id]
    assert seen["async"] == ({"to": "a@b.c", "n": [1, 2.5, None]}, 1)
    assert sorted(p["i"] for p in seen["sync"]) == [1, 2]


def test_retries_give_n_plus_one_attempts_with_identical_params(make_node: Nodes) -> None:
    s = make_node()
    calls: list[JobContext] = []

    def flaky(ctx: JobContext) -> None:
        calls.append(ctx)
        raise ValueError(f"boom on attempt {ctx.attempt}")

    s.one_time("flaky")(s.code(flaky))
    with s:
        key = s.enqueue("flaky", {"payload": {"deep": ["x"]}}, retries=2)
        wait_until(lambda: s.status(key) is JobStatus.FAILED, message="job failed")
    assert [c.attempt for c in calls] == [1, 2, 3]
    assert all(c.params == {"payload": {"deep": ["x"]}} for c in calls)
    record = s.get_job(key)
    assert record is not None
    assert record.last_error is not None and "ValueError: boom on attempt 3" in record.last_error
    assert record.consecutive_failures == 3 and record.finished_at is not None
    assert [r.status for r in s.list_runs(key)] == [RunStatus.FAILED] * 3


def test_max_concurrent_jobs_caps_async_and_sync_jobs(make_node: Nodes) -> None:
    s = make_node(max_concurrent_jobs=2)
    gauge = Gauge()

    @s.one_time("slow_async")
    async def slow_async(ctx: JobContext) -> None:
        with gauge:
            await asyncio.sleep(0.3)

    @s.one_time("slow_sync")
    def slow_sync(ctx: JobContext) -> None:
        with gauge:
            time.sleep(0.3)

    keys = s.enqueue_many("slow_async", [{"i": i} for i in range(3)])
    keys += s.enqueue_many("slow_sync", [{"i": i} for i in range(3)])
    with s:
        wait_until(
            lambda: all(s.status(k) is JobStatus.COMPLETED for k in keys),
            timeout=20,
            message="all six done",
        )
    assert gauge.total == 6 and gauge.peak == 2


def test_one_time_keys_sort_in_enqueue_order(
    make_node: Nodes, engine: sa.Engine, names: Names
) -> None:
    """Keys are UUIDv7: the database's own key order (its primary-key index) is enqueue order."""
    s = make_node()
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


def test_run_pending_runs_what_is_due_and_returns_when_it_is_written(make_node: Nodes) -> None:
    # On a node that is not started (a started one claims by itself: run_pending refuses), and
    # that would not look for work by itself for a minute anyway.
    s = make_node(job_check_interval=dt.timedelta(seconds=60), listen=False, run_immediately=False)
    ran: list[int] = []
    s.one_time("pending_now")(s.code(lambda ctx: ran.append(ctx.params["n"])))
    keys = [s.enqueue("pending_now", {"n": n}) for n in range(3)]
    assert sorted(run.job_key for run in s.run_pending()) == sorted(keys)
    assert sorted(ran) == [0, 1, 2]
    assert [s.status(key) for key in keys] == [JobStatus.COMPLETED] * 3  # already written
    assert s.run_pending() == []
    with s, pytest.raises(errors.SchedulerStateError):
        s.run_pending()


def test_decorators_for_plain_functions(make_node: Nodes) -> None:
    s = make_node()
    seen: list[Any] = []

    @s.one_time("greet", retries=1)
    def greet(ctx: JobContext) -> None:
        seen.append(ctx.params)

    @s.recurring("every_second", "* * * * * *")
    def tick(ctx: JobContext) -> None:
        seen.append(ctx.scheduled_at)

    with s:
        key = s.enqueue("greet", {"who": "world"})
        completed(s, key)
        wait_until(lambda: any(isinstance(x, dt.datetime) for x in seen), timeout=5)
    record = s.get_job(key)
    assert record is not None and record.max_retries == 1  # the decorator's default
    assert {"who": "world"} in seen


def test_init_and_shutdown_hooks(make_node: Nodes, caplog: pytest.LogCaptureFixture) -> None:
    events_seen: list[str] = []

    class Hooked(Job):
        def init(self, ctx: JobContext) -> None:
            events_seen.append(f"init {ctx.params['mode']}")
            if ctx.params["mode"] == "bad_init":
                raise RuntimeError("init failed")

        def run(self, ctx: JobContext) -> None:
            events_seen.append(f"run {ctx.params['mode']}")

        def shutdown(self, ctx: JobContext) -> None:
            events_seen.append(f"shutdown {ctx.params['mode']}")
            if ctx.params["mode"] == "bad_shutdown":
                raise RuntimeError("teardown failed")

    s = make_node(max_concurrent_jobs=1)
    s.register(Hooked(JobConfig.one_time("hooked")))
    with caplog.at_level(logging.ERROR, logger="pg_scheduler"), s:
        bad_init = s.enqueue("hooked", {"mode": "bad_init"})
        wait_until(lambda: s.status(bad_init) is JobStatus.FAILED)
        bad_shutdown = s.enqueue("hooked", {"mode": "bad_shutdown"})
        completed(s, bad_shutdown)
    assert events_seen == [
        "init bad_init",
        "shutdown bad_init",
        "init bad_shutdown",
        "run bad_shutdown",
        "shutdown bad_shutdown",
    ]
    assert "job.shutdown_hook_failed" in events(caplog)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_are_recorded_and_the_node_goes_on(
    make_node: Nodes, exc: type[BaseException]
) -> None:
    s = make_node(max_concurrent_jobs=1)

    def raiser(ctx: JobContext) -> None:
        raise exc()

    s.one_time("raiser")(raiser)
    s.register(Recording(JobConfig.one_time("ok")))
    with s:
        bad = s.enqueue("raiser")
        wait_until(lambda: s.status(bad) is JobStatus.FAILED)
        good = s.enqueue("ok")
        completed(s, good)
    record = s.get_job(bad)
    assert record is not None and exc.__name__ in (record.last_error or "")


def test_bad_input_is_refused_before_anything_is_written(
    make_node: Nodes, engine: sa.Engine, names: Names
) -> None:
    s = make_node()
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
    with engine.connect() as conn:
        count = conn.execute(sa.text(f"SELECT count(*) FROM {names.jobs_table}")).scalar()
    assert count == 0


# ---------------------------------------------------------------------- recurring jobs


def test_a_failing_recurring_job_keeps_its_schedule(make_node: Nodes) -> None:
    # The original left a failed recurring job "picked" forever (seed bug G1-1).
    s = make_node()
    job = Recording(JobConfig.recurring("always_fails", "* * * * * *"), fail=True)
    with s:
        s.schedule_job(job)
        wait_until(lambda: len(job.calls) >= 3, timeout=10, message="three ticks")
    ticks = [c.scheduled_at for c in job.calls]
    assert len(set(ticks)) == len(ticks)  # never the same tick twice
    record = s.get_job("always_fails")
    assert record is not None and record.status is JobStatus.PENDING
    assert record.consecutive_failures >= 3 and record.attempt == 0


def test_recurring_retries_stay_within_one_tick(make_node: Nodes) -> None:
    s = make_node()
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


def test_trigger_runs_a_recurring_job_now(make_node: Nodes) -> None:
    s = make_node()
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


# ---------------------------------------------------------------------- cancel and shutdown


def test_cancel_pending_and_running_jobs_then_retry(make_node: Nodes) -> None:
    s = make_node()
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
    assert s.status(later) is JobStatus.CANCELLED
    with s:
        now_key = s.enqueue("coop")
        assert entered.wait(10)
        result = s.cancel_job(now_key)
        assert result.requested and not result.cancelled and result.node_id == s.node_id
        wait_until(lambda: s.status(now_key) is JobStatus.CANCELLED)
        assert [r.status for r in s.list_runs(now_key)] == [RunStatus.CANCELLED]
        assert ran == [now_key]
        with pytest.raises(errors.JobNotFoundError):
            s.cancel_job("no_such#key")
        with pytest.raises(errors.InvalidStateError):
            s.cancel_job(now_key)  # already cancelled
        entered.clear()
        s.retry_job(now_key)
        assert entered.wait(10), "retried"
        with pytest.raises(errors.InvalidStateError):
            s.trigger(now_key)  # running, not pending
        s.cancel_job(now_key)
        wait_until(lambda: s.status(now_key) is JobStatus.CANCELLED)
    assert s.status(later) is JobStatus.CANCELLED and ran == [now_key, now_key]


def test_shutdown_records_finished_outcomes_and_hands_back_the_rest(
    make_node: Nodes, engine: sa.Engine, names: Names
) -> None:
    s = make_node(shutdown_timeout=dt.timedelta(seconds=1))
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
    assert s.status(quick_key) is JobStatus.COMPLETED
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
        stopped_at = conn.execute(
            sa.text(f"SELECT stopped_at FROM {names.nodes_table} WHERE node_id = :n"),
            {"n": s.node_id},
        ).scalar()
    assert running == 0 and stopped_at is not None
    assert [r.status for r in s.list_runs(stubborn_key)] == [RunStatus.RELEASED]


def test_a_job_that_stops_on_shutdown_is_handed_back_not_failed(make_node: Nodes) -> None:
    s = make_node()
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
    assert [r.status for r in s.list_runs(key)] == [RunStatus.RELEASED]


def test_start_twice_raises_and_shutdown_twice_is_harmless(make_node: Nodes) -> None:
    s = make_node()
    s.start()
    with pytest.raises(errors.SchedulerStateError, match="already running"):
        s.start()
    s.shutdown()
    s.shutdown()
    with pytest.raises(
        errors.SchedulerStateError, match=f"create a new {type(s.scheduler).__name__}"
    ):
        s.start()


def test_start_refuses_a_missing_schema_and_names_the_fix(make_node: Nodes) -> None:
    s = make_node(table_prefix="never_installed_")
    with pytest.raises(errors.SchemaNotInstalledError, match="pg-scheduler db upgrade"):
        s.start()


@pytest.mark.owner_only  # it migrates
def test_create_schema_installs_through_the_migrations(make_node: Nodes, engine: sa.Engine) -> None:
    names = Names(prefix=unique_prefix())
    try:
        with make_node(table_prefix=names.prefix, create_schema=True) as s:
            assert s.running
            assert migrations.is_up_to_date(engine, names=names)
        assert migrations.current(engine, names=names) == migrations.head()
    finally:
        migrations.downgrade(engine, names=names)


# ---------------------------------------------------------------------- leases


def test_a_lost_lease_drops_the_late_outcome(
    make_node: Nodes, engine: sa.Engine, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    # Long heartbeat period: the lease is taken away by hand, as if this node had been paused.
    s = make_node(
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
        assert s.call(lambda n: n.maintenance.run_once(cleanup=False)).rescued == 1
        completed(s, key)  # the rerun, same node
        assert len(s.call(lambda n: n.heartbeat.run_once()).lost) == 1
        gate.set()
        wait_until(lambda: len(s.inflight) == 0)
    assert attempts == [1, 1]  # the lost run used up no attempt
    record = s.get_job(key)
    assert record is not None and record.status is JobStatus.COMPLETED and record.last_error is None
    assert [r.status for r in s.list_runs(key)] == [RunStatus.COMPLETED, RunStatus.LOST]
    assert "job.lease_lost" in events(caplog)


# ---------------------------------------------------------------------- wake-ups and outages


def test_notify_wakes_an_idle_node_at_once(make_node: Nodes) -> None:
    # With a 100 s check interval only a notification can make this job run quickly.
    s = make_node(job_check_interval=dt.timedelta(seconds=100))
    s.register(Recording(JobConfig.one_time("wake")))
    with s:
        wait_until(lambda: s.listener.connected.is_set() or not s.listener.supported)
        key = s.enqueue("wake")
        wait_until(lambda: s.status(key) is JobStatus.COMPLETED, timeout=5)


def test_a_producer_naming_the_public_schema_wakes_a_node_left_on_the_default(
    make_node: Nodes, engine: sa.Engine
) -> None:
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT current_schema()")).scalar() != "public":
            pytest.skip("the test tables are not in the public schema")
    node = make_node(job_check_interval=dt.timedelta(seconds=100), run_immediately=False)
    producer = make_node(schema="public")
    node.register(Recording(JobConfig.one_time("wake_public")))
    with node:
        wait_until(lambda: node.listener.connected.is_set() or not node.listener.supported)
        if not node.listener.supported:
            pytest.skip("this driver has no LISTEN")
        key = producer.enqueue("wake_public")
        # Only a notification makes the node look before its 100 s check interval.
        wait_until(lambda: node.status(key) is JobStatus.COMPLETED, timeout=10)


def test_polling_takes_over_without_listen(
    make_node: Nodes, engine: sa.Engine, names: Names
) -> None:
    s = make_node(listen=False, job_check_interval=dt.timedelta(milliseconds=300))
    s.register(Recording(JobConfig.one_time("polled")))
    with s:
        key = enqueue_elsewhere(engine, names, "polled")
        wait_until(lambda: s.status(key) is JobStatus.COMPLETED, timeout=5)
        assert not s.listener.connected.is_set()
        assert getattr(s.listener, "backend_pid", None) is None


def test_the_node_survives_terminated_backends(
    make_node: Nodes, owner_engine: sa.Engine, names: Names
) -> None:
    s = make_node(job_check_interval=dt.timedelta(seconds=1))
    s.register(Recording(JobConfig.one_time("after_kill")))
    with s:
        first = s.enqueue("after_kill")
        completed(s, first)
        # Every session whose last statement was about this test's tables (the node's pooled
        # and LISTEN connections; not other tests' sessions on the shared server). The owner may
        # end any session.
        with owner_engine.connect() as conn:
            terminated = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE pid <> pg_backend_pid() AND datname = current_database() "
                    "AND backend_type = 'client backend' AND strpos(query, :prefix) > 0"
                ),
                {"prefix": names.prefix},
            ).scalar()
            conn.commit()
        assert terminated
        second = s.enqueue("after_kill")  # on a connection the server has just closed
        wait_until(lambda: s.status(second) is JobStatus.COMPLETED, timeout=10)
        assert len(s.call(lambda n: n.heartbeat.run_once()).lost) == 0
