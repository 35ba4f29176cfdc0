"""Where one enqueue's time goes: pg_scheduler's call against the same SQL sent by hand.

    python -m benchmarks.profiles.profile_enqueue --n 2000
    python -m benchmarks.profiles.profile_enqueue --n 4000 --rounds 20

Each line is the mean wall time of ``--n`` sequential calls in one process, and the mean CPU
time the calling thread spent on each (the client's own work): ``Scheduler.enqueue``; the exact
statement it sends, through one raw psycopg cursor in autocommit (no SQLAlchemy); the same INSERT
into a TEMPORARY copy of the table (no WAL, so no flush at commit); and ``SELECT 1`` (one round
trip). The gaps show what pg_scheduler adds, what the durable commit costs, and what is left for
the server. Starts its own embedded PostgreSQL unless ``--url``.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import sqlalchemy as sa

import pg_scheduler
from benchmarks import ours
from benchmarks.profiles.profile_drain import arguments, installed


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
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="split the calls into this many rounds, the four measurements taking turns, and "
        "report each one's median round (a noisy machine drifts within a run)",
    )
    args = parser.parse_args(argv)
    per_round = max(1, args.n // args.rounds)
    samples: dict[str, list[tuple[float, float]]] = {}
    with installed(args.url, "enqueue") as (db, engine):
        scheduler = ours.build_scheduler(engine, 1)
        statement, params = enqueue_statement(engine, scheduler)

        def fresh(name: str = ours.NOOP) -> dict[str, Any]:
            return {**params, "key": f"{name}#{uuid.uuid4()}"}

        with psycopg.connect(db, autocommit=True) as raw:
            cursor = raw.cursor()
            raw.execute(
                f"CREATE TEMPORARY TABLE unlogged_copy (LIKE {ours.JOBS_TABLE} INCLUDING ALL)"
            )
            temporary = statement.replace(f"INTO {ours.JOBS_TABLE} ", "INTO unlogged_copy ", 1)
            calls: list[tuple[str, Callable[[], Any]]] = [
                ("Scheduler.enqueue", lambda: scheduler.enqueue(ours.NOOP)),
                (
                    "the same statement, raw psycopg (one cursor)",
                    lambda: cursor.execute(statement, fresh()),
                ),
                (
                    "the same, into a TEMPORARY table (no WAL flush)",
                    lambda: cursor.execute(temporary, fresh()),
                ),
                ("SELECT 1 (one round trip)", lambda: cursor.execute("SELECT 1")),
            ]
            for _ in range(args.rounds):
                for label, call in calls:
                    samples.setdefault(label, []).append(timed(per_round, call))
        scheduler.shutdown()
    what = "mean" if args.rounds == 1 else f"median of {args.rounds} rounds of the mean"
    print(f"{what} of {per_round} sequential calls: wall ms, client CPU us (this thread)")
    for label, rounds in samples.items():
        ms = statistics.median(r[0] for r in rounds)
        cpu_us = statistics.median(r[1] for r in rounds)
        print(f"  {ms:6.3f} ms  {cpu_us:6.1f} us  {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
