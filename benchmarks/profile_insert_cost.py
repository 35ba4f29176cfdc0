"""What the server's side of one enqueue costs, table feature by table feature.

    python -m benchmarks.profile_insert_cost --n 2000 --rounds 4
    python -m benchmarks.profile_insert_cost --rounds 40 --batch 50 --temporary

Sends the INSERT that ``Scheduler.enqueue`` sends (without its NOTIFY) through raw psycopg in
autocommit, one durable commit each, into copies of the jobs table that differ in one thing: the
table as installed; no CHECK constraints; only the four DESIGN.md asks for (status, lease, cron,
next run); all eight merged into one; all eight inside one PL/pgSQL function that one CHECK
calls (its expression is set up once per session, not planned again for every statement);
``key`` and ``name`` in the "C" collation. Prints the mean time per INSERT of each, round after
round (the VM's speed drifts: compare within a round). With ``--batch`` every round sends that
many INSERTs to each copy in turn (the order reversed every other round) and the median round
of each copy is printed: small interleaved batches are what holds still on a noisy machine.
``--temporary`` makes every copy a TEMPORARY table: no WAL flush at commit, so what the
constraints cost the server's CPU is a larger share of each figure.
Starts its own embedded PostgreSQL unless ``--url``.
"""

from __future__ import annotations

import statistics
from typing import Any

import psycopg

from benchmarks import ours
from benchmarks.profile_drain import arguments, installed
from benchmarks.profile_enqueue import enqueue_statement, mean_ms

TABLE = ours.JOBS_TABLE
DESIGN_CHECKS = ("status", "lease", "cron", "next_run")


def copies(raw: psycopg.Connection[Any], *, temporary: bool = False) -> dict[str, str]:
    """Create the copies (``temporary``: all of them, the table as installed included, as
    TEMPORARY tables); returns label -> table name."""
    checks = raw.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = %s::regclass AND contype = 'c' ORDER BY conname",
        (TABLE,),
    ).fetchall()
    like = f"(LIKE {TABLE} INCLUDING DEFAULTS INCLUDING INDEXES)"
    create = "CREATE TEMPORARY TABLE" if temporary else "CREATE TABLE"
    installed = TABLE
    if temporary:
        installed = "cost_installed"
        raw.execute(f"{create} {installed} (LIKE {TABLE} INCLUDING ALL)")
    raw.execute(f"{create} cost_no_checks {like}")
    raw.execute(f"{create} cost_design_checks {like}")
    for name, definition in checks:
        if any(f"_{word}_ck" in name for word in DESIGN_CHECKS):
            raw.execute(f"ALTER TABLE cost_design_checks ADD CONSTRAINT c_{name} {definition}")
    raw.execute(f"{create} cost_merged {like}")
    merged = " AND ".join(f"({definition.removeprefix('CHECK ')})" for _, definition in checks)
    raw.execute(f"ALTER TABLE cost_merged ADD CONSTRAINT cost_merged_ck CHECK ({merged})")
    # The same eight conditions, evaluated by PL/pgSQL: the CHECK is one function call.
    schema = "pg_temp" if temporary else "public"
    raw.execute(
        f"CREATE FUNCTION {schema}.cost_job_valid(status text, job_type text, misfire text,"
        " lease_id uuid, node_id text, heartbeat_at timestamptz, cron text,"
        " next_run timestamptz, scheduled_at timestamptz, attempt int, max_retries int,"
        " consecutive_failures int, name text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE"
        f" AS $$ BEGIN RETURN {merged}; END $$"
    )
    raw.execute(f"{create} cost_plpgsql {like}")
    raw.execute(
        f"ALTER TABLE cost_plpgsql ADD CONSTRAINT cost_plpgsql_ck CHECK ({schema}.cost_job_valid("
        "status, job_type, misfire, lease_id, node_id, heartbeat_at, cron, next_run,"
        " scheduled_at, attempt, max_retries, consecutive_failures, name))"
    )
    raw.execute(f"{create} cost_c_collation (LIKE {TABLE} INCLUDING ALL)")
    raw.execute(
        'ALTER TABLE cost_c_collation ALTER COLUMN key TYPE text COLLATE "C",'
        ' ALTER COLUMN name TYPE text COLLATE "C"'
    )
    return {
        "as installed (8 CHECKs)": installed,
        "no CHECK": "cost_no_checks",
        "DESIGN's 4 CHECKs": "cost_design_checks",
        "8 CHECKs merged": "cost_merged",
        "8 in one PL/pgSQL CHECK": "cost_plpgsql",
        'key, name COLLATE "C"': "cost_c_collation",
    }


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--temporary",
        action="store_true",
        help="TEMPORARY copies: no WAL flush, so the server's CPU differences stand out",
    )
    parser.add_argument(
        "--batch",
        type=int,
        help="interleave: each round sends this many INSERTs to each copy in turn; print the "
        "median round of each (ignores --n)",
    )
    args = parser.parse_args(argv)
    with installed(args.url, "insert_cost") as (db, engine):
        scheduler = ours.build_scheduler(engine, 1)
        statement, params = enqueue_statement(engine, scheduler)
        # The INSERT alone: the statement is "WITH written AS (INSERT ...) SELECT pg_notify(...)".
        written = statement[: statement.rindex("SELECT pg_notify")]
        insert = written[written.index("(INSERT") + 1 : written.rindex(")")]
        counter = iter(range(10**9))
        with psycopg.connect(db, autocommit=True) as raw:
            tables = copies(raw, temporary=args.temporary)
            kind = "TEMPORARY" if args.temporary else "durable"

            def send(table: str, n: int) -> float:
                sql = insert.replace(f"INTO {TABLE} ", f"INTO {table} ", 1)
                return mean_ms(n, lambda: raw.execute(sql, {**params, "key": f"k#{next(counter)}"}))

            if args.batch:
                samples: dict[str, list[float]] = {label: [] for label in tables}
                for round_ in range(args.rounds):
                    order = list(tables.items())
                    for label, table in order if round_ % 2 else reversed(order):
                        samples[label].append(send(table, args.batch))
                print(f"median of {args.rounds} rounds of {args.batch} {kind} INSERTs, ms each:")
                for label, figures in samples.items():
                    print(f"  {statistics.median(figures):.3f}  {label}")
            else:
                print(f"mean ms per {kind} INSERT, {args.n} per figure:")
                for round_ in range(args.rounds):
                    figures_text = [
                        f"{label} {send(table, args.n):.3f}" for label, table in tables.items()
                    ]
                    print(f"  round {round_ + 1}: " + ", ".join(figures_text))
        scheduler.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
