"""What enqueueing costs when the jobs table already holds many rows: time-ordered vs random keys.

    python -m benchmarks.profiles.profile_big_table --rows 1000000 --rounds 3
    python -m benchmarks.profiles.profile_big_table --rows 200000 --rounds 2 --bulk 5000 --one-by-one 500

A one-time job's key is ``name#<uuid>``, the jobs table's primary key. With a random UUID (what
pg_scheduler drew before UUIDv7) every new row's index entry lands on a random leaf page of the
key index; in a table that keeps finished jobs for their retention that is a page nothing else
touched since the last checkpoint, so PostgreSQL writes the whole page (8 kB) into the WAL first.
With a time-ordered key every new entry lands at the end of the index.

For each kind of key (``random``: UUIDv4, ``ordered``: the scheduler's own keys), each round makes
a fresh database whose jobs table holds ``--rows`` finished one-time jobs with keys of that kind,
runs ``CHECKPOINT``, then times ``enqueue_many`` of ``--bulk`` jobs and ``--one-by-one`` single
``enqueue`` calls, and reads the WAL each wrote (``pg_current_wal_insert_lsn``). The kinds take
turns (the VM's speed drifts); the median round of each is printed.
Starts its own embedded PostgreSQL unless ``--url``.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy as sa

from benchmarks import ours
from benchmarks.peers import _harness
from benchmarks.profiles.profile_drain import arguments, server
from pg_scheduler.db import repository
from pg_scheduler.migrations import upgrade
from pg_scheduler.models import build_models
from pg_scheduler.naming import Names
from pg_scheduler.node import node as node_module

KINDS = ("random", "ordered")


def _random_key(name: str) -> str:
    return f"{name}#{uuid.uuid4()}"


@contextmanager
def _keys(kind: str) -> Iterator[None]:
    """Draw one-time keys of ``kind`` in this process while the block runs."""
    modules = (repository, node_module)  # the node draws a key before it sends the insert
    drawn = [module.new_key for module in modules]
    if kind == "random":
        for module in modules:
            module.new_key = _random_key
    try:
        yield
    finally:
        for module, new_key in zip(modules, drawn, strict=True):
            module.new_key = new_key


def _fill(engine: sa.Engine, rows: int, kind: str) -> None:
    """``rows`` finished one-time jobs of the bench's job name: random UUID keys, or keys that
    sort before any drawn now (earlier UUIDv7 keys all do: their time is in their first bits)."""
    jobs = build_models(Names()).jobs
    series = sa.func.generate_series(1, sa.bindparam("n")).table_valued("i").render_derived()
    suffix = (
        sa.cast(sa.func.gen_random_uuid(), sa.Text)
        if kind == "random"
        else sa.func.lpad(sa.cast(series.c.i, sa.Text), 36, "0")
    )
    with engine.begin() as conn:
        conn.execute(
            sa.insert(jobs).from_select(
                ["key", "name", "job_type", "status", "attempt", "scheduled_at", "finished_at"],
                sa.select(
                    sa.func.concat(ours.NOOP, "#", suffix),
                    sa.literal(ours.NOOP),
                    sa.literal("one_time"),
                    sa.literal("completed"),
                    sa.literal(1),
                    sa.func.now(),
                    sa.func.now(),
                    # Named: with random keys no column reads the series, and a SELECT without
                    # FROM makes one row.
                ).select_from(series),
            ),
            {"n": rows},
        )
        stored = conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one()
    if stored != rows:
        raise RuntimeError(f"the table holds {stored} rows, not {rows}")


def _wal_position(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')").fetchone()
    assert row is not None
    return int(row[0])


def _measure(db: str, jobs: int, work: Callable[[], Any]) -> tuple[float, float]:
    """Jobs per second of ``work`` (which enqueues ``jobs`` jobs) and the WAL bytes per job."""
    with _harness.admin_connection(db) as conn:
        before = _wal_position(conn)
        started = time.perf_counter()
        work()
        elapsed = time.perf_counter() - started
        written = _wal_position(conn) - before
    return jobs / elapsed, written / jobs


def one_round(dsn: str, kind: str, rows: int, bulk: int, one_by_one: int) -> dict[str, float]:
    with _harness.bench_database(dsn, "big_table") as db:
        engine = ours.make_engine(db)
        try:
            upgrade(engine)
            _fill(engine, rows, kind)
            node = ours.build_scheduler(engine, 1)
            figures: dict[str, float] = {}
            with _keys(kind):
                node.enqueue(ours.NOOP)  # warm: compiled and prepared statements
                with _harness.admin_connection(db) as conn:
                    conn.execute("VACUUM ANALYZE")
                    conn.execute("CHECKPOINT")
                rate, wal = _measure(db, bulk, lambda: node.enqueue_many(ours.NOOP, [None] * bulk))
                figures.update(bulk_rate=rate, bulk_wal=wal)
                with _harness.admin_connection(db) as conn:
                    conn.execute("CHECKPOINT")

                def singles() -> None:
                    for _ in range(one_by_one):
                        node.enqueue(ours.NOOP)

                rate, wal = _measure(db, one_by_one, singles)
                figures.update(single_rate=rate, single_wal=wal)
            return figures
        finally:
            engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bulk", type=int, default=20_000)
    parser.add_argument("--one-by-one", type=int, default=2_000)
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    with server(args.url) as dsn:
        for number in range(args.rounds):
            order = KINDS if number % 2 == 0 else KINDS[::-1]
            for kind in order:
                figures = one_round(dsn, kind, args.rows, args.bulk, args.one_by_one)
                results[kind].append(figures)
                print(
                    f"round {number + 1} {kind:>8}: bulk {figures['bulk_rate']:8,.0f} jobs/s"
                    f" {figures['bulk_wal']:6,.0f} WAL bytes/job; one by one"
                    f" {figures['single_rate']:6,.0f} jobs/s {figures['single_wal']:6,.0f}"
                    " WAL bytes/job",
                    flush=True,
                )
    print(f"median of {args.rounds} rounds, {args.rows:,} finished jobs in the table:")
    for kind in KINDS:
        med = {k: statistics.median(r[k] for r in results[kind]) for k in results[kind][0]}
        print(
            f"  {kind:>8}: bulk {med['bulk_rate']:8,.0f} jobs/s {med['bulk_wal']:6,.0f} B/job;"
            f" one by one {med['single_rate']:6,.0f} jobs/s {med['single_wal']:6,.0f} B/job"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
