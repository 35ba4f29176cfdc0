"""Where one enqueue's time goes: pg_scheduler's call against the same SQL sent by hand.

    python -m benchmarks.profile_enqueue --n 2000

Each line is the mean wall time of ``--n`` sequential calls in one process, and the mean CPU
time the calling thread spent on each (the client's own work): ``Scheduler.enqueue``; the exact
statement it sends, through one raw psycopg cursor in autocommit (no SQLAlchemy); the same INSERT
into a TEMPORARY copy of the table (no WAL, so no flush at commit); and ``SELECT 1`` (one round
trip). The gaps show what pg_scheduler adds, what the durable commit costs, and what is left for
the server. Starts its own embedded PostgreSQL unless ``--url``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import sqlalchemy as sa

import pg_scheduler
from benchmarks import ours
from benchmarks.profile_drain import arguments, installed


def mean_ms(n: int, call: Callable[[], Any]) -> float:
    return timed(n, call)[0]


def timed(n: int, call: Callable[[], Any]) -> tuple[float, float]:
    """Mean wall time (ms) and mean CPU time of the calling thread (us) of ``n`` calls: the CPU
    figure is the client's own work, without the wait for the server."""
    call()  # warm: prepared statements, caches
    started, cpu = time.perf_counter(), time.thread_time()
    for _ in range(n):
        call()
    return (time.perf_counter() - started) / n * 1000, (time.thread_time() - cpu) / n * 1e6


def enqueue_statement(
    engine: sa.Engine, scheduler: pg_scheduler.Scheduler
) -> tuple[str, dict[str, Any]]:
    """The SQL text and parameters ``scheduler.enqueue`` sends (one no-op job is enqueued). With
    a cursor listener on the engine the enqueue takes SQLAlchemy's path, which hands them over."""
    sent: list[tuple[str, dict[str, Any]]] = []

    def capture(*event: Any) -> None:
        sent.append((event[2], dict(event[3])))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        scheduler.enqueue(ours.NOOP)
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    return sent[-1]


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args(argv)
    with installed(args.url, "enqueue") as (db, engine):
        scheduler = ours.build_scheduler(engine, 1)
        statement, params = enqueue_statement(engine, scheduler)

        def fresh(name: str = ours.NOOP) -> dict[str, Any]:
            return {**params, "key": f"{name}#{uuid.uuid4()}"}

        rows: list[tuple[str, tuple[float, float]]] = []
        rows.append(("Scheduler.enqueue", timed(args.n, lambda: scheduler.enqueue(ours.NOOP))))
        with psycopg.connect(db, autocommit=True) as raw:
            cursor = raw.cursor()
            rows.append(
                (
                    "the same statement, raw psycopg (one cursor)",
                    timed(args.n, lambda: cursor.execute(statement, fresh())),
                )
            )
            raw.execute(
                f"CREATE TEMPORARY TABLE unlogged_copy (LIKE {ours.JOBS_TABLE} INCLUDING ALL)"
            )
            temporary = statement.replace(f"INTO {ours.JOBS_TABLE} ", "INTO unlogged_copy ", 1)
            rows.append(
                (
                    "the same, into a TEMPORARY table (no WAL flush)",
                    timed(args.n, lambda: cursor.execute(temporary, fresh())),
                )
            )
            rows.append(
                ("SELECT 1 (one round trip)", timed(args.n, lambda: cursor.execute("SELECT 1")))
            )
        scheduler.shutdown()
    print(f"mean of {args.n} sequential calls: wall ms, client CPU us (this thread)")
    for label, (ms, cpu_us) in rows:
        print(f"  {ms:6.3f} ms  {cpu_us:6.1f} us  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
