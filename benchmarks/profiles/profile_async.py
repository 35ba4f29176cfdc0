"""AsyncScheduler on its own: sequential enqueues, then a drain of async no-op jobs.

    python -m benchmarks.profiles.profile_async --driver asyncpg --enqueues 1000 --jobs 20000

``python -m benchmarks`` measures the threaded ``Scheduler`` (the peers' table compares one
library with the others); this gives the same two figures for ``AsyncScheduler`` on an async
engine: the mean time of one ``await scheduler.enqueue(...)`` in autocommit, and jobs/s for one
node at ``--concurrency`` to drain ``--jobs`` queued ``async def`` no-op jobs, with the node
process's CPU per job. Starts its own embedded PostgreSQL unless ``--url``.
"""

from __future__ import annotations

import asyncio
import os
import time

from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks import ours
from benchmarks.peers import _harness
from benchmarks.profiles.profile_drain import arguments, installed
from pg_scheduler import AsyncScheduler, JobContext, SchedulerConfig


async def _noop(ctx: JobContext) -> None:
    return None


async def measure(db: str, driver: str, enqueues: int, jobs: int, concurrency: int) -> None:
    engine = create_async_engine(
        ours.sqlalchemy_url(db, driver), pool_size=concurrency + 4, max_overflow=4
    )
    node = AsyncScheduler(SchedulerConfig(engine=engine, max_concurrent_jobs=concurrency))
    node.one_time(ours.NOOP)(_noop)
    try:
        for _ in range(20):  # warm: connections, prepared statements
            await node.enqueue(ours.NOOP)
        began = time.perf_counter()
        for _ in range(enqueues):
            await node.enqueue(ours.NOOP)
        each = (time.perf_counter() - began) / enqueues
        print(f"AsyncScheduler.enqueue ({driver}): {each * 1000:.3f} ms each ({enqueues} in a row)")

        await node.enqueue_many(ours.NOOP, [None] * jobs)
        finished = ours.ADAPTER.finished_jobs_sql()
        total = jobs + enqueues + 20
        with _harness.admin_connection(db) as watch:
            began, cpu = time.perf_counter(), os.times()
            await node.start()
            while (row := watch.execute(finished, {"n": total}).fetchone()) and row[0] < total:
                await asyncio.sleep(0.02)
            wall, used = time.perf_counter() - began, os.times()
        per_job = (used.user - cpu.user + used.system - cpu.system) / total * 1e6
        print(
            f"drain of {total} async no-op jobs, concurrency {concurrency}: "
            f"{total / wall:,.0f} jobs/s, node CPU {per_job:.0f} us per job"
        )
    finally:
        await node.shutdown()
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--driver", choices=("asyncpg", "psycopg"), default="asyncpg")
    parser.add_argument("--enqueues", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    with installed(args.url, "async") as (db, sync_engine):
        sync_engine.dispose()  # the schema is in; the measurement uses an async engine
        asyncio.run(measure(db, args.driver, args.enqueues, args.jobs, args.concurrency))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
