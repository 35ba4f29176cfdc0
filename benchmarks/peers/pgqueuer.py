"""pgqueuer harness (asyncpg driver, the library's default).

Configuration choices, all library defaults unless stated:

* One ``asyncpg`` connection per process wrapped in ``AsyncpgDriver`` (what ``pgq run``
  and the README use).
* Workers are a ``PgQueuer`` (queue manager + scheduler manager, as ``pgq run`` starts
  them) with ``max_concurrent_tasks=concurrency`` and the default ``batch_size=10``.
* Jobs are removed from the ``pgqueuer`` table when done, so "finished" is
  ``n - rows left``.
* Cron: ``@pgq.schedule(..., "* * * * * *")`` (croniter's 6th field = seconds).  The
  handler runs inside the scheduler manager itself, not as a queued job.  Its nominal
  tick is the ``next_run`` value the scheduler consumed; a trigger on
  ``pgqueuer_schedules`` records it (``bench_cron_picks``) so it can be matched to the
  run via the pick transaction's ``now()`` (= ``schedule.updated``).
* pgqueuer is asyncio-native: the ``async_*`` scenarios run it exactly as the others do
  (``Queries.enqueue`` one at a time; the drain with ``best(concurrency)``).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from pgqueuer import AsyncpgDriver, PgQueuer, Queries
from pgqueuer.models import Job, Schedule

from benchmarks.library import Library
from benchmarks.peers import _harness
from benchmarks.peers._harness import WorkerOptions, report

NAME = "pgqueuer"
NOOP = "bench_noop"
PROBE = "bench_probe"
TICK = "bench_tick"
PER_SECOND = "* * * * * *"
BATCH_SIZE = 10  # pgqueuer's default dequeue batch
SWEEP_BATCH_SIZES = (10, 16, 32, 64)


def _default_batch(concurrency: int) -> int:
    # pgqueuer requires max_concurrent_tasks >= 2 * batch_size.
    return max(1, min(BATCH_SIZE, concurrency // 2))


def tuning_candidates(concurrency: int) -> list[dict[str, Any]]:
    """The settings a sweep tries at ``concurrency``: every swept batch size pgqueuer accepts
    there, else its default rule (small concurrencies)."""
    allowed = [b for b in SWEEP_BATCH_SIZES if concurrency >= 2 * b]
    return [{"batch_size": b} for b in allowed] or [{"batch_size": _default_batch(concurrency)}]


#: What won the last sweep, by concurrency (``--sweep`` measures it again).
BEST: dict[int, dict[str, Any]] = {32: {"batch_size": 16}}


def best(concurrency: int) -> dict[str, Any]:
    return BEST.get(concurrency) or {"batch_size": _default_batch(concurrency)}


def _micros(value: datetime) -> int:
    return round(value.timestamp() * 1_000_000)


# Job functions.  Module level so worker processes resolve them after spawn.


async def _noop(job: Job) -> None:
    return None


async def _probe(job: Job) -> None:
    started = time.time()
    assert job.payload is not None
    report("probe", int(job.payload), started)


async def _tick(schedule: Schedule) -> None:
    started = time.time()
    # schedule.updated is the now() of the pick transaction, logged by the trigger.
    report("tick", _micros(schedule.updated), started)


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(**_harness.asyncpg_connect_kwargs(dsn))


class _Client:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection
        self.queries = Queries(AsyncpgDriver(connection))

    async def enqueue_batch(self, count: int) -> None:
        # The list form of enqueue is pgqueuer's batch API: one INSERT ... unnest().
        await self.queries.enqueue([NOOP] * count, [None] * count, [0] * count)

    async def enqueue_noop(self) -> None:
        await self.queries.enqueue(NOOP, None)

    async def enqueue_probe(self, sample: int, run_at: float | None) -> None:
        # pgqueuer only takes a relative delay (added to the server's now()).
        delay = timedelta(seconds=max(0.0, run_at - time.time())) if run_at else None
        await self.queries.enqueue(PROBE, str(sample).encode(), execute_after=delay)

    async def close(self) -> None:
        await self.connection.close()


class _Worker:
    def __init__(self, connection: asyncpg.Connection, options: WorkerOptions) -> None:
        self.connection = connection
        self.options = options
        self.pgq = PgQueuer(AsyncpgDriver(connection))
        self.pgq.entrypoint(NOOP)(_noop)
        self.pgq.entrypoint(PROBE)(_probe)
        if options.cron:
            self.pgq.schedule(TICK, PER_SECOND)(_tick)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        concurrency = self.options.concurrency
        batch_size = int(self.options.settings.get("batch_size", _default_batch(concurrency)))
        self.task = asyncio.create_task(
            self.pgq.run(batch_size=batch_size, max_concurrent_tasks=concurrency)
        )

    async def stop(self) -> None:
        self.pgq.shutdown.set()
        try:
            if self.task is not None:
                await asyncio.wait_for(self.task, _harness.STOP_TIMEOUT_S)
        finally:
            await self.connection.close()

    def failed(self) -> BaseException | None:
        return _harness.task_failure(self.task, "pgqueuer worker")


class Adapter:
    name = NAME
    module = __name__
    cron_note = (
        "schedule handler runs inside the scheduler manager (not a queued job); next_run is "
        "recomputed from now() at each pick, so late picks skip ticks instead of catching up"
    )

    async def install(self, dsn: str) -> None:
        connection = await _connect(dsn)
        try:
            await Queries(AsyncpgDriver(connection)).install()
            await connection.execute(_harness.pick_log_sql("pgqueuer_schedules"))
        finally:
            await connection.close()

    async def open_client(self, dsn: str) -> _Client:
        return _Client(await _connect(dsn))

    async def make_worker(self, dsn: str, options: WorkerOptions) -> _Worker:
        return _Worker(await _connect(dsn), options)

    def finished_jobs_sql(self) -> str:
        return "SELECT %(n)s - count(*) FROM pgqueuer"

    async def cron_runs(
        self, dsn: str, ticks: list[tuple[Any, float]]
    ) -> list[tuple[float, float]]:
        connection = await _connect(dsn)
        try:
            rows = await connection.fetch(_harness.PICKS_SQL)
        finally:
            await connection.close()
        return _harness.match_picks(ticks, rows)


ADAPTER = Adapter()
LIBRARY = Library(ADAPTER, best=best, tuning_candidates=tuning_candidates, asyncio_native=True)
