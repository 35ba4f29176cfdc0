"""What only ``AsyncScheduler`` has, on asyncpg and on psycopg async (the contract both runtimes
share is ``test_contract.py``): code on the application's loop, ``asyncio.CancelledError``, async
sessions, grouped outcome writes, nodes as processes.

Every test runs once per async driver (the ``async_url`` fixture of ``tests/node/conftest.py``). Tests are plain functions that drive a coroutine with
``asyncio.run``; nothing sleeps for a fixed time: ``until`` waits for a condition with a deadline.
Invariants that involve several nodes are SQL over the runs table or over an effects table the
test job writes through a connection of its own.

Run as a script (``python tests/node/test_asyncio.py node '<json>'``) this file is a node
process, which the crash-recovery test kills with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import sessionmaker

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
from pg_scheduler.aio import AsyncScheduler
from pg_scheduler.naming import Names
from tests.support.runtimes import (
    FAST,
    enqueue_elsewhere,
    events,
    has_status,
    make_engine,
    node,
    until,
)

# ---------------------------------------------------------------------- running jobs


def test_async_code_runs_on_the_applications_loop_and_sync_code_off_it(
    async_url: str, names: Names
) -> None:
    async def main() -> None:
        async with node(async_url, names) as s:
            seen: dict[str, Any] = {}

            @s.one_time("async_job")
            async def async_job(ctx: JobContext) -> None:
                seen["async"] = (ctx.params, ctx.attempt, threading.get_ident())

            @s.one_time("sync_job")
            def sync_job(ctx: JobContext) -> None:
                seen.setdefault("sync", []).append((ctx.params, threading.get_ident()))

            @s.recurring("yearly", "0 0 1 1 *")  # decorated before start: written by start()
            async def yearly(ctx: JobContext) -> None:
                seen["yearly"] = ctx.scheduled_at

            assert await s.get_job("yearly") is None
            async with s:
                assert (record := await s.get_job("yearly")) is not None
                assert record.status is JobStatus.PENDING and record.cron == "0 0 1 1 *"
                key = await s.enqueue("async_job", {"to": "a@b.c", "n": [1, 2.5, None]})
                keys = await s.enqueue_many("sync_job", [{"i": 1}, {"i": 2}])
                for k in [key, *keys]:
                    await until(has_status(s, k, JobStatus.COMPLETED), message=f"{k} completed")
                await s.trigger("yearly")
                await until(lambda: "yearly" in seen, message="triggered run")
                loop_thread = threading.get_ident()
                assert [r.status for r in await s.list_runs(key)] == [RunStatus.COMPLETED]
                assert {j.key for j in await s.list_jobs(name="sync_job")} == set(keys)
                assert [n.node_id for n in await s.list_nodes()] == [s.node_id]
        params, attempt, thread = seen["async"]
        assert (params, attempt) == ({"to": "a@b.c", "n": [1, 2.5, None]}, 1)
        assert thread == loop_thread  # async code runs on the application's loop
        assert sorted(p["i"] for p, _ in seen["sync"]) == [1, 2]
        assert all(t != loop_thread for _, t in seen["sync"])  # sync code never blocks it

    asyncio.run(main())


def test_a_producer_never_started_gives_its_connection_back_when_idle(
    async_url: str, names: Names
) -> None:
    # A scheduler that only enqueues (never started, never shut down, as in a web app) keeps a
    # connection for a burst of enqueues, and gives it back to the pool once idle: asyncio cannot
    # give one back from the garbage collector.
    async def main() -> None:
        engine = make_engine(async_url)
        try:
            producer = AsyncScheduler(SchedulerConfig(engine=engine, table_prefix=names.prefix))
            keys = [await producer.enqueue("anything", {"n": n}) for n in range(20)]
            assert len(set(keys)) == 20
            pool: Any = engine.pool
            await until(lambda: pool.checkedout() == 0, message="the idle connection given back")
            assert await producer.get_job(keys[-1]) is not None  # and it enqueues on
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_a_producer_gives_its_connection_back_on_each_event_loop_it_enqueues_from(
    async_url: str, names: Names
) -> None:
    # A script may enqueue from one asyncio.run() after another with the same scheduler: the
    # idle check left on the first (ended) loop never runs, so the second loop needs its own.
    if "asyncpg" in async_url:
        pytest.skip("asyncpg's pooled connections belong to the loop that opened them")
    engine = make_engine(async_url)
    producer = AsyncScheduler(SchedulerConfig(engine=engine, table_prefix=names.prefix))
    pool: Any = engine.pool

    async def enqueue_then_wait(wait: bool) -> None:
        await producer.enqueue("anything")
        if wait:
            await until(lambda: pool.checkedout() == 0, message="the idle connection given back")

    try:
        asyncio.run(enqueue_then_wait(False))
        asyncio.run(enqueue_then_wait(True))
    finally:
        asyncio.run(engine.dispose())


def test_enqueue_joins_the_applications_async_transaction(async_url: str, names: Names) -> None:
    async def main() -> None:
        async with node(async_url, names) as s:
            ran: list[Any] = []

            @s.one_time("welcome")
            async def welcome(ctx: JobContext) -> None:
                ran.append(ctx.params)

            app_sessions = async_sessionmaker(s.engine)  # the application's own factory
            async with s:
                with contextlib.suppress(LookupError):
                    async with app_sessions() as session, session.begin():
                        doomed = await s.enqueue("welcome", {"user": 1}, session=session)
                        assert await s.get_job(doomed) is None  # not visible before commit
                        raise LookupError("the request failed: its transaction rolls back")
                assert await s.get_job(doomed) is None
                async with app_sessions() as session, session.begin():
                    kept = await s.enqueue("welcome", {"user": 2}, session=session)
                    many = await s.enqueue_many("welcome", [{"user": 3}], session=session)
                for k in [kept, *many]:
                    await until(has_status(s, k, JobStatus.COMPLETED))
            assert await s.get_job(doomed) is None
        assert sorted(p["user"] for p in ran) == [2, 3]

    asyncio.run(main())


def test_outcomes_that_end_together_are_written_together(async_url: str, names: Names) -> None:
    groups: list[int] = []

    async def main() -> None:
        async with node(async_url, names, max_concurrent_jobs=20) as s:
            write_outcomes = s.runtime.outcomes._write_group

            async def counted(items: Any) -> Any:
                groups.append(len(items))
                return await write_outcomes(items)

            s.runtime.outcomes._write_group = counted

            @s.one_time("quick")
            async def quick(ctx: JobContext) -> None:
                return None

            async with s:
                keys = await s.enqueue_many("quick", [{}] * 20)
                for k in keys:
                    await until(has_status(s, k, JobStatus.COMPLETED))
                for k in keys:
                    assert [r.status for r in await s.list_runs(k)] == [RunStatus.COMPLETED]

    asyncio.run(main())
    assert sum(groups) == 20, "every outcome written once"
    assert len(groups) < 20 and max(groups) > 1, f"grouped writes expected, got {groups}"


# ---------------------------------------------------------------------- many nodes, one tick


@pytest.mark.slow
def test_each_tick_runs_exactly_once_across_two_nodes(
    async_url: str, names: Names, engine: sa.Engine
) -> None:
    effects = f"{names.prefix}effects"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"CREATE TABLE {effects} (id bigserial PRIMARY KEY, scheduled_at timestamptz "
                "NOT NULL, node text NOT NULL, started_at timestamptz NOT NULL, "
                "finished_at timestamptz)"
            )
        )
    table = sa.table(
        effects,
        sa.column("id"),
        sa.column("scheduled_at"),
        sa.column("node"),
        sa.column("started_at"),
        sa.column("finished_at"),
    )

    class Tick(Job):
        """Records its run through a connection of its own, takes a while, records its end."""

        def __init__(self, recorder: AsyncEngine) -> None:
            super().__init__(JobConfig.recurring("tick", "* * * * * *"))
            self.recorder = recorder

        async def run(self, ctx: JobContext) -> None:
            async with self.recorder.begin() as conn:
                effect = (
                    await conn.execute(
                        sa.insert(table)
                        .values(
                            scheduled_at=ctx.scheduled_at,
                            node=ctx.node_id,
                            started_at=sa.func.clock_timestamp(),
                        )
                        .returning(table.c.id)
                    )
                ).scalar_one()
            try:
                await asyncio.sleep(0.1)
            finally:
                async with self.recorder.begin() as conn:
                    await conn.execute(
                        sa.update(table)
                        .where(table.c.id == effect)
                        .values(finished_at=sa.func.clock_timestamp())
                    )

    async def main() -> None:
        recorder = make_engine(async_url)

        async def seven_ticks() -> bool:  # connects the recorder before the first tick, too
            async with recorder.connect() as conn:
                count = await conn.scalar(sa.select(sa.func.count()).select_from(table))
                return int(count or 0) >= 7

        await seven_ticks()
        async with node(async_url, names) as a, node(async_url, names) as b:
            await a.schedule_job(Tick(recorder))
            await b.schedule_job(Tick(recorder))
            await asyncio.gather(a.start(), b.start())
            started = time.monotonic()
            await until(seven_ticks, timeout=20, message="seven ticks")
            assert time.monotonic() - started >= 5
            # Both stop claiming at once, so a tick handed back at shutdown is not run again.
            await asyncio.gather(a.shutdown(), b.shutdown())
        await recorder.dispose()

    asyncio.run(main())
    with engine.connect() as conn:
        twice = conn.execute(
            sa.text(f"SELECT scheduled_at FROM {effects} GROUP BY 1 HAVING count(*) > 1")
        ).all()
        ticks, span = conn.execute(
            sa.text(
                f"SELECT count(DISTINCT scheduled_at), "
                f"extract(epoch FROM max(scheduled_at) - min(scheduled_at)) FROM {effects}"
            )
        ).one()
        # Under the default misfire policy (coalesce) a tick that falls due while the previous
        # run is still going (or still being recorded) is folded into the next run. Any other
        # gap means a due tick was missed by every node.
        missed = conn.execute(
            sa.text(
                f"SELECT scheduled_at FROM (SELECT scheduled_at, "
                f"lag(scheduled_at) OVER w AS previous_tick, lag(finished_at) OVER w AS previous_end "
                f"FROM {names.runs_table} WHERE status = 'completed' "
                "WINDOW w AS (ORDER BY scheduled_at)) x "
                "WHERE scheduled_at > previous_tick + interval '1 second' "
                "AND scheduled_at - interval '1 second' > previous_end"
            )
        ).all()
        overlaps = conn.execute(
            sa.text(
                f"SELECT count(*) FROM (SELECT started_at, lag(finished_at) OVER "
                f"(ORDER BY started_at) AS previous_end FROM {effects}) x "
                "WHERE previous_end > started_at"
            )
        ).scalar()
        unfinished = conn.execute(
            sa.text(f"SELECT count(*) FROM {effects} WHERE finished_at IS NULL")
        ).scalar()
        runs_per_tick = conn.execute(
            sa.text(
                f"SELECT max(n) FROM (SELECT count(*) AS n FROM {names.runs_table} "
                "WHERE status <> 'released' GROUP BY scheduled_at) x"
            )
        ).scalar()
        history = "\n".join(
            str(tuple(row))
            for row in conn.execute(
                sa.text(
                    f"SELECT scheduled_at::time, node, started_at::time, finished_at::time "
                    f"FROM {effects} ORDER BY started_at"
                )
            )
        )
    assert twice == [], history  # no tick ran twice
    assert ticks >= 7 and span >= 6, history
    assert missed == [], history  # and no tick was missed while no run was in progress
    assert overlaps == 0 and unfinished == 0, history  # and no two runs overlapped
    assert runs_per_tick == 1


@pytest.mark.slow
def test_a_killed_nodes_job_is_recovered_by_another(
    async_url: str, names: Names, engine: sa.Engine
) -> None:
    root = Path(__file__).resolve().parents[2]
    victim = subprocess.Popen(
        [sys.executable, __file__, "node", json.dumps({"url": async_url, "prefix": names.prefix})],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: queue.SimpleQueue[str] = queue.SimpleQueue()

    def pump() -> None:
        for line in victim.stdout or ():
            output.put(line)

    threading.Thread(target=pump, daemon=True).start()

    def victim_id() -> str:
        lines: list[str] = []
        while not (lines and lines[-1].startswith("READY ")):
            try:
                lines.append(output.get(timeout=30))
            except queue.Empty:
                raise AssertionError("the victim node did not start:\n" + "".join(lines)) from None
        return lines[-1].split()[1]

    async def main() -> float:
        victim_node = victim_id()
        key = enqueue_elsewhere(engine, names, "slow")  # retries=0: a lost run is no failure
        async with node(async_url, names) as rescuer:
            ran: list[int] = []

            @rescuer.one_time("slow")
            async def slow(ctx: JobContext) -> None:
                ran.append(ctx.attempt)

            await until(has_status(rescuer, key, JobStatus.RUNNING), message="claimed")
            record = await rescuer.get_job(key)
            assert record is not None and record.node_id == victim_node
            async with rescuer:
                victim.send_signal(signal.SIGKILL)
                victim.wait(10)
                killed = time.monotonic()
                await until(has_status(rescuer, key, JobStatus.COMPLETED), timeout=15)
                elapsed = time.monotonic() - killed
                runs = await rescuer.list_runs(key)
            assert ran == [1]  # the lost run used up no attempt
            assert [(r.attempt, r.status, r.node_id) for r in runs] == [
                (1, RunStatus.COMPLETED, rescuer.node_id),
                (1, RunStatus.LOST, victim_node),
            ]
            return elapsed

    try:
        elapsed = asyncio.run(main())
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    # Bounded recovery: no_heartbeat_timeout + one maintenance pass (+ the victim's last beat
    # interval, and slack for scheduling).
    bound = (FAST["no_heartbeat_timeout"] + 2 * FAST["heartbeat_interval"]).total_seconds()
    assert elapsed < bound + 1.5


def run_node(spec: dict[str, Any]) -> None:
    """The victim of the crash test: claims "slow" jobs and hangs in them until killed."""

    async def main() -> None:
        async with node(spec["url"], Names(prefix=spec["prefix"])) as s:

            @s.one_time("slow")
            async def slow(ctx: JobContext) -> None:
                await asyncio.sleep(3600)

            async with s:
                print(f"READY {s.node_id}", flush=True)
                await asyncio.Event().wait()

    asyncio.run(main())


# ---------------------------------------------------------------------- shutdown


def test_graceful_shutdown_with_jobs_in_flight(
    async_url: str, names: Names, engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    late = threading.Event()

    async def main() -> dict[str, str]:
        async with node(async_url, names, shutdown_timeout=dt.timedelta(seconds=1)) as s:
            started: list[str] = []

            @s.one_time("finishes")  # ignores the cancellation and completes its work
            async def finishes(ctx: JobContext) -> None:
                started.append("finishes")
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    await asyncio.sleep(0.1)

            @s.one_time("stops")  # stops when asked: handed back, not failed
            async def stops(ctx: JobContext) -> None:
                started.append("stops")
                await asyncio.sleep(3600)

            @s.one_time("sync_finishes")  # thread code: sees only ctx.cancelled
            def sync_finishes(ctx: JobContext) -> None:
                started.append("sync_finishes")
                ctx.cancelled.wait(30)

            @s.one_time("stubborn")  # outlives the shutdown timeout
            async def stubborn(ctx: JobContext) -> None:
                started.append("stubborn")
                end = asyncio.get_running_loop().time() + 2.0
                while asyncio.get_running_loop().time() < end:
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.sleep(0.05)
                late.set()

            with caplog.at_level(logging.INFO, logger="pg_scheduler"):
                await s.start()
                keys = {n: await s.enqueue(n) for n in ("finishes", "stops", "sync_finishes")}
                keys["stubborn"] = await s.enqueue("stubborn")
                await until(lambda: len(started) == 4, message="all four running")
                await s.shutdown()
                with engine.connect() as conn:
                    mine = conn.execute(
                        sa.text(
                            f"SELECT count(*) FROM {names.jobs_table} "
                            "WHERE status = 'running' AND node_id = :n"
                        ),
                        {"n": s.node_id},
                    ).scalar()
                    stopped_at = conn.execute(
                        sa.text(f"SELECT stopped_at FROM {names.nodes_table} WHERE node_id = :n"),
                        {"n": s.node_id},
                    ).scalar()
                assert mine == 0 and stopped_at is not None
                # The stubborn job ends later, on the still-running loop; its outcome is dropped.
                await until(late.is_set, timeout=5)
                await until(lambda: "job.lease_lost" in events(caplog), timeout=5)
            result = {}
            for name, key in keys.items():
                record = await s.get_job(key)
                runs = await s.list_runs(key)
                assert record is not None
                result[name] = f"{record.status.value}/{runs[0].status.value}/{record.attempt}"
            return result

    assert asyncio.run(main()) == {
        "finishes": "completed/completed/1",
        "sync_finishes": "completed/completed/1",
        # Handed back: no attempt used up.
        "stops": "pending/released/0",
        "stubborn": "pending/released/0",
    }
    assert "job.released" in events(caplog) and "node.stopped" in events(caplog)


# ---------------------------------------------------------------------- wake-ups and outages


@pytest.mark.owner_only
def test_notify_wakes_an_idle_node_and_the_listener_reconnects(
    async_url: str, names: Names, engine: sa.Engine
) -> None:
    async def main() -> None:
        # With a 100 s check interval only a notification can make these jobs run quickly.
        async with node(async_url, names, job_check_interval=dt.timedelta(seconds=100)) as s:
            ran: list[Any] = []

            @s.one_time("wake")
            async def wake(ctx: JobContext) -> None:
                ran.append(ctx.params)

            async with s:
                await until(s.listener.connected.is_set, message="listening")
                first_pid = s.listener.backend_pid
                key = enqueue_elsewhere(engine, names, "wake", 1)
                await until(has_status(s, key, JobStatus.COMPLETED), timeout=5)
                with engine.connect() as conn:  # the LISTEN connection dies
                    assert conn.execute(sa.select(sa.func.pg_terminate_backend(first_pid))).scalar()
                await until(
                    lambda: (
                        s.listener.connected.is_set()
                        and s.listener.backend_pid not in (None, first_pid)
                    ),
                    message="listening again",
                )
                key = enqueue_elsewhere(engine, names, "wake", 2)
                await until(has_status(s, key, JobStatus.COMPLETED), timeout=5)
        assert ran == [1, 2]

    asyncio.run(main())


# ---------------------------------------------------------------------- configuration and schema


def test_configuration_is_validated_like_the_sync_scheduler(
    async_url: str, names: Names, engine: sa.Engine
) -> None:
    with pytest.raises(errors.PgSchedulerError, match="use Scheduler"):
        AsyncScheduler(SchedulerConfig(engine=engine))
    async_engine = make_engine(async_url)
    with pytest.raises(errors.PgSchedulerError, match="AsyncScheduler"):
        Scheduler(SchedulerConfig(engine=async_engine))
    with pytest.raises(errors.ConfigError, match="async_sessionmaker"):
        AsyncScheduler(SchedulerConfig(engine=async_engine, session_factory=sessionmaker(engine)))
    with pytest.raises(errors.ConfigError, match="max_concurrent_jobs"):
        AsyncScheduler(SchedulerConfig(engine=async_engine, max_concurrent_jobs=0))
    asyncio.run(async_engine.dispose())


if __name__ == "__main__" and sys.argv[1:2] == ["node"]:
    run_node(json.loads(sys.argv[2]))
