"""pg_scheduler harness: the same scenarios as ``benchmarks.peers``, through the same machinery.

pg_scheduler plugs into ``benchmarks.peers._harness`` as one more ``PeerAdapter``, so its figures
come from exactly the code that measures the peers (same worker processes, same clock points,
same "finished" polling). Configuration, library defaults unless stated:

* A synchronous ``Scheduler`` on a psycopg 3 ``Engine`` (the driver the README recommends), with
  ``max_concurrent_jobs=concurrency``; every other setting is the default (``job_check_interval``
  60 s, heartbeats every 30 s, LISTEN/NOTIFY on). The engine's pool holds ``concurrency + 4``
  connections so the pool itself never decides the result.
* Jobs are plain sync functions registered with ``scheduler.one_time(name)``; finished one-time
  jobs stay in the table as ``completed``, so "finished" is ``status = 'completed'``.
* Bulk enqueue: ``Scheduler.enqueue_many`` (one batched INSERT); one-by-one: ``Scheduler.enqueue``
  (its own transaction each).
* Cron: ``@scheduler.recurring(name, "* * * * * *")`` (6 fields: seconds first). Every tick is a
  run of the job row, and ``ctx.scheduled_at`` is its nominal tick.

* From asyncio (``ASYNC_LIBRARY``, ``ASYNCPG_LIBRARY``: the ``async_*`` scenarios): an
  ``AsyncScheduler`` on ``create_async_engine`` with ``postgresql+psycopg`` (or
  ``postgresql+asyncpg``), ``async def`` jobs, ``await scheduler.enqueue`` /
  ``enqueue_many``; the rest as above.

Scenarios that only pg_scheduler has (claim latency on a big table) live here too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from psycopg import conninfo as pg_conninfo
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import pg_scheduler
from benchmarks.library import Library
from benchmarks.peers import _harness
from benchmarks.peers._harness import WorkerOptions, report
from pg_scheduler import AsyncScheduler, JobContext, Scheduler, SchedulerConfig
from pg_scheduler.models import build_models
from pg_scheduler.naming import Names
from pg_scheduler.node.poller import claim_due

NAME = "ours"
NOOP = "bench_noop"
PROBE = "bench_probe"
TICK = "bench_tick"
PER_SECOND = "* * * * * *"
JOBS_TABLE = Names().jobs_table


def sqlalchemy_url(dsn: str, driver: str = "psycopg") -> sa.URL:
    """A SQLAlchemy URL for a libpq DSN (key=value or URI); a Unix socket directory stays a
    ``host`` query argument, which psycopg passes through to libpq."""
    params = _harness.dsn_params(dsn)
    host = params.pop("host", None)
    port = params.pop("port", None)
    query = {"host": host} if host and host.startswith("/") else {}
    return sa.URL.create(
        f"postgresql+{driver}",
        username=params.pop("user", None),
        password=params.pop("password", None),
        host=None if query else host,
        port=int(port) if port else None,
        database=params.pop("dbname", None),
        query=query,
    )


def libpq_dsn(url: str) -> str:
    """Accept a libpq DSN or a SQLAlchemy URL (``postgresql+driver://``); return a libpq DSN."""
    if "://" in url and "+" in url.split("://", 1)[0]:
        parsed = sa.make_url(url)
        params: dict[str, Any] = {
            "user": parsed.username,
            "password": parsed.password,
            "host": parsed.query.get("host") or parsed.host,
            "port": parsed.port,
            "dbname": parsed.database,
        }
        return pg_conninfo.make_conninfo(**{k: v for k, v in params.items() if v})
    return pg_conninfo.make_conninfo(url)


def make_engine(dsn: str, pool_size: int = 5) -> sa.Engine:
    return sa.create_engine(sqlalchemy_url(dsn), pool_size=pool_size, max_overflow=4)


# Job functions. Module level so worker processes resolve them after spawn.


def _noop(ctx: JobContext) -> None:
    return None


def _probe(ctx: JobContext) -> None:
    started = time.time()
    report("probe", int(ctx.params["sample"]), started)


def _tick(ctx: JobContext) -> None:
    started = time.time()
    report("tick", ctx.scheduled_at.timestamp(), started)


def _declare_jobs(
    scheduler: Scheduler | AsyncScheduler, cron: bool, jobs: tuple[Callable[..., Any], ...]
) -> None:
    noop, probe, tick = jobs
    scheduler.one_time(NOOP)(noop)
    scheduler.one_time(PROBE)(probe)
    if cron:
        scheduler.recurring(TICK, PER_SECOND)(tick)


def build_scheduler(engine: sa.Engine, concurrency: int, *, cron: bool = False) -> Scheduler:
    scheduler = Scheduler(SchedulerConfig(engine=engine, max_concurrent_jobs=concurrency))
    _declare_jobs(scheduler, cron, (_noop, _probe, _tick))
    return scheduler


class _Client:
    def __init__(self, dsn: str) -> None:
        self.engine = make_engine(dsn)
        # A scheduler that is never started: the producer side of an application.
        self.scheduler = build_scheduler(self.engine, 1)

    async def enqueue_batch(self, count: int) -> None:
        self.scheduler.enqueue_many(NOOP, [None] * count)

    async def enqueue_noop(self) -> None:
        self.scheduler.enqueue(NOOP)

    async def enqueue_probe(self, sample: int, run_at: float | None) -> None:
        when = dt.datetime.fromtimestamp(run_at, dt.timezone.utc) if run_at is not None else None
        self.scheduler.enqueue(PROBE, {"sample": sample}, run_at=when)

    async def close(self) -> None:
        self.engine.dispose()


class _Worker:
    def __init__(self, dsn: str, options: WorkerOptions) -> None:
        self.engine = make_engine(dsn, pool_size=options.concurrency + 4)
        self.scheduler = build_scheduler(self.engine, options.concurrency, cron=options.cron)

    async def start(self) -> None:
        self.scheduler.start()

    async def stop(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.scheduler.shutdown)
        finally:
            self.engine.dispose()

    def failed(self) -> BaseException | None:
        return None


class Adapter:
    name = NAME
    module = __name__
    cron_note = ""

    async def install(self, dsn: str) -> None:
        engine = make_engine(dsn)
        try:
            pg_scheduler.migrations.upgrade(engine)
        finally:
            engine.dispose()

    async def open_client(self, dsn: str) -> _Client:
        return _Client(dsn)

    async def make_worker(self, dsn: str, options: WorkerOptions) -> _Worker:
        return _Worker(dsn, options)

    def finished_jobs_sql(self) -> str:
        # n minus the rows still pending or running, as pgqueuer's harness counts: each count is
        # served by its partial index, so the watcher's cost falls as the backlog drains.
        return (
            f"SELECT %(n)s - (SELECT count(*) FROM {JOBS_TABLE} WHERE status = 'pending')"
            f" - (SELECT count(*) FROM {JOBS_TABLE} WHERE status = 'running')"
        )

    async def cron_runs(
        self, dsn: str, ticks: list[tuple[Any, float]]
    ) -> list[tuple[float, float]]:
        # The job's own ``ctx.scheduled_at`` is the nominal tick.
        return _harness.ticks_are_nominal(ticks)


ADAPTER = Adapter()


# ---------------------------------------------------------------------- AsyncScheduler
# The same scenarios from asyncio: an ``AsyncScheduler`` on an async engine
# (``create_async_engine``), ``async def`` job functions, every enqueue awaited.


async def _noop_async(ctx: JobContext) -> None:
    return None


async def _probe_async(ctx: JobContext) -> None:
    _probe(ctx)


async def _tick_async(ctx: JobContext) -> None:
    _tick(ctx)


def make_async_engine(dsn: str, driver: str, pool_size: int = 5) -> AsyncEngine:
    return create_async_engine(sqlalchemy_url(dsn, driver), pool_size=pool_size, max_overflow=4)


def build_async_scheduler(
    engine: AsyncEngine, concurrency: int, *, cron: bool = False
) -> AsyncScheduler:
    scheduler = AsyncScheduler(SchedulerConfig(engine=engine, max_concurrent_jobs=concurrency))
    _declare_jobs(scheduler, cron, (_noop_async, _probe_async, _tick_async))
    return scheduler


class _AsyncClient:
    def __init__(self, dsn: str, driver: str) -> None:
        self.engine = make_async_engine(dsn, driver)
        # Never started: the producer side of an asyncio application.
        self.scheduler = build_async_scheduler(self.engine, 1)

    async def enqueue_batch(self, count: int) -> None:
        await self.scheduler.enqueue_many(NOOP, [None] * count)

    async def enqueue_noop(self) -> None:
        await self.scheduler.enqueue(NOOP)

    async def enqueue_probe(self, sample: int, run_at: float | None) -> None:
        when = dt.datetime.fromtimestamp(run_at, dt.timezone.utc) if run_at is not None else None
        await self.scheduler.enqueue(PROBE, {"sample": sample}, run_at=when)

    async def close(self) -> None:
        await self.scheduler.shutdown()  # gives back the connection its enqueues kept
        await self.engine.dispose()


class _AsyncWorker:
    def __init__(self, dsn: str, driver: str, options: WorkerOptions) -> None:
        self.engine = make_async_engine(dsn, driver, pool_size=options.concurrency + 4)
        self.scheduler = build_async_scheduler(self.engine, options.concurrency, cron=options.cron)

    async def start(self) -> None:
        await self.scheduler.start()

    async def stop(self) -> None:
        try:
            await self.scheduler.shutdown()
        finally:
            await self.engine.dispose()

    def failed(self) -> BaseException | None:
        return None


class AsyncAdapter(Adapter):
    """``AsyncScheduler`` with the SQLAlchemy async ``driver`` (``psycopg`` or ``asyncpg``); the
    schema, the finished-jobs count and the cron ticks are the sync adapter's."""

    def __init__(self, driver: str, attribute: str) -> None:
        self.driver = driver
        self.name = f"{NAME}_{driver}"
        self.module = f"{__name__}:{attribute}"

    async def open_client(self, dsn: str) -> _AsyncClient:  # type: ignore[override]
        return _AsyncClient(dsn, self.driver)

    async def make_worker(  # type: ignore[override]
        self, dsn: str, options: WorkerOptions
    ) -> _AsyncWorker:
        return _AsyncWorker(dsn, self.driver, options)


ASYNC_ADAPTER = AsyncAdapter("psycopg", "ASYNC_ADAPTER")
ASYNCPG_ADAPTER = AsyncAdapter("asyncpg", "ASYNCPG_ADAPTER")
#: ``AsyncScheduler`` on psycopg 3 async: what the async scenarios compare with pgqueuer.
ASYNC_LIBRARY = Library(ASYNC_ADAPTER)
#: The same on asyncpg (its own rows, pg_scheduler only).
ASYNCPG_LIBRARY = Library(ASYNCPG_ADAPTER)
LIBRARY = Library(ADAPTER, for_asyncio=ASYNC_LIBRARY)


# ---------------------------------------------------------------------- pg_scheduler only

#: How the big table of the claim-latency scenario is made up (rows of the bench job's name).
BIG_TABLE_FINISHED_SHARE = 0.9


def claim_latency(dsn: str, rows: int = 1_000_000, samples: int = 200) -> dict[str, Any]:
    """Latency of one poll pass (the claim statement, then the next-due look-up, in one
    transaction: what the poller runs) with ``rows`` rows in the jobs table, against the same
    pass on an empty table.

    The big table is 90 % finished one-time jobs (history kept for retention) and 10 % pending
    jobs due in the future, all of the claimed name; each sample enqueues one due job and claims
    it with 32 free slots, in this process (no worker, no job run).
    """
    empty = _claim_samples(dsn, 0, samples)
    big = _claim_samples(dsn, rows, samples)
    return {
        "rows": rows,
        "empty": empty,
        "big": big,
        "ratio": statistics.median(big) / statistics.median(empty),
    }


def _claim_samples(dsn: str, rows: int, samples: int) -> list[float]:
    with _harness.bench_database(dsn, NAME) as db:
        engine = make_engine(db)
        try:
            pg_scheduler.migrations.upgrade(engine)
            if rows:
                _fill_big_table(engine, rows)
            with _harness.admin_connection(db) as conn:
                conn.execute("VACUUM ANALYZE")
            scheduler = build_scheduler(engine, 32)
            node = "bench-claim"
            names = [NOOP]
            latencies: list[float] = []
            for _ in range(samples + 5):
                scheduler.enqueue(NOOP)
                started = time.perf_counter()
                with scheduler.transaction() as repo:
                    claimed, _wait = claim_due(repo, node, names, 32)
                latencies.append(time.perf_counter() - started)
                assert len(claimed) == 1, claimed
            return latencies[5:]  # the first passes compile and prepare statements
        finally:
            engine.dispose()


_SECOND = sa.literal(dt.timedelta(seconds=1), sa.Interval)
_HOUR = sa.literal(dt.timedelta(hours=1), sa.Interval)
_DAY = sa.literal(dt.timedelta(days=1), sa.Interval)


def _fill_big_table(engine: sa.Engine, rows: int) -> None:
    jobs = build_models(Names()).jobs
    finished = int(rows * BIG_TABLE_FINISHED_SHARE)
    series = sa.func.generate_series(1, sa.bindparam("n")).table_valued("i").render_derived()
    key = sa.func.concat(NOOP, "#big-", series.c.i)
    common = {
        "name": NOOP,
        "job_type": "one_time",
        "params": sa.null(),
        "max_retries": 0,
    }
    with engine.begin() as conn:
        conn.execute(
            sa.insert(jobs).from_select(
                [*common, "key", "status", "attempt", "scheduled_at", "finished_at"],
                sa.select(
                    *(sa.literal(v) if k != "params" else v for k, v in common.items()),
                    key,
                    sa.literal("completed"),
                    sa.literal(1),
                    sa.func.now() - _DAY,
                    sa.func.now() - _HOUR,
                ),
            ),
            {"n": finished},
        )
        future = (
            sa.func.generate_series(finished + 1, sa.bindparam("m"))
            .table_valued("i")
            .render_derived()
        )
        future_key = sa.func.concat(NOOP, "#big-", future.c.i)
        conn.execute(
            sa.insert(jobs).from_select(
                [*common, "key", "status", "next_run", "scheduled_at"],
                sa.select(
                    *(sa.literal(v) if k != "params" else v for k, v in common.items()),
                    future_key,
                    sa.literal("pending"),
                    sa.func.now() + _DAY + future.c.i * _SECOND,
                    sa.func.now() + _DAY,
                ),
            ),
            {"m": rows},
        )
