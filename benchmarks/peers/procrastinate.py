"""procrastinate harness (``PsycopgConnector``, the library's async connector).

Configuration choices, all library defaults unless stated:

* ``PsycopgConnector(conninfo=dsn)``: psycopg_pool's default pool size (4) per process. The
  worker's pool size (``pool_size``: its connections, which bound how many jobs it fetches and
  finishes at once) is tuned for the drains: ``tuning_candidates`` lists what ``python -m benchmarks
  --sweep`` tries, ``BEST`` what won the last sweep.
* Workers: ``app.run_worker_async(concurrency=concurrency, install_signal_handlers=False)``;
  polling interval 5 s, LISTEN/NOTIFY on, finished jobs kept (``delete_jobs="never"``),
  so "finished" is ``status = 'succeeded'``.
* Bulk enqueue: ``Task.batch_defer_async``.
* Cron: ``@app.periodic(cron="* * * * * *")`` (6th field = seconds).  Each tick is a real
  job deduplicated by the database, and the job receives its nominal ``timestamp``.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any

from procrastinate import App, PsycopgConnector

from benchmarks.library import Library
from benchmarks.peers import _harness
from benchmarks.peers._harness import WorkerOptions, report

NAME = "procrastinate"
NOOP = "bench_noop"
PROBE = "bench_probe"
TICK = "bench_tick"
PER_SECOND = "* * * * * *"


# Job functions.  Module level so worker processes register the same callables.


async def _noop() -> None:
    return None


async def _probe(sample: int) -> None:
    started = time.time()
    report("probe", sample, started)


async def _tick(timestamp: int) -> None:
    started = time.time()
    report("tick", timestamp, started)


def tuning_candidates(concurrency: int) -> list[dict[str, Any]]:
    """The settings a sweep tries at ``concurrency``: the worker's pool size, from psycopg_pool's
    default (4) up to one connection per concurrent job."""
    sizes = sorted({4, *(s for s in (8, 16, 32) if s <= max(4, concurrency))})
    return [{"pool_size": size} for size in sizes]


#: What won the last sweep, by concurrency (``--sweep`` measures it again).
BEST: dict[int, dict[str, Any]] = {32: {"pool_size": 4}}  # the 2026-12-07 sweep (RESULTS.md)


def best(concurrency: int) -> dict[str, Any]:
    return BEST.get(concurrency, {})


def _build_app(dsn: str, *, cron: bool = False, pool_size: int | None = None) -> App:
    # A fresh App per use: procrastinate binds tasks to an app and the app to one
    # connector, and every scenario works on its own database.
    sizes = {} if pool_size is None else {"min_size": pool_size, "max_size": pool_size}
    app = App(connector=PsycopgConnector(conninfo=dsn, **sizes))
    app.task(name=NOOP)(_noop)
    app.task(name=PROBE)(_probe)
    if cron:
        # Registering the periodic task is what turns on the worker's periodic deferrer,
        # so it is only done for the cron scenario.
        app.periodic(cron=PER_SECOND, periodic_id="bench")(app.task(name=TICK)(_tick))
    return app


class _Client:
    def __init__(self, app: App) -> None:
        self.app = app
        self.noop = app.tasks[NOOP]
        self.probe = app.tasks[PROBE]

    async def enqueue_batch(self, count: int) -> None:
        await self.noop.batch_defer_async(*({} for _ in range(count)))

    async def enqueue_noop(self) -> None:
        await self.noop.defer_async()

    async def enqueue_probe(self, sample: int, run_at: float | None) -> None:
        if run_at is None:
            await self.probe.defer_async(sample=sample)
        else:
            schedule_at = datetime.fromtimestamp(run_at, timezone.utc)
            await self.probe.configure(schedule_at=schedule_at).defer_async(sample=sample)

    async def close(self) -> None:
        await self.app.close_async()


class _Worker:
    def __init__(self, app: App, options: WorkerOptions) -> None:
        self.app = app
        self.options = options
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(
            self.app.run_worker_async(
                concurrency=self.options.concurrency, install_signal_handlers=False
            )
        )

    async def stop(self) -> None:
        try:
            if self.task is not None:
                # Cancelling run_worker_async is procrastinate's documented way to stop a
                # worker embedded in an event loop: it finishes running jobs first.
                self.task.cancel()
                await asyncio.wait([self.task], timeout=_harness.STOP_TIMEOUT_S)
        finally:
            await self.app.close_async()

    def failed(self) -> BaseException | None:
        return _harness.task_failure(self.task, "procrastinate worker")


class Adapter:
    name = NAME
    module = __name__
    cron_note = ""

    async def install(self, dsn: str) -> None:
        app = _build_app(dsn)
        await app.open_async()
        try:
            await app.schema_manager.apply_schema_async()
        finally:
            await app.close_async()

    async def open_client(self, dsn: str) -> _Client:
        app = _build_app(dsn)
        await app.open_async()
        return _Client(app)

    async def make_worker(self, dsn: str, options: WorkerOptions) -> _Worker:
        pool_size = options.settings.get("pool_size")
        app = _build_app(dsn, cron=options.cron, pool_size=pool_size)
        await app.open_async()
        return _Worker(app, options)

    def finished_jobs_sql(self) -> str:
        return "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"

    async def cron_runs(
        self, dsn: str, ticks: list[tuple[Any, float]]
    ) -> list[tuple[float, float]]:
        # The job's own ``timestamp`` argument is the nominal tick.
        return _harness.ticks_are_nominal(ticks)


ADAPTER = Adapter()
LIBRARY = Library(ADAPTER, best=best, tuning_candidates=tuning_candidates, asyncio_native=True)
