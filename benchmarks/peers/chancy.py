"""chancy harness (psycopg3 pools, asyncio executor).

Configuration choices, library defaults unless stated:

* ``Chancy(dsn)`` with its default plugins (leadership, pruner, recovery, metrics,
  workflow) and default pool (1..10 connections).  Its logger is set to WARNING: at the
  default INFO level chancy logs one line per job, which would benchmark the terminal.
* Jobs go to a queue ``bench`` declared with ``concurrency=concurrency``,
  ``executor=Chancy.Executor.Async`` (the executor meant for async I/O jobs; the default
  process executor would measure process-pool overhead instead) and ``eager_polling=True``
  (documented option to fetch again as soon as a job completes; without it a worker only
  refills every ``polling_interval`` = 5 s).  ``polling_interval`` stays at its default.
* Bulk enqueue: ``push_many`` (its default 1000-job transactions).
* Tuned for the drains (``tuning_candidates``: what ``python -m benchmarks --sweep`` tries; ``BEST``: what
  won the last sweep): the worker's ``send_outgoing_interval`` (how often it writes finished
  jobs back; default 1 s) and the pool's ``max_connection_pool_size`` (default 10).
* Finished = ``state = 'succeeded'``; chancy writes job results back in batches every
  second, so drain includes up to ~1 s of that write-behind.
* Cron: the ``Cron`` plugin with ``poll_interval=1`` (default 60 s) and a 6-field
  (seconds) expression.  The nominal tick is the ``next_run`` consumed by the poll, logged
  by a trigger on ``chancy_cron`` and matched to the job through ``created_at`` (the
  ``now()`` of the same transaction).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Any

from chancy import Chancy, Job, Queue, QueuedJob, Worker
from chancy.plugins.cron import Cron

from benchmarks.library import Library
from benchmarks.peers import _harness
from benchmarks.peers._harness import WorkerOptions, report

NAME = "chancy"
QUEUE = "bench"
TICK_KEY = "bench_tick"
PER_SECOND = "* * * * * *"


def _quiet_logger() -> logging.Logger:
    logger = logging.getLogger("benchmarks.peers.chancy")
    logger.setLevel(logging.WARNING)
    return logger


# Job functions.  Module level: chancy stores ``module.function`` and imports it.


async def _noop() -> None:
    return None


async def _probe(sample: int) -> None:
    started = time.time()
    report("probe", sample, started)


async def _tick(*, context: QueuedJob) -> None:
    started = time.time()
    report("tick", round(context.created_at.timestamp() * 1_000_000), started)


# chancy injects the running job into keyword-only parameters whose annotation is a
# QueuedJob subclass, checked with issubclass() on the raw annotation.  Postponed
# annotations (PEP 563, used in this file) turn it into a string, so restore the class.
_tick.__annotations__["context"] = QueuedJob


def tuning_candidates(concurrency: int) -> list[dict[str, Any]]:
    """The settings a sweep tries at ``concurrency``: write-back every 1 s (default) or 0.1 s,
    with the default pool (10) or one connection per concurrent job."""
    pools = sorted({10, max(10, concurrency)})
    return [
        {"send_outgoing_interval": interval, "max_connection_pool_size": pool}
        for interval in (1.0, 0.1)
        for pool in pools
    ]


#: What won the last sweep, by concurrency (``--sweep`` measures it again).
BEST: dict[int, dict[str, Any]] = {
    32: {"send_outgoing_interval": 0.1, "max_connection_pool_size": 10}  # the 2026-12-07 sweep
}


def best(concurrency: int) -> dict[str, Any]:
    return BEST.get(concurrency, {})


def _app(dsn: str, *, cron: bool = False, max_pool: int | None = None) -> Chancy:
    # The Cron plugin is always present for migrations (one schema for every scenario) but
    # only polls in the cron scenario.
    plugins = [Cron(poll_interval=1)] if cron else []
    pool = {} if max_pool is None else {"max_connection_pool_size": max_pool}
    return Chancy(dsn, plugins=plugins, log=_quiet_logger(), **pool)


def _queue(concurrency: int) -> Queue:
    return Queue(QUEUE, concurrency=concurrency, executor=Chancy.Executor.Async, eager_polling=True)


_NOOP_JOB = Job.from_func(_noop, queue=QUEUE)


class _Client:
    def __init__(self, chancy: Chancy) -> None:
        self.chancy = chancy

    async def enqueue_batch(self, count: int) -> None:
        async for _references in self.chancy.push_many([_NOOP_JOB] * count):
            pass

    async def enqueue_noop(self) -> None:
        await self.chancy.push(_NOOP_JOB)

    async def enqueue_probe(self, sample: int, run_at: float | None) -> None:
        job = Job.from_func(_probe, queue=QUEUE, kwargs={"sample": sample})
        if run_at is not None:
            job = job.with_scheduled_at(datetime.fromtimestamp(run_at, timezone.utc))
        await self.chancy.push(job)

    async def close(self) -> None:
        await self.chancy.pool.close()


class _Worker:
    def __init__(self, chancy: Chancy, send_outgoing_interval: float | None = None) -> None:
        self.chancy = chancy
        self.worker = Worker(chancy, register_signal_handlers=False)
        if send_outgoing_interval is not None:
            self.worker.send_outgoing_interval = send_outgoing_interval
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.worker.start()
        # start() returns once running; wait_for_shutdown() ends only if the worker dies
        # or is stopped, which is what failed() watches.
        self.task = asyncio.create_task(self.worker.wait_for_shutdown())

    async def stop(self) -> None:
        try:
            await self.worker.stop(timeout=_harness.STOP_TIMEOUT_S)
        finally:
            await self.chancy.pool.close()

    def failed(self) -> BaseException | None:
        return _harness.task_failure(self.task, "chancy worker")


class Adapter:
    name = NAME
    module = __name__
    cron_note = (
        "Cron plugin polls every poll_interval (set to 1 s; default 60 s) and recomputes "
        "next_run from now; a tick is skipped while the previous tick's job (same "
        "unique_key) is not yet recorded as finished"
    )

    async def install(self, dsn: str) -> None:
        chancy = Chancy(dsn, plugins=[Cron()], log=_quiet_logger())
        async with chancy:
            await chancy.migrate()
            await chancy.declare(_queue(32))
            async with chancy.pool.connection() as conn:
                await conn.execute(_harness.pick_log_sql("chancy_cron"))
            tick = Job.from_func(_tick, queue=QUEUE, unique_key=TICK_KEY)
            await Cron.schedule(chancy, PER_SECOND, tick)
            # The schedule row exists in every scenario; only cron workers poll it.

    async def open_client(self, dsn: str) -> _Client:
        chancy = _app(dsn)
        await chancy.pool.open()
        return _Client(chancy)

    async def make_worker(self, dsn: str, options: WorkerOptions) -> _Worker:
        settings = options.settings
        chancy = _app(dsn, cron=options.cron, max_pool=settings.get("max_connection_pool_size"))
        await chancy.pool.open()
        # Queue settings live in the database; upsert so this run's concurrency applies.
        await chancy.declare(_queue(options.concurrency), upsert=True)
        return _Worker(chancy, settings.get("send_outgoing_interval"))

    def finished_jobs_sql(self) -> str:
        return "SELECT count(*) FROM chancy_jobs WHERE state = 'succeeded'"

    async def cron_runs(
        self, dsn: str, ticks: list[tuple[Any, float]]
    ) -> list[tuple[float, float]]:
        chancy = _app(dsn)
        async with chancy, chancy.pool.connection() as conn:
            cursor = await conn.execute(_harness.PICKS_SQL)
            picks = await cursor.fetchall()
        return _harness.match_picks(ticks, picks)


ADAPTER = Adapter()
LIBRARY = Library(ADAPTER, best=best, tuning_candidates=tuning_candidates, asyncio_native=True)
