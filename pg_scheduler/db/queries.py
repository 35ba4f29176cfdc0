"""The statements of the job state machine, built from the model tables.

Each builder returns a Core construct; ``JobRepository`` runs it and maps its rows. Values reach
the database as bound parameters and identifiers through the ``Table`` objects: no SQL text is
ever formatted. Every transition's WHERE clause comes from ``guard`` (its source states in
``states``, and the lease when it is fenced), and every new status from the transition's targets
(``Transition.to`` / ``Transition.target``), so a statement cannot move a row in a way the table
does not list.

The statements the hot paths send (enqueue, claim, grouped completion) take every value as a
bound parameter, so one construct per installation serves every call (``fastpath.prebuilt``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import Grouping

from pg_scheduler import states
from pg_scheduler.models import Models
from pg_scheduler.states import JobStatus, JobType, RunStatus, Transition

from .records import JOB_FIELDS, Outcome

now = sa.func.now

#: The planner settings the claim runs under, set for its transaction alone. Its plan must walk the
#: due index in ``next_run`` order and stop at the limit, whatever the table's statistics say. On a
#: table never analyzed (or analyzed before a burst) the planner estimates one due row, and its
#: cheapest plan for one row is a bitmap scan: it read every due row, sorted them all and then took
#: the limit, so each claim cost time in proportion to the backlog (5.5 ms with 10,000 due rows,
#: 50 ms with 100,000). Without bitmap and sequential scans the only plan left is the in-order walk
#: of the due index. JIT off: a disabled plan node's cost could otherwise cross ``jit_above_cost``
#: and compile the statement (hundreds of ms); the claim is never worth compiling.
#: ``PLANNER_SETTINGS_SQL`` is transaction-local (``set_config(..., true)``): nothing leaks into the
#: pool or past a transaction-pooling PgBouncer. A literal, as every SQL text here is.
PLANNER_SETTINGS = sa.text(
    "SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true),"
    " set_config('jit', 'off', true)"
)
PLANNER_SETTINGS_SQL: str = PLANNER_SETTINGS.text

Lease = uuid.UUID | sa.ColumnElement[Any] | Sequence[uuid.UUID]


# ---------------------------------------------------------------- building blocks
def in_source(jobs: sa.Table, transition: Transition) -> sa.ColumnElement[bool]:
    """``status`` is one of the transition's source states."""
    if not transition.source:
        raise ValueError(f"transition {transition.name!r} inserts rows: it has no source state")
    # In the enum's order, so the statement's text (and its cache key) never varies.
    sources = [s.value for s in JobStatus if s in transition.source]
    # One state is compared with "=": an IN list is expanded on every execution.
    if len(sources) == 1:
        return jobs.c.status == sources[0]
    return jobs.c.status.in_(sources)


def guard(
    jobs: sa.Table, transition: Transition, *, lease_id: Lease | None = None
) -> sa.ColumnElement[bool]:
    """The WHERE clause a transition needs: its source states, and the lease when fenced (one
    lease, a column holding it, or a list of them: a heartbeat renews a node's leases at once)."""
    clause = in_source(jobs, transition)
    if not transition.fenced:
        return clause
    if lease_id is None:
        raise ValueError(f"transition {transition.name!r} needs the holder's lease_id")
    if isinstance(lease_id, (uuid.UUID, sa.ColumnElement)):
        return sa.and_(clause, jobs.c.lease_id == lease_id)
    return sa.and_(clause, jobs.c.lease_id.in_(list(lease_id)))


def lines_column(name: str, item: Any) -> Any:
    """A bound text parameter holding one value per line, as an array of ``item`` (text when
    ``item`` is ``sa.Text``). Hot-path batches travel so: one text value per column, split in SQL.
    The drivers dump a list element by element (psycopg runs a regex over each text element),
    which took longer than the statement itself; and psycopg2 and pg8000 cannot bind a list of
    UUIDs or JSON documents. The values must hold no newline: keys cannot (job names hold no
    control character), nor can compact JSON, UUIDs, numbers or ISO timestamps. An empty line is
    NULL."""
    lines = sa.func.string_to_array(
        sa.bindparam(name, type_=sa.Text), sa.func.chr(10), "", type_=postgresql.ARRAY(sa.Text)
    )
    return lines if item is sa.Text else sa.cast(lines, postgresql.ARRAY(item))


def waiting_for_tick(j: Any) -> sa.ColumnElement[bool]:
    """A pending recurring row that is only waiting for its tick: no attempt made, and not a tick
    handed back or lost (those give their attempt back, but are due now, off their tick: a run in
    progress that a re-schedule or a trigger must not replace)."""
    return sa.and_(j.attempt == 0, j.next_run == j.scheduled_at)


def with_notify(models: Models, write: Any) -> sa.Select[Any]:
    """``write`` and the NOTIFY that announces it (payload: the ``notify_payload`` parameter)
    as one statement: one round trip, and with no caller transaction it is its own atomic
    transaction. (PostgreSQL runs a data-modifying WITH to completion whether or not the outer
    query reads it.)"""
    done = write.cte("written")
    payload = sa.bindparam("notify_payload", type_=sa.Text)
    return sa.select(sa.func.pg_notify(models.names.channel, payload)).add_cte(done)


def notify(models: Models, payload: str) -> sa.Select[Any]:
    return sa.select(sa.func.pg_notify(models.names.channel, payload))


# ---------------------------------------------------------------- new rows
def upsert_recurring(models: Models, values: dict[str, Any], first: dt.datetime) -> sa.Executable:
    """Insert a recurring job's row (due at ``first``) or update its schedule; see
    ``JobRepository.upsert_recurring``. Returns the row; none when the key is a one-time job's."""
    jobs = models.jobs
    j = jobs.c
    stmt = postgresql.insert(jobs).values(
        job_type=JobType.RECURRING.value,
        status=states.ENQUEUE.target.value,
        next_run=first,
        scheduled_at=first,
        **values,
    )
    excluded = stmt.excluded
    schedule_changed = sa.or_(j.cron != excluded.cron, j.timezone != excluded.timezone)
    take_new = sa.and_(j.status == JobStatus.PENDING.value, waiting_for_tick(j), schedule_changed)
    return stmt.on_conflict_do_update(
        index_elements=[j.key],
        set_={
            "cron": excluded.cron,
            "timezone": excluded.timezone,
            "misfire": excluded.misfire,
            "misfire_grace": excluded.misfire_grace,
            "max_retries": excluded.max_retries,
            "next_run": sa.case((take_new, excluded.next_run), else_=j.next_run),
            "scheduled_at": sa.case((take_new, excluded.scheduled_at), else_=j.scheduled_at),
            "updated_at": now(),
        },
        where=j.job_type == JobType.RECURRING.value,
    ).returning(*jobs.c)


def insert_one_time(models: Models) -> sa.Insert:
    """One run request; values ``key``, ``name``, ``params_json``, ``max_retries``, ``run_at``."""
    due = sa.func.coalesce(sa.bindparam("run_at", type_=sa.DateTime(timezone=True)), now())
    return sa.insert(models.jobs).values(
        key=sa.bindparam("key"),
        name=sa.bindparam("name"),
        job_type=JobType.ONE_TIME.value,
        # The text was validated and serialised once; the cast stores it without re-encoding.
        params=sa.cast(sa.bindparam("params_json", type_=sa.Text), postgresql.JSONB),
        max_retries=sa.bindparam("max_retries"),
        status=states.ENQUEUE.target.value,
        next_run=due,
        scheduled_at=due,
    )


def insert_many(models: Models) -> sa.Insert:
    """Many run requests, as four columns of lines (``keys``, ``params``, ``retries``,
    ``run_at``; see ``lines_column``) that PostgreSQL splits and unnests."""
    text = sa.Text
    batch = (
        sa.func.unnest(
            lines_column("keys", text),
            lines_column("params", text),
            lines_column("retries", sa.Integer),
            lines_column("run_at", text),
        )
        .table_valued(
            sa.column("key", text),
            sa.column("params", text),
            sa.column("max_retries", sa.Integer),
            sa.column("run_at", text),
        )
        .render_derived(name="batch")
    )
    due = sa.func.coalesce(sa.cast(batch.c.run_at, sa.DateTime(timezone=True)), now())
    j = models.jobs.c
    return sa.insert(models.jobs).from_select(
        [j.key, j.name, j.job_type, j.params, j.max_retries, j.status, j.next_run, j.scheduled_at],
        sa.select(
            batch.c.key,
            # The name is the key up to its '#' (names cannot contain one): one column less
            # to send.
            sa.func.split_part(batch.c.key, "#", 1),
            sa.literal(JobType.ONE_TIME.value),
            sa.cast(batch.c.params, postgresql.JSONB),
            batch.c.max_retries,
            sa.literal(states.ENQUEUE.target.value),
            due,
            due,
        ),
    )


# ---------------------------------------------------------------- claim and lease
def claim(models: Models) -> sa.Select[Any]:
    """Lease up to ``claim_limit`` due pending jobs of ``claim_names`` to ``claim_node_id`` and
    record a run row for each, in one statement; rows in ``JobRecord`` field order, then
    ``claimed_at``. ``claim_retries``: the handler's retries of each name (same order)."""
    jobs, runs = models.jobs, models.runs
    j, r = jobs.c, runs.c
    claim_names = sa.cast(
        sa.bindparam("claim_names", type_=postgresql.ARRAY(sa.Text)),
        postgresql.ARRAY(sa.Text),
    )
    # The handler's retries for a job whose enqueue left them unsaid (NULL): the entry of
    # its name in a parallel array. (Grouped: PostgreSQL subscripts only a parenthesised cast.)
    handler_retries = Grouping(
        sa.cast(
            sa.bindparam("claim_retries", type_=postgresql.ARRAY(sa.Integer)),
            postgresql.ARRAY(sa.Integer),
        )
    )[sa.func.array_position(claim_names, j.name)]
    due = (
        sa.select(j.key)
        .where(
            in_source(jobs, states.CLAIM),
            j.next_run <= now(),
            # One array parameter: an expanding IN is rewritten on every execution.
            j.name == sa.any_(claim_names),
        )
        # next_run alone: the partial index then yields due rows in order and the scan stops
        # at the limit. With the key as a tie-break, a backlog enqueued in one statement (one
        # now() for every row) had to be read and sorted whole on every claim.
        .order_by(j.next_run)
        .limit(sa.bindparam("claim_limit", type_=sa.Integer))
        .with_for_update(skip_locked=True)
        # MATERIALIZED: evaluated exactly once. An "IN (SELECT ... LIMIT n FOR UPDATE SKIP
        # LOCKED)" subquery can be re-run by the planner and claim more than n rows.
        .cte("due")
        .prefix_with("MATERIALIZED")
    )
    claimed = (
        sa.update(jobs)
        .where(j.key == due.c.key, guard(jobs, states.CLAIM))
        .values(
            status=states.CLAIM.target.value,
            lease_id=sa.func.gen_random_uuid(),
            node_id=sa.bindparam("claim_node_id", type_=sa.Text),
            heartbeat_at=now(),
            attempt=j.attempt + 1,
            max_retries=sa.func.coalesce(j.max_retries, handler_retries, 0),
            last_run_at=now(),
            cancel_requested=False,
            updated_at=now(),
        )
        .returning(*jobs.c, now().label("claimed_at"))
        .cte("claimed")
    )
    record_runs = (
        sa.insert(runs)
        .from_select(
            [r.job_key, r.name, r.scheduled_at, r.attempt, r.node_id, r.lease_id, r.status],
            sa.select(
                claimed.c.key,
                claimed.c.name,
                claimed.c.scheduled_at,
                claimed.c.attempt,
                claimed.c.node_id,
                claimed.c.lease_id,
                sa.literal(RunStatus.RUNNING.value),
            ),
        )
        .cte("record_runs")
    )
    # The job's columns in JobRecord's field order: the rows become records by position.
    # Parameters come back as JSON text, decoded by ``JobRecord.from_values``: the drivers'
    # jsonb loaders cost more than the rest of the row, mostly to parse a "null".
    columns = [
        sa.cast(claimed.c.params, sa.Text) if name == "params" else claimed.c[name]
        for name in JOB_FIELDS
    ]
    return (
        sa.select(*columns, claimed.c.claimed_at).add_cte(record_runs).order_by(claimed.c.next_run)
    )


def claim_values(
    node_id: str, names: Sequence[str], limit: int, retries: Sequence[int] | None
) -> dict[str, Any]:
    """The values of ``claim``'s parameters."""
    if retries is None:
        retries = [0] * len(names)
    elif len(retries) != len(names):
        raise ValueError(f"{len(retries)} retries for {len(names)} names")
    return {
        "claim_node_id": node_id,
        "claim_names": list(names),
        "claim_retries": list(retries),
        "claim_limit": int(limit),
    }


def heartbeat(models: Models, node_id: str, leases: Sequence[uuid.UUID]) -> sa.Update:
    """Renew ``leases`` of ``node_id``; returns the leases still held."""
    jobs = models.jobs
    j = jobs.c
    mine = (guard(jobs, states.HEARTBEAT, lease_id=leases), j.node_id == node_id)
    # Lock the rows in key order, as the grouped completions do (they send their rows sorted
    # by key): two statements that lock the same rows in different orders can deadlock.
    locked = sa.select(j.key).where(*mine).order_by(j.key).with_for_update().cte("locked")
    return (
        sa.update(jobs)
        .where(j.key == locked.c.key, *mine)
        .values(heartbeat_at=now())
        .returning(j.lease_id)
    )


# ---------------------------------------------------------------- outcomes (fenced)
def finish(
    models: Models,
    key: str,
    lease_id: uuid.UUID,
    transition: Transition,
    outcome: Outcome,
    *,
    retry_delay: dt.timedelta | None = None,
    tick: dt.datetime | None = None,
    disabled: str | None = None,
) -> sa.Select[Any]:
    """Record how the run of ``lease_id`` ended, through ``transition`` (``states.after_run``):
    the job row and its run row in one statement, which returns the job's ``next_run`` (no row:
    the lease was not ours any more). ``retry_delay``: a ``RETRY``'s backoff; ``tick``: a
    ``RESCHEDULE``'s next tick; ``disabled``: the last error of a recurring job whose schedule
    yields none (``FAIL``)."""
    jobs, runs = models.jobs, models.runs
    j, r = jobs.c, runs.c
    values: dict[str, Any] = {
        "status": transition.target.value,
        "lease_id": None,
        "heartbeat_at": None,
        "cancel_requested": False,
        "lost_leases": 0,  # a run finished: the count of lost runs in a row starts over
        "execution_time_ms": outcome.duration_ms,
        "updated_at": now(),
    }
    if outcome.status is RunStatus.COMPLETED:
        values.update(last_success_at=now(), consecutive_failures=0, last_error=None)
    elif outcome.status is RunStatus.FAILED:
        values.update(
            last_failure_at=now(),
            consecutive_failures=j.consecutive_failures + 1,
            last_error=outcome.error,
        )
    elif outcome.status is RunStatus.CANCELLED:
        values.update(last_error=outcome.error or "cancelled")
    if transition is states.RETRY:
        assert retry_delay is not None
        values.update(next_run=now() + retry_delay)
    elif transition is states.RESCHEDULE:
        # Done with this tick, whatever happened: wait for the next one.
        assert tick is not None
        values.update(next_run=tick, scheduled_at=tick, attempt=0)
    else:
        values.update(next_run=None, finished_at=now())
        if disabled is not None:
            values.update(last_error=disabled)
    moved = (
        sa.update(jobs)
        .where(j.key == key, guard(jobs, transition, lease_id=lease_id))
        .values(**values)
        .returning(j.key, j.next_run)
        .cte("moved")
    )
    # The run row changes in the same statement; the result comes from the job row, so a job
    # whose run row is missing (pruned, or made by hand) is still reported truthfully.
    record_run = (
        sa.update(runs)
        .where(r.lease_id == lease_id, r.job_key == moved.c.key)
        .values(
            status=outcome.status.value,
            finished_at=now(),
            duration_ms=outcome.duration_ms,
            error=outcome.error,
        )
        .cte("record_run")
    )
    return sa.select(moved.c.next_run).add_cte(record_run)


def run_status_of(models: Models, lease_id: uuid.UUID) -> sa.Select[Any]:
    r = models.runs.c
    return sa.select(r.status).where(r.lease_id == lease_id)


def complete_one_time(models: Models) -> sa.Select[Any]:
    """The ``COMPLETE`` transition of ``finish`` for many one-time jobs at once: ``keys``,
    ``leases`` and ``durations`` as lines (``lines_column``). Returns the keys written, as one
    text of lines."""
    text = sa.Text
    done = (
        sa.func.unnest(
            lines_column("keys", text),
            lines_column("leases", postgresql.UUID(as_uuid=True)),
            lines_column("durations", sa.BigInteger),
        )
        .table_valued(
            sa.column("key", text),
            sa.column("lease_id", postgresql.UUID(as_uuid=True)),
            sa.column("duration_ms", sa.BigInteger),
        )
        .render_derived(name="done")
    )
    jobs, runs = models.jobs, models.runs
    j, r = jobs.c, runs.c
    moved = (
        sa.update(jobs)
        .where(j.key == done.c.key, guard(jobs, states.COMPLETE, lease_id=done.c.lease_id))
        .values(
            status=states.COMPLETE.target.value,
            next_run=None,
            finished_at=now(),
            lease_id=None,
            heartbeat_at=None,
            cancel_requested=False,
            lost_leases=0,
            execution_time_ms=done.c.duration_ms,
            last_success_at=now(),
            consecutive_failures=0,
            last_error=None,
            updated_at=now(),
        )
        .returning(j.key, done.c.lease_id, done.c.duration_ms)
        .cte("moved")
    )
    recorded = (
        sa.update(runs)
        .where(r.lease_id == moved.c.lease_id, r.job_key == moved.c.key)
        .values(
            status=RunStatus.COMPLETED.value,
            finished_at=now(),
            duration_ms=moved.c.duration_ms,
            error=None,
        )
        .returning(moved.c.key)
        .cte("recorded")
    )
    # The keys written, as one text of lines: one value to read back instead of a row each.
    return sa.select(sa.func.string_agg(recorded.c.key, sa.func.chr(10)))


def completed_runs(models: Models, leases: Sequence[uuid.UUID]) -> sa.Select[Any]:
    r = models.runs.c
    return sa.select(r.lease_id).where(
        r.lease_id.in_(list(leases)), r.status == RunStatus.COMPLETED.value
    )
