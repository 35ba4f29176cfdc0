"""``async def`` jobs, on both runtimes: one event loop for every run (on the threaded
``Scheduler``, a loop the scheduler owns; on ``AsyncScheduler``, the application's), the same
concurrency cap as every job, and cancellation that reaches the job both through ``ctx`` and as
``asyncio.CancelledError``, with the outcome recorded once the job's own code has stopped."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from pg_scheduler import Job, JobConfig, JobContext, JobStatus, RunStatus
from pg_scheduler.naming import Names
from pg_scheduler.testing import wait_until
from tests.support.runtimes import Nodes


class Probe:
    """What async jobs saw, written from the scheduler's loop and read by the test thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loops: set[int] = set()
        self.threads: set[int] = set()
        self.running = 0
        self.peak = 0
        self.events: list[tuple[str, Any]] = []

    def enter(self) -> None:
        with self.lock:
            self.loops.add(id(asyncio.get_running_loop()))
            self.threads.add(threading.get_ident())
            self.running += 1
            self.peak = max(self.peak, self.running)

    def leave(self) -> None:
        with self.lock:
            self.running -= 1

    def note(self, event: str, value: Any = None) -> None:
        with self.lock:
            self.events.append((event, value))

    def seen(self, event: str) -> list[Any]:
        with self.lock:
            return [value for name, value in self.events if name == event]


class AsyncSleeper(Job):
    """Sleeps ``params.seconds`` on the event loop; on cancellation records what it saw, cleans up
    for ``params.cleanup`` seconds (checking that its outcome is not written meanwhile), re-raises."""

    def __init__(self, config: JobConfig, probe: Probe, engine: sa.Engine, names: Names) -> None:
        super().__init__(config)
        self.probe, self.engine, self.names = probe, engine, names

    def row_status(self, key: str) -> str:
        with self.engine.connect() as conn:
            return str(
                conn.execute(
                    sa.text(f"SELECT status FROM {self.names.jobs_table} WHERE key = :k"),
                    {"k": key},
                ).scalar_one()
            )

    async def run(self, ctx: JobContext) -> None:
        self.probe.enter()
        try:
            self.probe.note("started", ctx.job_key)
            await asyncio.sleep(float(ctx.params.get("seconds", 0.2)))
            self.probe.note("finished", ctx.job_key)
        except asyncio.CancelledError:
            self.probe.note("cancelled", (ctx.job_key, ctx.is_cancelled()))
            await asyncio.sleep(float(ctx.params.get("cleanup", 0.0)))
            # The outcome must not be written while the job's own code still runs.
            status = await asyncio.to_thread(self.row_status, ctx.job_key)
            self.probe.note("status_during_cleanup", status)
            raise
        finally:
            self.probe.leave()


@pytest.fixture
def probe() -> Probe:
    return Probe()


def test_async_jobs_share_one_loop_owned_by_the_scheduler(
    make_node: Nodes, probe: Probe, engine: sa.Engine, names: Names
) -> None:
    s = make_node(max_concurrent_jobs=3)
    s.register(AsyncSleeper(JobConfig.one_time("sleeper"), probe, engine, names))

    @s.one_time("decorated")
    async def decorated(ctx: JobContext) -> None:
        probe.enter()
        probe.leave()
        probe.note("decorated", ctx.params)

    with s:
        keys = s.enqueue_many("sleeper", [{"seconds": 0.2}] * 4)
        keys.append(s.enqueue("decorated", {"n": 1}))
        wait_until(lambda: all(s.status(k) is JobStatus.COMPLETED for k in keys), timeout=15)
    assert probe.seen("decorated") == [{"n": 1}]
    assert len(probe.seen("finished")) == 4
    # One loop for every run, on one thread (not a worker thread, not a loop per run): the
    # scheduler's own under threads, the application's under asyncio.
    assert len(probe.loops) == 1 and len(probe.threads) == 1
    assert probe.peak >= 2  # the runs really overlapped on that loop


def test_async_recurring_decorator_runs_every_tick(make_node: Nodes, probe: Probe) -> None:
    s = make_node()
    ticks: list[dt.datetime] = []

    with s:

        @s.recurring("every_second", "* * * * * *")
        async def every_second(ctx: JobContext) -> None:
            probe.enter()
            probe.leave()
            ticks.append(ctx.scheduled_at)

        wait_until(lambda: len(ticks) >= 3, timeout=10, message="three ticks")
    assert ticks == sorted(set(ticks))
    assert len(probe.loops) == 1


def test_async_jobs_count_against_max_concurrent_jobs(
    make_node: Nodes, probe: Probe, engine: sa.Engine, names: Names
) -> None:
    s = make_node(max_concurrent_jobs=2)
    s.register(AsyncSleeper(JobConfig.one_time("sleeper"), probe, engine, names))
    with s:
        keys = s.enqueue_many("sleeper", [{"seconds": 0.3}] * 6)
        wait_until(lambda: all(s.status(k) is JobStatus.COMPLETED for k in keys), timeout=20)
    assert probe.peak == 2
    assert len(probe.loops) == 1


def test_cancel_job_reaches_an_async_job_as_cancelled_error(
    make_node: Nodes, probe: Probe, engine: sa.Engine, names: Names
) -> None:
    s = make_node()
    s.register(AsyncSleeper(JobConfig.one_time("sleeper"), probe, engine, names))
    with s:
        key = s.enqueue("sleeper", {"seconds": 60, "cleanup": 0.3})
        wait_until(lambda: probe.seen("started") == [key])
        result = s.cancel_job(key)
        assert result.requested and not result.cancelled
        wait_until(lambda: s.status(key) is JobStatus.CANCELLED, timeout=10)
    # The job saw CancelledError with ctx.cancelled already set, and its cleanup ran to the end
    # before the outcome was written.
    assert probe.seen("cancelled") == [(key, True)]
    assert probe.seen("status_during_cleanup") == ["running"]
    assert [r.status for r in s.list_runs(key)] == [RunStatus.CANCELLED]


def test_shutdown_hands_an_async_job_back(
    make_node: Nodes, probe: Probe, engine: sa.Engine, names: Names
) -> None:
    s = make_node(shutdown_timeout=dt.timedelta(seconds=5))
    s.register(AsyncSleeper(JobConfig.one_time("sleeper"), probe, engine, names))
    s.start()
    key = s.enqueue("sleeper", {"seconds": 60, "cleanup": 0.2})
    wait_until(lambda: probe.seen("started") == [key])
    s.shutdown()
    assert probe.seen("cancelled") == [(key, True)]
    assert probe.seen("status_during_cleanup") == ["running"]
    record = s.get_job(key)
    # Handed back, not failed: pending again, no attempt used up, another node may take it at once.
    assert record is not None and record.status is JobStatus.PENDING and record.attempt == 0
    assert record.lease_id is None and record.consecutive_failures == 0
    assert [r.status for r in s.list_runs(key)] == [RunStatus.RELEASED]


def test_shutdown_releases_an_async_job_that_ignores_cancellation(
    make_node: Nodes, engine: sa.Engine, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    s = make_node(shutdown_timeout=dt.timedelta(milliseconds=300))
    finished = threading.Event()

    @s.one_time("stubborn")
    async def stubborn(ctx: JobContext) -> None:
        deadline = asyncio.get_running_loop().time() + 1.0
        while asyncio.get_running_loop().time() < deadline:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                pass  # refuses to stop
        finished.set()

    with caplog.at_level(logging.WARNING, logger="pg_scheduler"):
        s.start()
        key = s.enqueue("stubborn")
        wait_until(lambda: s.status(key) is JobStatus.RUNNING)
        s.shutdown()
        record = s.get_job(key)
        assert record is not None and record.status is JobStatus.PENDING and record.lease_id is None
        finished.wait(5)
        # Its late "success" is dropped: the lease was handed back at the timeout.
        wait_until(lambda: any(getattr(r, "event", "") == "job.lease_lost" for r in caplog.records))
    record = s.get_job(key)
    assert record is not None and record.status is JobStatus.PENDING
    assert [r.status for r in s.list_runs(key)] == [RunStatus.RELEASED]


def test_a_lost_lease_cancels_the_async_job_and_drops_its_outcome(
    make_node: Nodes, engine: sa.Engine, names: Names, caplog: pytest.LogCaptureFixture
) -> None:
    s = make_node(
        heartbeat_interval=dt.timedelta(seconds=30), no_heartbeat_timeout=dt.timedelta(minutes=5)
    )
    seen: list[tuple[int, str]] = []
    runs: list[int] = []

    @s.one_time("fenced")
    async def fenced(ctx: JobContext) -> None:
        runs.append(ctx.attempt)
        run = len(runs)
        if run > 1:
            seen.append((run, "ran"))
            return
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append((run, f"cancelled={ctx.is_cancelled()}"))
            raise

    with caplog.at_level(logging.WARNING, logger="pg_scheduler"), s:
        key = s.enqueue("fenced")
        wait_until(lambda: s.status(key) is JobStatus.RUNNING)
        with engine.begin() as conn:  # this node looks dead: its heartbeat is an hour old
            conn.execute(
                sa.text(
                    f"UPDATE {names.jobs_table} SET heartbeat_at = now() - interval '1 hour' "
                    "WHERE key = :k"
                ),
                {"k": key},
            )
        s.call(lambda n: n.maintenance.run_once(cleanup=False))
        wait_until(lambda: (2, "ran") in seen)  # the rerun ran while the first run still hangs
        assert len(s.call(lambda n: n.heartbeat.run_once()).lost) == 1
        wait_until(lambda: (1, "cancelled=True") in seen)
        wait_until(lambda: len(s.inflight) == 0)
    record = s.get_job(key)
    assert record is not None and record.status is JobStatus.COMPLETED and record.last_error is None
    assert [r.status for r in s.list_runs(key)] == [RunStatus.COMPLETED, RunStatus.LOST]
    assert runs == [1, 1], "the lost run used up no attempt (retries=0)"
    assert any(getattr(r, "event", "") == "job.lease_lost" for r in caplog.records)
