"""What the server's side of one enqueue costs, table feature by table feature.

    python -m benchmarks.profile_insert_cost --n 2000 --rounds 4

Sends the INSERT that ``Scheduler.enqueue`` sends (without its NOTIFY) through raw psycopg in
autocommit, one durable commit each, into copies of the jobs table that differ in one thing: the
table as installed; no CHECK constraints; only the four DESIGN.md asks for (status, lease, cron,
next run); all eight merged into one; ``key`` and ``name`` in the "C" collation. Prints the mean
time per INSERT of each, round after round (the VM's speed drifts: compare within a round).
``--temporary`` makes every copy a TEMPORARY table: no WAL flush at commit, so what the
constraints cost the server's CPU is a larger share of each figure.
Starts its own embedded PostgreSQL unless ``--url``.
"""

from __future__ import annotations

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
            print(f"mean ms per {kind} INSERT, {args.n} per figure:")
            for round_ in range(args.rounds):
                figures = []
                for label, table in tables.items():
                    sql = insert.replace(f"INTO {TABLE} ", f"INTO {table} ", 1)
                    ms = mean_ms(
                        args.n,
                        lambda sql=sql: raw.execute(sql, {**params, "key": f"k#{next(counter)}"}),
                    )
                    figures.append(f"{label} {ms:.3f}")
                print(f"  round {round_ + 1}: " + ", ".join(figures))
        scheduler.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
