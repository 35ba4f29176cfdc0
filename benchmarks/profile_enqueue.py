"""Where one enqueue's time goes: pg_scheduler's call against the same SQL sent by hand.

    python -m benchmarks.profile_enqueue --n 2000

Each line is the mean time of ``--n`` sequential calls in one process: ``Scheduler.enqueue``; the
exact statement it sends, through raw psycopg in autocommit (no SQLAlchemy); the same INSERT into
a TEMPORARY copy of the table (no WAL, so no flush at commit); and ``SELECT 1`` (one round trip).
The gaps show what SQLAlchemy and pg_scheduler add, what the durable commit costs, and what is
left for the server. Starts its own embedded PostgreSQL unless ``--url``.
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
    call()  # warm: prepared statements, caches
    started = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - started) / n * 1000


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

        rows: list[tuple[str, float]] = []
        rows.append(("Scheduler.enqueue", mean_ms(args.n, lambda: scheduler.enqueue(ours.NOOP))))
        with psycopg.connect(db, autocommit=True) as raw:
            rows.append(
                (
                    "the same statement, raw psycopg",
                    mean_ms(args.n, lambda: raw.execute(statement, fresh())),
                )
            )
            raw.execute(
                f"CREATE TEMPORARY TABLE unlogged_copy (LIKE {ours.JOBS_TABLE} INCLUDING ALL)"
            )
            temporary = statement.replace(f"INTO {ours.JOBS_TABLE} ", "INTO unlogged_copy ", 1)
            rows.append(
                (
                    "the same, into a TEMPORARY table (no WAL flush)",
                    mean_ms(args.n, lambda: raw.execute(temporary, fresh())),
                )
            )
            rows.append(
                ("SELECT 1 (one round trip)", mean_ms(args.n, lambda: raw.execute("SELECT 1")))
            )
        scheduler.shutdown()
    print(f"mean of {args.n} sequential calls, ms:")
    for label, ms in rows:
        print(f"  {ms:6.3f}  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
