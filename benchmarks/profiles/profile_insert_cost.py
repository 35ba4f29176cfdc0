"""What the server's side of one enqueue costs, table feature by table feature.

    python -m benchmarks.profiles.profile_insert_cost --n 2000 --rounds 4
    python -m benchmarks.profiles.profile_insert_cost --rounds 40 --batch 50 --temporary

Sends the INSERT that ``Scheduler.enqueue`` sends (without its NOTIFY) through raw psycopg in
autocommit, one durable commit each, into copies of the jobs table that differ in their rules:
the table as installed (since pgs_0005 the five one-column rules are checks of domains, which
PostgreSQL prepares once per session, and three CHECKs on the table); the eight rules as table
CHECKs on plain columns, as before pgs_0005 (PostgreSQL rebuilds a table's CHECKs for every
statement); no rule at all; all eight inside one PL/pgSQL function that one CHECK calls. Prints
the mean time per INSERT of each, round after round (the VM's speed drifts: compare within a
round). With ``--batch`` every round sends that many INSERTs to each copy in turn (the order
reversed every other round) and the median round of each copy is printed: small interleaved
batches are what holds still on a noisy machine. ``--temporary`` makes every copy a TEMPORARY
table: no WAL flush at commit, so what the rules cost the server's CPU is a larger share of
each figure.
Starts its own embedded PostgreSQL unless ``--url``.
"""

from __future__ import annotations

import statistics
from typing import Any

import psycopg

from benchmarks import ours
from benchmarks.profiles.profile_drain import arguments, installed
from benchmarks.profiles.profile_enqueue import enqueue_statement, mean_ms

TABLE = ours.JOBS_TABLE


#: The jobs table's rules as pgs_0001-pgs_0004 wrote them: eight CHECKs on the table, on plain
#: text and integer columns. pgs_0005 moved the five one-column rules onto domains.
TABLE_CHECKS = (
    "status IN ('pending', 'running', 'completed', 'failed', 'cancelled')",
    "job_type IN ('recurring', 'one_time')",
    "misfire IN ('coalesce', 'skip', 'all')",
    "attempt >= 0 AND max_retries >= 0 AND consecutive_failures >= 0",
    "char_length(name) BETWEEN 1 AND 200",
)
#: The columns a domain types since pgs_0005, and their base types.
DOMAIN_COLUMNS = {
    "status": "text",
    "job_type": "text",
    "misfire": "text",
    "name": "text",
    "attempt": "integer",
    "max_retries": "integer",
    "consecutive_failures": "integer",
}


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
    plain = ", ".join(f"ALTER COLUMN {c} TYPE {t}" for c, t in DOMAIN_COLUMNS.items())
    installed = TABLE
    if temporary:
        installed = "cost_installed"
        raw.execute(f"{create} {installed} (LIKE {TABLE} INCLUDING ALL)")
    # The columns in their base types: no domain checks.
    raw.execute(f"{create} cost_no_checks {like}")
    raw.execute(f"ALTER TABLE cost_no_checks {plain}")
    raw.execute(f"{create} cost_table_checks (LIKE {TABLE} INCLUDING ALL)")
    raw.execute(f"ALTER TABLE cost_table_checks {plain}")
    for i, condition in enumerate(TABLE_CHECKS):
        raw.execute(f"ALTER TABLE cost_table_checks ADD CONSTRAINT c_{i} CHECK ({condition})")
    # The same eight conditions, evaluated by PL/pgSQL: the CHECK is one function call.
    merged = " AND ".join(
        [f"({c})" for c in TABLE_CHECKS]
        + [f"({definition.removeprefix('CHECK ')})" for _, definition in checks]
    )
    schema = "pg_temp" if temporary else "public"
    raw.execute(
        f"CREATE FUNCTION {schema}.cost_job_valid(status text, job_type text, misfire text,"
        " lease_id uuid, node_id text, heartbeat_at timestamptz, cron text,"
        " next_run timestamptz, scheduled_at timestamptz, attempt int, max_retries int,"
        " consecutive_failures int, name text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE"
        f" AS $$ BEGIN RETURN {merged}; END $$"
    )
    raw.execute(f"{create} cost_plpgsql {like}")
    raw.execute(f"ALTER TABLE cost_plpgsql {plain}")
    raw.execute(
        f"ALTER TABLE cost_plpgsql ADD CONSTRAINT cost_plpgsql_ck CHECK ({schema}.cost_job_valid("
        "status, job_type, misfire, lease_id, node_id, heartbeat_at, cron, next_run,"
        " scheduled_at, attempt, max_retries, consecutive_failures, name))"
    )
    return {
        "as installed (5 domain checks + 3 CHECKs)": installed,
        "8 table CHECKs (before pgs_0005)": "cost_table_checks",
        "no CHECK": "cost_no_checks",
        "8 in one PL/pgSQL CHECK": "cost_plpgsql",
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
