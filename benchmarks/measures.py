"""Scenarios measured the same way for every library, on top of ``benchmarks.peers._harness``.

The peer harness covers throughput and latency. These two add what the issue asks beyond it, for
pg_scheduler and each peer alike, through the same ``PeerAdapter`` protocol:

* ``statements_per_job``: every statement one node sends to PostgreSQL while it drains a
  backlog (pg_stat_statements, top level, BEGIN and COMMIT included), per job.
* ``rss``: the resident memory of one worker process when idle, after a first batch of jobs
  (caches warm), and after the whole run; "flat" means the last two agree.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.peers import _harness
from benchmarks.peers._harness import PeerAdapter, WorkerGroup, WorkerOptions

POLL_S = 0.05


def _enqueue(adapter: PeerAdapter, db: str, count: int, chunk: int = 20000) -> None:
    async def body() -> None:
        client = await adapter.open_client(db)
        try:
            left = count
            while left:
                size = min(chunk, left)
                await client.enqueue_batch(size)
                left -= size
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(body(), 120.0 + count / 100.0))


def _install(adapter: PeerAdapter, db: str) -> None:
    asyncio.run(asyncio.wait_for(adapter.install(db), 120.0))


def _wait_finished(
    conn: psycopg.Connection[Any], adapter: PeerAdapter, group: WorkerGroup, n: int, timeout: float
) -> int:
    """Poll until ``n`` jobs are finished; returns how many polls it took."""
    query = adapter.finished_jobs_sql()
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        polls += 1
        row = conn.execute(query, {"n": n}).fetchone()
        if row and int(row[0]) >= n:
            return polls
        if time.monotonic() > deadline:
            raise TimeoutError(f"{adapter.name}: fewer than {n} jobs finished in {timeout:.0f} s")
        group.check_alive()
        time.sleep(POLL_S)


def statements_per_job(
    adapter: PeerAdapter, dsn: str, n: int = 5000, concurrency: int = 32
) -> dict[str, Any]:
    """Statements one node sends per job while draining ``n`` queued no-op jobs.

    Counted with pg_stat_statements on the bench database; the harness's own polling queries
    are counted on their own connection's tally and subtracted.
    """
    if _harness.statement_count_method(dsn) != "pg_stat_statements":
        return {"error": "pg_stat_statements is not available on this server"}
    with _harness.bench_database(dsn, adapter.name) as db:
        dbname = _harness.dsn_params(db)["dbname"]
        _install(adapter, db)
        _enqueue(adapter, db, n)
        with _harness.admin_connection(db) as conn:
            conn.execute("ANALYZE")
            conn.execute("CHECKPOINT")
        options = WorkerOptions(concurrency=concurrency)
        with (
            _harness.admin_connection(dsn) as admin,
            psycopg.connect(db, autocommit=True) as watch,
            WorkerGroup(adapter, db, options, 1) as group,
        ):
            admin.execute(
                "SELECT pg_stat_statements_reset(0, d.oid, 0) FROM pg_database d"
                " WHERE d.datname = %s",
                (dbname,),
            )
            started = group.go()
            polls = _wait_finished(watch, adapter, group, n, 120.0 + n / 20.0)
            elapsed = time.time() - started
            rows = admin.execute(
                "SELECT query, calls FROM pg_stat_statements s JOIN pg_database d"
                " ON d.oid = s.dbid WHERE d.datname = %s ORDER BY calls DESC",
                (dbname,),
            ).fetchall()
    total = sum(int(calls) for _, calls in rows) - polls
    top = [
        {"per_job": int(calls) / n, "query": " ".join(str(query).split())[:160]}
        for query, calls in rows[:8]
    ]
    return {"per_job": total / n, "jobs": n, "jobs_per_s": n / elapsed, "top": top}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for process {pid}")


def rss(
    adapter: PeerAdapter, dsn: str, jobs: int = 100_000, warmup: int = 10_000, concurrency: int = 32
) -> dict[str, Any]:
    """Resident memory (MB) of one worker process: idle, after ``warmup`` jobs, after ``jobs``."""
    with _harness.bench_database(dsn, adapter.name) as db:
        _install(adapter, db)
        options = WorkerOptions(concurrency=concurrency)
        with (
            psycopg.connect(db, autocommit=True) as watch,
            WorkerGroup(adapter, db, options, 1) as group,
        ):
            pid = group.processes[0].pid
            assert pid is not None
            group.go()
            time.sleep(_harness.IDLE_WARMUP_S)
            idle = _rss_mb(pid)
            _enqueue(adapter, db, warmup)
            _wait_finished(watch, adapter, group, warmup, 120.0 + warmup / 20.0)
            warm = _rss_mb(pid)
            _enqueue(adapter, db, jobs - warmup)
            _wait_finished(watch, adapter, group, jobs, 120.0 + jobs / 20.0)
            after = _rss_mb(pid)
    return {
        "idle_mb": idle,
        "warm_mb": warm,
        "after_mb": after,
        "growth_mb": after - warm,
        "jobs": jobs,
        "warmup_jobs": warmup,
    }
