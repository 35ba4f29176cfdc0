"""The claim on a big table: its plan, and how long one claim takes.

    python -m benchmarks.profiles.claim_plan --url postgresql+psycopg://postgres@127.0.0.1:5432/test
    python -m benchmarks.profiles.claim_plan --rows 1000000 --due 20 --rounds 200

Installs a fresh table prefix, measures claims on the empty table, fills it with ``--rows`` pending
one-time jobs (``--due`` of them due now, the rest spread over the coming days) with one
``INSERT ... SELECT generate_series``, prints the plan of exactly the statement ``claim`` runs, then
measures again. Each measured claim takes up to 10 rows and is rolled back, so every round sees the
same due rows. The prefix is dropped at the end. Without ``--url`` an embedded PostgreSQL is used.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from pg_scheduler import migrations
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.models import Models, build_models
from pg_scheduler.naming import Names

NODE = "bench:1:claimpln"


def claim_timings(engine: sa.Engine, models: Models, names: list[str], rounds: int) -> list[float]:
    timings: list[float] = []
    with Session(engine) as session:
        repo = JobRepository(session, models)
        for _ in range(rounds):
            with session.begin():
                started = time.perf_counter()
                repo.claim(NODE, names, 10)
                timings.append((time.perf_counter() - started) * 1000)
                session.rollback()
    return timings


def fill(engine: sa.Engine, models: Models, rows: int, due: int) -> None:
    jobs = models.jobs
    n = sa.func.generate_series(1, rows).table_valued("n").render_derived("g").c.n
    when = sa.case(
        (n <= due, sa.func.now() - dt.timedelta(minutes=1)),
        else_=sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, n),
    )
    with engine.begin() as conn:
        conn.execute(
            sa.insert(jobs).from_select(
                ["key", "name", "job_type", "status", "next_run", "scheduled_at"],
                sa.select(
                    sa.literal("bulk#") + sa.func.lpad(sa.cast(n, sa.Text), 9, "0"),
                    sa.literal("bulk_") + sa.cast(n % 50, sa.Text),
                    sa.literal("one_time"),
                    sa.literal("pending"),
                    when,
                    when,
                ),
            )
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"ANALYZE {conn.dialect.identifier_preparer.format_table(jobs)}")


def explain(engine: sa.Engine, stmt: sa.Executable) -> str:
    with engine.connect() as conn:
        sql = stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        plan = "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN ANALYZE {sql}"))
        conn.rollback()
    return plan


def summary(label: str, timings: list[float]) -> str:
    p90 = statistics.quantiles(timings, n=10)[-1]
    return f"{label}: median {statistics.median(timings):.2f} ms, p90 {p90:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="SQLAlchemy URL (default: an embedded PostgreSQL)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    server = None
    url = args.url
    if url is None:
        from pg_scheduler import embedded

        server = embedded.start(tempfile.mkdtemp(prefix="pgs_bench_"), cleanup="delete")
        url = server.url
    engine = sa.create_engine(url)
    names = Names(prefix=f"bench{uuid.uuid4().hex[:6]}_")
    migrations.upgrade(engine, names=names)
    models = build_models(names)
    registered = [f"bulk_{i}" for i in range(10)]
    try:
        print(summary("empty table", claim_timings(engine, models, registered, args.rounds)))
        started = time.perf_counter()
        fill(engine, models, args.rows, args.due)
        print(
            f"filled {args.rows:,} rows ({args.due} due) in {time.perf_counter() - started:.1f} s"
        )
        with Session(engine) as session:
            stmt = JobRepository(session, models).claim_statement(NODE, registered, 10)
        plan = explain(engine, stmt)
        print(plan)
        print("uses the due index:", names.job("due_ix") in plan)
        timings = claim_timings(engine, models, registered, args.rounds)
        print(summary(f"{args.rows:,} pending rows", timings))
    finally:
        migrations.downgrade(engine, names=names)
        engine.dispose()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
