"""Claim latency against the due backlog, with the planner statistics never gathered and fresh.

    python -m benchmarks.claim_latency                       # embedded PostgreSQL, full table
    python -m benchmarks.claim_latency --url postgresql://postgres@127.0.0.1:5432/test
    python -m benchmarks.claim_latency --backlogs 0 10000 --samples 50     # a quick look
    python -m benchmarks.claim_latency --planner-settings off              # the claim before

For each due backlog (0, 10,000, 100,000 and 1,000,000 jobs by default) a database of its own is
created, pg_scheduler installed, autovacuum switched off on its jobs table (so it cannot analyze
it behind the benchmark's back) and the backlog inserted with one ``INSERT ... SELECT
generate_series`` (due a minute ago). Then, first with the table never analyzed (checked:
``reltuples = -1`` before and after), then after ``ANALYZE``, each sample enqueues ``--limit``
due jobs (untimed: the due backlog stays the same size) and times one claim pass of ``--limit``
free slots, as the poller runs it: ``claim_due`` on the scheduler's kept autocommit connection.
A cell is the median pass; "x empty" divides it by the empty table's median in the same mode
(the target: at most 2x). ``--planner-settings off`` runs the claim without its planner settings
(``queries.PLANNER_SETTINGS``), as it was before they were added.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import pg_scheduler
from benchmarks import ours
from benchmarks.peers import _harness
from pg_scheduler.db import queries, repository
from pg_scheduler.models import build_models
from pg_scheduler.naming import Names
from pg_scheduler.node.poller import claim_due

BACKLOGS = (0, 10_000, 100_000, 1_000_000)
MODES = ("never analyzed", "analyzed")
NODE = "bench-claim-latency"
TARGET = 2.0


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    if url:
        yield ours.libpq_dsn(url)
    else:
        with _harness.embedded_postgres_dsn(pg_stat_statements=False) as dsn:
            yield dsn


def fill(conn: Any, table: str, backlog: int) -> None:
    conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    if backlog:
        conn.execute(
            f"INSERT INTO {table} (key, name, job_type, status, next_run, scheduled_at)"
            f" SELECT '{ours.NOOP}#due-' || i, '{ours.NOOP}', 'one_time', 'pending',"
            " now() - interval '1 minute', now() - interval '1 minute'"
            " FROM generate_series(1, %s) AS i",
            (backlog,),
        )
    conn.execute("CHECKPOINT")


def reltuples(conn: Any, table: str) -> float:
    row = conn.execute(f"SELECT reltuples FROM pg_class WHERE oid = '{table}'::regclass").fetchone()
    return float(row[0])


def passes(scheduler: pg_scheduler.Scheduler, samples: int, limit: int) -> list[float]:
    """Seconds per claim pass of ``limit`` free slots, each after enqueueing ``limit`` due jobs."""
    names = [ours.NOOP]
    timings: list[float] = []
    for sample in range(samples + 5):
        scheduler.enqueue_many(ours.NOOP, [None] * limit)
        started = time.perf_counter()
        with scheduler.autocommit(scheduler.claim_connection) as repo:
            claimed, _wait = claim_due(repo, NODE, names, limit)
        elapsed = time.perf_counter() - started
        if len(claimed) != limit:
            raise RuntimeError(f"claimed {len(claimed)} of {limit} due jobs")
        if sample >= 5:  # the first passes compile and prepare the statements
            timings.append(elapsed)
    return timings


def claim_buffers(scheduler: pg_scheduler.Scheduler, engine: sa.Engine, limit: int) -> int:
    """Shared buffers one claim of ``limit`` jobs touches (hit or read), from its ``EXPLAIN
    (ANALYZE, BUFFERS)`` under the settings ``claim`` runs with (after enqueueing ``limit`` due
    jobs, as each sample does); rolled back. A figure the machine's load does not move: it grows
    with what the claim reads."""
    scheduler.enqueue_many(ours.NOOP, [None] * limit)
    with engine.connect() as conn:
        repo = repository.JobRepository(conn, build_models(Names()))
        stmt = repo.claim_statement(NODE, [ours.NOOP], limit)
        sql = stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        conn.exec_driver_sql(queries.PLANNER_SETTINGS_SQL)
        plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}").scalar_one()
        conn.rollback()
    top = plan[0]["Plan"]
    return int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))


def measure(dsn: str, backlog: int, samples: int, limit: int) -> dict[str, Any]:
    cell: dict[str, Any] = {"backlog": backlog}
    with _harness.bench_database(dsn, "claim") as db:
        engine = ours.make_engine(db)
        try:
            pg_scheduler.migrations.upgrade(engine)
            table = ours.JOBS_TABLE
            with _harness.admin_connection(db) as admin:
                began = time.monotonic()
                fill(admin, table, backlog)
                cell["fill_seconds"] = round(time.monotonic() - began, 1)
                scheduler = ours.build_scheduler(engine, limit)
                try:
                    for mode in MODES:
                        if mode == "analyzed":
                            admin.execute(f"ANALYZE {table}")
                        before = reltuples(admin, table)
                        timings = passes(scheduler, samples, limit)
                        after = reltuples(admin, table)
                        if mode == "never analyzed" and (before, after) != (-1, -1):
                            raise RuntimeError(f"{table} was analyzed: reltuples {after}")
                        cell[mode] = timings
                        cell[f"{mode}: buffers"] = claim_buffers(scheduler, engine, limit)
                        print(
                            f"backlog {backlog:>9,}, {mode:<14}: median"
                            f" {statistics.median(timings) * 1000:.3f} ms,"
                            f" p90 {statistics.quantiles(timings, n=10)[-1] * 1000:.3f} ms,"
                            f" {cell[f'{mode}: buffers']} buffers (reltuples {before:,.0f})",
                            file=sys.stderr,
                            flush=True,
                        )
                finally:
                    scheduler.close_autocommit_connections()
        finally:
            engine.dispose()
    return cell


def table(cells: list[dict[str, Any]]) -> str:
    empty = next((c for c in cells if c["backlog"] == 0), None)
    head = "| due backlog |"
    rule = "|---|"
    for mode in MODES:
        head += f" {mode}: median ms | p90 ms | x empty | buffers |"
        rule += "---|---|---|---|"
    lines = [head, rule]
    worst = 0.0
    for cell in cells:
        line = f"| {cell['backlog']:,} |"
        for mode in MODES:
            median = statistics.median(cell[mode])
            p90 = statistics.quantiles(cell[mode], n=10)[-1]
            ratio = median / statistics.median(empty[mode]) if empty else None
            if ratio is not None:
                worst = max(worst, ratio)
            shown = "—" if ratio is None else f"{ratio:.2f}x"
            buffers = cell[f"{mode}: buffers"]
            line += f" {median * 1000:.3f} | {p90 * 1000:.3f} | {shown} | {buffers} |"
        lines.append(line)
    if empty:
        verdict = "met" if worst <= TARGET else "**missed**"
        lines.append("")
        lines.append(
            f"Worst cell {worst:.2f}x the empty table (target ≤ {TARGET:.0f}x): {verdict}."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.claim_latency", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--url", help="use this PostgreSQL (libpq DSN or SQLAlchemy URL)")
    parser.add_argument("--backlogs", type=int, nargs="+", default=list(BACKLOGS))
    parser.add_argument("--samples", type=int, default=200, help="claim passes per cell")
    parser.add_argument("--limit", type=int, default=32, help="free slots per claim pass")
    parser.add_argument(
        "--planner-settings",
        choices=("on", "off"),
        default="on",
        help="off: the claim without its planner settings (as it was before them)",
    )
    parser.add_argument("--json", type=Path, help="write every sample here")
    args = parser.parse_args(argv)
    if args.planner_settings == "off":  # read by the repository at each claim
        queries.PLANNER_SETTINGS = sa.text("SELECT 1")
        queries.PLANNER_SETTINGS_SQL = "SELECT 1"

    started = time.monotonic()
    command = " ".join(["python -m benchmarks.claim_latency", *(argv or sys.argv[1:])])
    with server(args.url) as dsn:
        with _harness.admin_connection(dsn) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        cells = [measure(dsn, b, args.samples, args.limit) for b in sorted(args.backlogs)]
    elapsed = time.monotonic() - started
    print(f"`{command}`: PostgreSQL {version[0] if version else '?'}, {elapsed:.0f} s\n")
    print(table(cells))
    if args.json:
        args.json.write_text(
            json.dumps({"command": command, "seconds": elapsed, "cells": cells}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
