"""``JobRepository``: every statement pg_scheduler runs, one method per state transition.

The repository works inside the caller's ``Session`` and never commits or rolls back: an enqueue
made through the application's session exists if and only if the application commits. Each
transition is one statement guarded by the state it expects (``states.TRANSITIONS``) and, out of
``running``, by the caller's lease, so a writer that lost the race matches no row and learns so
from the result. Every time comparison uses the database's ``now()``; a node's clock never meets
another node's. Statements are Core constructs on the model tables with bound parameters: no SQL
text is ever formatted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import traceback
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
import uuid_utils
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import Grouping

from pg_scheduler import states
from pg_scheduler.config import DEFAULT_MAX_LOST_LEASES, RetryBackoff
from pg_scheduler.cron import CronSchedule, MisfirePolicy, next_run_after
from pg_scheduler.errors import (
    ConfigError,
    InvalidCronError,
    InvalidStateError,
    InvalidTimezoneError,
    JobNotFoundError,
)
from pg_scheduler.models import Models
from pg_scheduler.naming import validate_job_name
from pg_scheduler.params import DEFAULT_MAX_PARAMS_BYTES, encode_params
from pg_scheduler.states import JobStatus, JobType, RunStatus, Transition

from . import fastpath
from .records import JOB_FIELDS, ClaimedJob, JobRecord, NodeRecord, RunRecord

#: Error texts are kept, but bounded: a traceback of a deep recursion must not bloat a row.
MAX_ERROR_LENGTH = 8000

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

_S = TypeVar("_S")
# Statements built once per (purpose, installation); see ``JobRepository._prebuilt``.
_PREBUILT: dict[tuple[str, Models], Any] = {}
# Per dialect (one per engine), the prebuilt statements' direct forms (None: not eligible).
_DIRECT_FORMS: weakref.WeakKeyDictionary[
    sa.Dialect, dict[tuple[str, Models], fastpath.DirectStatement | None]
] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class RecurringSpec:
    """What ``upsert_recurring`` needs to know about a recurring job."""

    name: str
    schedule: CronSchedule
    retries: int = 0
    misfire: MisfirePolicy = "coalesce"
    misfire_grace: dt.timedelta = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class OneTimeSpec:
    """One run request of a one-time job. ``retries`` None: the handler's, resolved by the node
    that claims the job (stored as NULL until then)."""

    name: str
    params: Any = None
    retries: int | None = None
    run_at: dt.datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as the node that ran it saw it."""

    status: RunStatus  # completed, failed, cancelled or skipped
    duration_ms: int = 0
    error: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException, duration_ms: int) -> Outcome:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(RunStatus.FAILED, duration_ms, describe_error(exc, text))


def _check_retries(retries: object, *, unsaid: bool = False) -> None:
    # Refused here, not by the CHECK constraint: a database error would not say which value.
    # ``unsaid``: None is allowed (a one-time job's retries, left to its handler).
    if unsaid and retries is None:
        return
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"retries must be a non-negative integer, got {retries!r}")


def _check_run_at(run_at: object) -> None:
    if run_at is not None and (not isinstance(run_at, dt.datetime) or run_at.utcoffset() is None):
        # Drivers disagree by hours on naive timestamps into timestamptz; refuse them.
        raise ConfigError(f"run_at must be a timezone-aware datetime, got {run_at!r}")


def describe_error(exc: BaseException, formatted: str | None = None) -> str:
    """``Type: message`` then the traceback, cut to ``MAX_ERROR_LENGTH`` keeping both ends."""
    head = f"{type(exc).__qualname__}: {exc}"
    text = f"{head}\n{formatted}" if formatted else head
    if len(text) > MAX_ERROR_LENGTH:
        half = MAX_ERROR_LENGTH // 2
        text = f"{text[:half]}\n... [truncated] ...\n{text[-half:]}"
    return text.replace("\x00", "\\x00")


def schedule_disabled(exc: Exception) -> str:
    """``last_error`` of a recurring job whose stored schedule cannot produce a next tick."""
    return f"schedule disabled: {exc} (fix the job's cron or time zone, then retry it)"


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


def new_key(name: str) -> str:
    """A fresh one-time job key: the name, ``#``, a time-ordered UUID (version 7).

    Keys drawn later sort after earlier ones (same name), so each new row's primary-key entry
    lands on the index's last pages instead of a random one: with many rows kept (retention),
    a random key made nearly every insert after a checkpoint log a whole index page."""
    return f"{name}#{uuid_utils.uuid7()}"


def shares_one_statement(claimed: ClaimedJob, outcome: Outcome) -> bool:
    """Whether ``finish_many`` writes this outcome in its one shared statement (a completed
    one-time run) rather than through ``finish``."""
    return outcome.status is RunStatus.COMPLETED and claimed.job.job_type is JobType.ONE_TIME


def waiting_for_tick(j: Any) -> sa.ColumnElement[bool]:
    """A pending recurring row that is only waiting for its tick: no attempt made, and not a tick
    handed back or lost (those give their attempt back, but are due now, off their tick: a run in
    progress that a re-schedule or a trigger must not replace)."""
    return sa.and_(j.attempt == 0, j.next_run == j.scheduled_at)


@dataclass(frozen=True)
class FinishResult:
    """What an outcome write did. ``applied`` is False when the lease was no longer ours."""

    applied: bool
    status: JobStatus | None = None
    next_run: dt.datetime | None = None
    already_recorded: bool = False


@dataclass(frozen=True)
class TakeBackResult:
    """Jobs taken back from a node (rescue of stalled leases, or release at shutdown)."""

    pending: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return len(self.pending) + len(self.failed)


@dataclass(frozen=True)
class CancelResult:
    """``cancelled``: the job will not run; ``requested``: it is running, its holder was asked."""

    key: str
    cancelled: bool
    requested: bool
    node_id: str | None = None


class JobRepository:
    """Atomic, fenced state transitions for one installation, inside one session."""

    def __init__(
        self,
        session: Session | sa.Connection,
        models: Models,
        *,
        backoff: RetryBackoff | None = None,
        max_params_bytes: int = DEFAULT_MAX_PARAMS_BYTES,
        direct: bool = False,
    ) -> None:
        self.session = session
        # ``session`` is one of the scheduler's own autocommit connections: hot statements may go
        # straight to its cursor (see ``direct``).
        self.direct = direct and isinstance(session, sa.Connection)
        self.models = models
        self.jobs = models.jobs
        self.runs = models.runs
        self.nodes = models.nodes
        self.backoff = backoff or RetryBackoff()
        self.max_params_bytes = max_params_bytes

    # ------------------------------------------------------------------ helpers
    def _execute(self, stmt: sa.Executable, params: Any = None) -> sa.Result[Any]:
        return self.session.execute(stmt, params)

    def _execute_rows(
        self,
        name: str,
        build: Callable[[], sa.Executable],
        values: dict[str, Any],
        *,
        rows: bool = True,
    ) -> Sequence[Sequence[Any]]:
        """Run the prebuilt statement ``name`` (see ``_prebuilt``) with ``values``; its rows
        (none with ``rows=False``, for a caller that does not read them). On the scheduler's own
        autocommit connections it goes straight to the driver's cursor when that changes nothing
        visible (see ``direct``)."""
        statement = self._prebuilt(name, build)
        if self.direct:
            conn: sa.Connection = self.session  # type: ignore[assignment]
            if not fastpath.has_listeners(conn):
                form = self._direct_form(name, statement, conn.dialect)
                if form is not None:
                    return fastpath.execute(conn, form, values, rows=rows)
        result = self._execute(statement, values)
        if rows:
            return result.all()
        result.close()
        return ()

    def _execute_planned(
        self, name: str, build: Callable[[], sa.Executable], values: dict[str, Any]
    ) -> Sequence[Sequence[Any]]:
        """``_execute_rows`` under ``PLANNER_SETTINGS``, set for this statement's transaction:
        in the caller's transaction, the settings first (they last until it ends); on an
        autocommit connection, the settings and the statement as one transaction (one round trip
        on psycopg 3 and psycopg2, see ``fastpath.execute``; else an explicit BEGIN ... COMMIT)."""
        statement = self._prebuilt(name, build)
        if not self.direct:
            self.session.execute(PLANNER_SETTINGS)
            return self._execute(statement, values).all()
        conn: sa.Connection = self.session  # type: ignore[assignment]
        if not fastpath.has_listeners(conn):
            form = self._direct_form(name, statement, conn.dialect)
            if form is not None:
                return fastpath.execute(conn, form, values, settings=PLANNER_SETTINGS_SQL)
        conn.exec_driver_sql("BEGIN")
        try:
            conn.execute(PLANNER_SETTINGS)
            rows = conn.execute(statement, values).all()
            conn.exec_driver_sql("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                conn.exec_driver_sql("ROLLBACK")
            raise
        return rows

    def _direct_form(
        self, name: str, statement: sa.Executable, dialect: sa.Dialect
    ) -> fastpath.DirectStatement | None:
        forms = _DIRECT_FORMS.get(dialect)
        if forms is None:
            forms = _DIRECT_FORMS.setdefault(dialect, {})
        key = (name, self.models)
        if key not in forms:
            forms[key] = fastpath.direct_form(statement, dialect)
        return forms[key]

    def _guard(
        self, transition: Transition, *, lease_id: uuid.UUID | sa.ColumnElement[Any] | None = None
    ) -> sa.ColumnElement[bool]:
        """The WHERE clause a transition needs: its source states, and the lease when fenced."""
        j = self.jobs.c
        sources = [s.value for s in transition.source]
        # One state is compared with "=": an IN list is expanded on every execution.
        clause: sa.ColumnElement[bool] = (
            j.status == sources[0] if len(sources) == 1 else j.status.in_(sources)
        )
        if transition.fenced:
            if lease_id is None:
                raise ValueError(f"transition {transition.name!r} needs the holder's lease_id")
            clause = sa.and_(clause, j.lease_id == lease_id)
        return clause

    def now(self) -> dt.datetime:
        """The database's clock: the start time of the current transaction."""
        value = self.session.execute(sa.select(now())).scalar_one()
        assert isinstance(value, dt.datetime)
        return value

    def notify(self, payload: str = "") -> None:
        """Wake the nodes of this installation (delivered when the transaction commits)."""
        self._execute(sa.select(sa.func.pg_notify(self.models.names.channel, payload)))

    def _with_notify(self, write: Any) -> sa.Select[Any]:
        """``write`` and the NOTIFY that announces it (payload: the ``notify_payload`` parameter)
        as one statement: one round trip, and with no caller transaction it is its own atomic
        transaction. (PostgreSQL runs a data-modifying WITH to completion whether or not the outer
        query reads it.)"""
        done = write.cte("written")
        payload = sa.bindparam("notify_payload", type_=sa.Text)
        return sa.select(sa.func.pg_notify(self.models.names.channel, payload)).add_cte(done)

    def _prebuilt(self, name: str, build: Callable[[], _S]) -> _S:
        """A hot-path statement, built once per installation. Building a Core construct and its
        cache key costs more than a small statement's round trip (about 1 ms for the enqueue
        INSERT); a kept construct memoizes its cache key, so SQLAlchemy finds the compiled form
        at once. The statements take every value as a bound parameter."""
        key = (name, self.models)
        statement = _PREBUILT.get(key)
        if statement is None:
            statement = _PREBUILT.setdefault(key, build())
        return statement  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ scheduling
    def upsert_recurring(self, spec: RecurringSpec) -> JobRecord:
        """Create the row of a recurring job, or update its schedule (one row per name).

        Re-scheduling keeps the row's ``next_run`` (a restart never skips or repeats a due tick),
        takes a changed cron or time zone (the next tick is recomputed from now, unless a run or a
        retry is in progress), and never touches a running lease or a cancelled job's state.
        """
        validate_job_name(spec.name)
        _check_retries(spec.retries)
        j = self.jobs.c
        first = spec.schedule.next_after(self.now())
        stmt = postgresql.insert(self.jobs).values(
            key=spec.name,
            name=spec.name,
            job_type=JobType.RECURRING.value,
            cron=spec.schedule.expression,
            timezone=spec.schedule.timezone,
            misfire=spec.misfire,
            misfire_grace=spec.misfire_grace,
            max_retries=spec.retries,
            status=JobStatus.PENDING.value,
            next_run=first,
            scheduled_at=first,
        )
        excluded = stmt.excluded
        schedule_changed = sa.or_(j.cron != excluded.cron, j.timezone != excluded.timezone)
        take_new = sa.and_(
            j.status == JobStatus.PENDING.value, waiting_for_tick(j), schedule_changed
        )
        upsert = stmt.on_conflict_do_update(
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
        ).returning(*self.jobs.c)
        row = self._execute(upsert).mappings().first()
        if row is None:
            raise InvalidStateError(f"job key {spec.name!r} exists and is not a recurring job")
        self.notify(spec.name)
        return JobRecord.from_row(row)

    def _one_time_values(self, spec: OneTimeSpec, key: str | None) -> dict[str, Any]:
        validate_job_name(spec.name)
        _check_retries(spec.retries, unsaid=True)
        _check_run_at(spec.run_at)
        return {
            "key": key if key is not None else new_key(spec.name),
            "name": spec.name,
            "params_json": encode_params(spec.params, self.max_params_bytes),
            "max_retries": spec.retries,
            "run_at": spec.run_at,
        }

    def _insert_one_time_stmt(self) -> Any:
        due = sa.func.coalesce(sa.bindparam("run_at", type_=sa.DateTime(timezone=True)), now())
        return sa.insert(self.jobs).values(
            key=sa.bindparam("key"),
            name=sa.bindparam("name"),
            job_type=JobType.ONE_TIME.value,
            # The text was validated and serialised once; the cast stores it without re-encoding.
            params=sa.cast(sa.bindparam("params_json", type_=sa.Text), postgresql.JSONB),
            max_retries=sa.bindparam("max_retries"),
            status=JobStatus.PENDING.value,
            next_run=due,
            scheduled_at=due,
        )

    def insert_one_time(self, spec: OneTimeSpec, *, key: str | None = None) -> str:
        """Enqueue one run of a one-time job; returns its key (``name#<uuid>``, drawn here unless
        given: a caller that may have to send the insert twice draws it first, see
        ``is_duplicate_key``)."""
        values = self._one_time_values(spec, key)
        self._execute_rows(
            "insert_one_time",
            lambda: self._with_notify(self._insert_one_time_stmt()),
            {**values, "notify_payload": spec.name},
            rows=False,
        )
        return str(values["key"])

    def insert_many(
        self, specs: Iterable[OneTimeSpec], *, keys: Sequence[str] | None = None
    ) -> list[str]:
        """Enqueue many one-time runs in one statement; returns their keys in order (drawn here
        unless given, one per spec, as for ``insert_one_time``).

        The rows travel as four columns of lines that PostgreSQL splits and unnests (see
        ``lines_column``): one round trip and one statement text, whatever the batch size. (A multi-row VALUES insert, SQLAlchemy's insertmanyvalues,
        needs one placeholder per value, and psycopg's conversion of those 1000-row statements
        alone took longer than PostgreSQL's insert: 2,100 jobs/s against 19,000 this way.)
        """
        # Validate everything before writing anything. A batch usually repeats one name, one
        # retries value, one run_at and often one params object: each distinct value is checked
        # (and serialised) once; per row there is only the key to draw.
        columns: dict[str, list[str]] = {
            "keys": [],
            "params": [],
            "retries": [],
            "run_at": [],
        }
        specs = list(specs)  # keeps every params object alive: its id() stays its own
        if keys is not None and len(keys) != len(specs):
            raise ValueError(f"{len(keys)} keys for {len(specs)} jobs")
        valid_names: set[str] = set()
        instants: dict[dt.datetime | None, str] = {None: ""}  # an empty line is NULL
        encoded: dict[int, str] = {}
        for i, spec in enumerate(specs):
            name, retries, run_at, params = spec.name, spec.retries, spec.run_at, spec.params
            if not isinstance(name, str) or name not in valid_names:
                valid_names.add(validate_job_name(name))
            _check_retries(retries, unsaid=True)
            _check_run_at(run_at)
            if run_at not in instants:
                instants[run_at] = run_at.isoformat()  # type: ignore[union-attr]
            text = encoded.get(id(params))
            if text is None:
                text = encoded[id(params)] = encode_params(params, self.max_params_bytes)
            columns["keys"].append(keys[i] if keys is not None else new_key(name))
            columns["params"].append(text)
            columns["retries"].append("" if retries is None else str(retries))
            columns["run_at"].append(instants[run_at])
        if not columns["keys"]:
            return []
        statement = self._prebuilt(
            "insert_many", lambda: self._with_notify(self._insert_many_stmt())
        )
        self._execute(
            statement,
            {
                "notify_payload": "",
                **{name: "\n".join(values) for name, values in columns.items()},
            },
        )
        return columns["keys"]

    def _insert_many_stmt(self) -> Any:
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
        j = self.jobs.c
        return sa.insert(self.jobs).from_select(
            [
                j.key,
                j.name,
                j.job_type,
                j.params,
                j.max_retries,
                j.status,
                j.next_run,
                j.scheduled_at,
            ],
            sa.select(
                batch.c.key,
                # The name is the key up to its '#' (names cannot contain one): one column less
                # to send.
                sa.func.split_part(batch.c.key, "#", 1),
                sa.literal(JobType.ONE_TIME.value),
                sa.cast(batch.c.params, postgresql.JSONB),
                batch.c.max_retries,
                sa.literal(JobStatus.PENDING.value),
                due,
                due,
            ),
        )

    # ------------------------------------------------------------------ claim and lease
    def claim(
        self,
        node_id: str,
        names: Sequence[str],
        limit: int,
        *,
        retries: Sequence[int] | None = None,
    ) -> list[ClaimedJob]:
        """Lease up to ``limit`` due pending jobs of ``names`` to ``node_id``, in one statement.

        Rows locked by another claimer are skipped, not waited for. Each claim gets a fresh
        ``lease_id``, counts an attempt, and records a run row in the same statement. A job whose
        ``max_retries`` is NULL (its enqueue left them to the handler) gets, for good, the
        ``retries`` given for its name (same order as ``names``; 0 without them).
        """
        if limit <= 0 or not names:
            return []
        result: list[ClaimedJob] = []
        # Values go in at execute time: on SQLAlchemy 2.0, values given with .params() do not
        # reach a parameter inside a CTE that an UPDATE-CTE reads.
        rows = self._execute_planned(
            "claim", self._claim_template, self._claim_values(node_id, names, limit, retries)
        )
        for row in rows:
            record = JobRecord.from_values(row)
            assert record.lease_id is not None
            result.append(ClaimedJob(record, record.lease_id, row[-1]))  # claimed_at
        return result

    def claim_statement(
        self,
        node_id: str,
        names: Sequence[str],
        limit: int,
        *,
        retries: Sequence[int] | None = None,
    ) -> sa.Select[Any]:
        """The statement ``claim`` runs, with its values bound (tests and benchmarks EXPLAIN it).

        The statement's shape is built once per installation and reused with new values: building
        it takes longer than running it (a CTE returning every column), and it runs on every poll.
        """
        template = self._prebuilt("claim", self._claim_template)
        return template.params(**self._claim_values(node_id, names, limit, retries))

    @staticmethod
    def _claim_values(
        node_id: str, names: Sequence[str], limit: int, retries: Sequence[int] | None
    ) -> dict[str, Any]:
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

    def _claim_template(self) -> sa.Select[Any]:
        j, r = self.jobs.c, self.runs.c
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
                j.status == JobStatus.PENDING.value,
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
            sa.update(self.jobs)
            .where(j.key == due.c.key, self._guard(states.CLAIM))
            .values(
                status=JobStatus.RUNNING.value,
                lease_id=sa.func.gen_random_uuid(),
                node_id=sa.bindparam("claim_node_id", type_=sa.Text),
                heartbeat_at=now(),
                attempt=j.attempt + 1,
                max_retries=sa.func.coalesce(j.max_retries, handler_retries, 0),
                last_run_at=now(),
                cancel_requested=False,
                updated_at=now(),
            )
            .returning(*self.jobs.c, now().label("claimed_at"))
            .cte("claimed")
        )
        record_runs = (
            sa.insert(self.runs)
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
            sa.select(*columns, claimed.c.claimed_at)
            .add_cte(record_runs)
            .order_by(claimed.c.next_run)
        )

    def next_due(self, names: Sequence[str]) -> tuple[dt.datetime, dt.datetime | None]:
        """The database time now, and the earliest future ``next_run`` among ``names``' jobs."""
        if not names:
            return self.now(), None
        j = self.jobs.c
        soonest = (
            sa.select(sa.func.min(j.next_run))
            .where(j.status == JobStatus.PENDING.value, j.name.in_(list(names)))
            .scalar_subquery()
        )
        row: Any = self._execute(sa.select(now(), soonest)).one()
        db_now: dt.datetime = row[0]
        next_run: dt.datetime | None = row[1]
        return db_now, next_run

    def heartbeat(self, node_id: str, leases: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Renew this node's leases in one statement; returns those still held (missing = lost)."""
        held = list(leases)
        if not held:
            return set()
        j = self.jobs.c
        mine = (j.lease_id.in_(held), j.node_id == node_id, j.status == JobStatus.RUNNING.value)
        # Lock the rows in key order, as the grouped completions do (they send their rows sorted
        # by key): two statements that lock the same rows in different orders can deadlock.
        locked = sa.select(j.key).where(*mine).order_by(j.key).with_for_update().cte("locked")
        stmt = (
            sa.update(self.jobs)
            .where(j.key == locked.c.key, *mine)
            .values(heartbeat_at=now())
            .returning(j.lease_id)
        )
        return {row[0] for row in self._execute(stmt)}

    # ------------------------------------------------------------------ outcomes (fenced)
    def finish(self, claimed: ClaimedJob, outcome: Outcome) -> FinishResult:
        """Record how an attempt ended, only if ``claimed.lease_id`` still holds the job.

        The job row and its run row change in one statement. A recurring job's next tick is
        computed from the database time of this transaction.
        """
        job = claimed.job
        j = self.jobs.c
        # A claimed job's max_retries is never NULL (the claim resolved it from the handler).
        exhausted = job.attempt > (job.max_retries or 0)
        values: dict[str, Any] = {
            "lease_id": None,
            "heartbeat_at": None,
            "cancel_requested": False,
            "lost_leases": 0,  # a run finished: the count of lost runs in a row starts over
            "execution_time_ms": outcome.duration_ms,
            "updated_at": now(),
        }
        next_run: dt.datetime | None = None
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

        retry = outcome.status is RunStatus.FAILED and not exhausted
        if retry:
            transition, status = states.RETRY, JobStatus.PENDING
            values.update(next_run=now() + self.backoff.delay(job.attempt))
        elif outcome.status is RunStatus.CANCELLED:
            # cancel_job ends the job, recurring ones too: off until retry_job, as when it is
            # cancelled while pending (an operator's cancel is never undone by the next tick).
            transition, status = states.ABORT, JobStatus.CANCELLED
            values.update(next_run=None, finished_at=now())
        elif job.job_type is JobType.RECURRING:
            try:
                next_run = self._next_tick(job)
            except (InvalidCronError, InvalidTimezoneError) as exc:
                # The stored schedule is invalid (edited by hand, or written by another version):
                # this job has no next tick. Disable it, with the reason; the node goes on.
                transition, status = states.FAIL, JobStatus.FAILED
                values.update(next_run=None, finished_at=now(), last_error=schedule_disabled(exc))
            else:
                # Done with this tick, whatever happened: wait for the next one.
                transition, status = states.RESCHEDULE, JobStatus.PENDING
                values.update(next_run=next_run, scheduled_at=next_run, attempt=0)
        else:
            status = {
                RunStatus.COMPLETED: JobStatus.COMPLETED,
                RunStatus.FAILED: JobStatus.FAILED,
                RunStatus.CANCELLED: JobStatus.CANCELLED,
                RunStatus.SKIPPED: JobStatus.COMPLETED,
            }[outcome.status]
            transition = {
                JobStatus.COMPLETED: states.COMPLETE,
                JobStatus.FAILED: states.FAIL,
                JobStatus.CANCELLED: states.ABORT,
            }[status]
            values.update(next_run=None, finished_at=now())
        values["status"] = status.value

        moved = (
            sa.update(self.jobs)
            .where(j.key == job.key, self._guard(transition, lease_id=claimed.lease_id))
            .values(**values)
            .returning(j.key, j.next_run)
            .cte("moved")
        )
        r = self.runs.c
        # The run row changes in the same statement; the result comes from the job row, so a job
        # whose run row is missing (pruned, or made by hand) is still reported truthfully.
        record_run = (
            sa.update(self.runs)
            .where(r.lease_id == claimed.lease_id, r.job_key == moved.c.key)
            .values(
                status=outcome.status.value,
                finished_at=now(),
                duration_ms=outcome.duration_ms,
                error=outcome.error,
            )
            .cte("record_run")
        )
        stmt = sa.select(moved.c.next_run).add_cte(record_run)
        row = self._execute(stmt).first()
        if row is not None:
            return FinishResult(applied=True, status=status, next_run=row[0])
        # Matched nothing. Either another node took the job back (lease lost), or this is a retry
        # of a write whose COMMIT did land before the connection died: the run row tells which.
        recorded = self._execute(sa.select(r.status).where(r.lease_id == claimed.lease_id)).scalar()
        if recorded == outcome.status.value:
            return FinishResult(applied=True, status=status, already_recorded=True)
        return FinishResult(applied=False)

    def finish_many(self, items: Sequence[tuple[ClaimedJob, Outcome]]) -> list[FinishResult]:
        """``finish`` for each item, in fewer statements; results in the order of ``items``.

        Completed one-time runs, the bulk of a busy queue, share one statement (their keys, leases
        and durations travel as arrays); any other outcome goes through ``finish``. Every row is
        still fenced by its own lease: a lost lease matches nothing and reads as not applied.
        """
        results: list[FinishResult | None] = [None] * len(items)
        simple = [i for i, item in enumerate(items) if shares_one_statement(*item)]
        if simple:
            done = self._complete_one_time([items[i] for i in simple])
            for i, result in zip(simple, done, strict=True):
                results[i] = result
        for i, (claimed, outcome) in enumerate(items):
            if results[i] is None:
                results[i] = self.finish(claimed, outcome)
        return [result for result in results if result is not None]

    def _complete_one_time(self, items: list[tuple[ClaimedJob, Outcome]]) -> list[FinishResult]:
        results_order = items
        items = sorted(items, key=lambda item: item[0].key)  # lock order: see ``heartbeat``
        keys = [claimed.key for claimed, _ in items]
        rows = self._execute_rows(
            "complete_one_time",
            self._complete_one_time_stmt,
            {
                # One text value per column (see ``lines_column``).
                "keys": "\n".join(keys),
                "leases": "\n".join(claimed.lease_id.hex for claimed, _ in items),
                "durations": "\n".join(str(outcome.duration_ms) for _, outcome in items),
            },
        )
        lines = rows[0][0] if rows else None
        written = set(lines.split("\n")) if lines else set()
        missing = [claimed.lease_id for claimed, _ in items if claimed.key not in written]
        recorded: set[uuid.UUID] = set()
        if missing:
            # As in ``finish``: a lease that matched nothing was either lost, or this is a retry
            # of a write whose COMMIT landed before the connection died; the run row tells which.
            r = self.runs.c
            recorded = {
                row[0]
                for row in self._execute(
                    sa.select(r.lease_id).where(
                        r.lease_id.in_(missing), r.status == RunStatus.COMPLETED.value
                    )
                )
            }
        completed = FinishResult(applied=True, status=JobStatus.COMPLETED)
        again = FinishResult(applied=True, status=JobStatus.COMPLETED, already_recorded=True)
        return [
            completed
            if claimed.key in written
            else again
            if claimed.lease_id in recorded
            else FinishResult(False)
            for claimed, _ in results_order
        ]

    def _complete_one_time_stmt(self) -> Any:
        """The COMPLETE transition of ``finish`` for a one-time job, for many rows at once."""
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
        j, r = self.jobs.c, self.runs.c
        moved = (
            sa.update(self.jobs)
            .where(j.key == done.c.key, self._guard(states.COMPLETE, lease_id=done.c.lease_id))
            .values(
                status=JobStatus.COMPLETED.value,
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
            sa.update(self.runs)
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

    def _next_tick(self, job: JobRecord) -> dt.datetime:
        assert job.cron is not None and job.scheduled_at is not None
        schedule = CronSchedule.parse(job.cron, job.timezone)
        misfire: MisfirePolicy = job.misfire  # type: ignore[assignment]
        return next_run_after(
            schedule,
            tick=job.scheduled_at,
            now=self.now(),
            misfire=misfire,
            grace=job.misfire_grace,
        )

    # ------------------------------------------------------------------ taking leases back
    def rescue_stalled(
        self,
        timeout: dt.timedelta,
        *,
        limit: int = 1000,
        max_lost_leases: int = DEFAULT_MAX_LOST_LEASES,
    ) -> TakeBackResult:
        """Take back jobs whose heartbeat is older than ``timeout`` (their node died or hung).

        One statement moves them back to ``pending``, runnable at once. A lost run is not a
        failure: it uses up no attempt (``retries`` count exceptions only), it adds one to the
        job's ``lost_leases``. The run that makes ``lost_leases`` reach ``max_lost_leases`` ends
        the job instead (a poison job that takes its node down on every run): a one-time job
        ``failed``, a recurring one waits for its next tick. A live lease is never touched: the
        heartbeat age is the guard, evaluated on the database clock, and the row is locked while
        it is decided.
        """
        j = self.jobs.c
        stalled = j.heartbeat_at < now() - timeout
        return self._take_back(
            stalled,
            RunStatus.LOST,
            "lease lost: the node stopped heartbeating",
            limit,
            max_lost_leases=max_lost_leases,
        )

    def release(
        self, node_id: str, leases: Iterable[uuid.UUID], *, reason: str | None = None
    ) -> TakeBackResult:
        """Hand back this node's unfinished jobs (shutdown): pending, runnable at once, and no
        attempt used up. ``reason`` goes in the run rows' error."""
        held = list(leases)
        if not held:
            return TakeBackResult()
        j = self.jobs.c
        mine = sa.and_(j.lease_id.in_(held), j.node_id == node_id)
        return self._take_back(
            mine,
            RunStatus.RELEASED,
            reason or "released: still running when its node shut down",
            len(held),
        )

    def _take_back(
        self,
        condition: sa.ColumnElement[bool],
        run_status: RunStatus,
        reason: str,
        limit: int,
        *,
        max_lost_leases: int = DEFAULT_MAX_LOST_LEASES,
    ) -> TakeBackResult:
        j, r = self.jobs.c, self.runs.c
        # The rescuer skips rows locked by someone else (a heartbeat or an outcome write in
        # flight): it looks again next pass. A release must wait for them instead: skipping a row
        # that our own heartbeat happens to be renewing would leave it running under a dead node.
        lost = run_status is RunStatus.LOST
        skip_locked = lost
        victims = (
            sa.select(j.key, j.lease_id)
            .where(j.status == JobStatus.RUNNING.value, condition)
            .order_by(j.heartbeat_at)
            .limit(limit)
            .with_for_update(skip_locked=skip_locked)
            .cte("victims")
            .prefix_with("MATERIALIZED")
        )
        # Neither a lost nor a released run uses up an attempt: the claim counted one, give it
        # back (the rerun has the same attempt number). A lost run counts in ``lost_leases``, and
        # the one that reaches ``max_lost_leases`` ends a one-time job (``failed``); a recurring
        # job then waits for its next tick (below).
        poisoned = sa.and_(sa.literal(lost), j.lost_leases + 1 >= max_lost_leases)
        one_time_poisoned = sa.and_(poisoned, j.job_type == JobType.ONE_TIME.value)
        values: dict[str, Any] = {}
        if lost:
            values = {
                "lost_leases": j.lost_leases + 1,
                "last_error": sa.case(
                    (
                        poisoned,
                        sa.func.concat(
                            "lost its lease ",
                            sa.cast(j.lost_leases + 1, sa.Text),
                            " times (node died or hung); not retried",
                        ),
                    ),
                    else_=reason,
                ),
                "last_failure_at": sa.case((one_time_poisoned, now()), else_=j.last_failure_at),
                "consecutive_failures": sa.case(
                    (one_time_poisoned, j.consecutive_failures + 1),
                    else_=j.consecutive_failures,
                ),
            }
        moved = (
            sa.update(self.jobs)
            .where(
                j.key == victims.c.key,
                j.lease_id == victims.c.lease_id,
                self._guard(
                    states.RESCUE if lost else states.RELEASE,
                    lease_id=victims.c.lease_id,
                ),
            )
            .values(
                status=sa.case(
                    (one_time_poisoned, JobStatus.FAILED.value), else_=JobStatus.PENDING.value
                ),
                next_run=sa.case((one_time_poisoned, sa.null()), else_=now()),
                finished_at=sa.case((one_time_poisoned, now()), else_=sa.null()),
                # A job given up keeps its last attempt, as its run rows show it.
                attempt=sa.case(
                    (one_time_poisoned, j.attempt), else_=sa.func.greatest(j.attempt - 1, 0)
                ),
                lease_id=None,
                heartbeat_at=None,
                cancel_requested=False,
                updated_at=now(),
                **values,
            )
            .returning(
                j.key,
                j.status,
                j.job_type,
                j.cron,
                j.timezone,
                j.misfire,
                j.misfire_grace,
                j.scheduled_at,
                j.attempt,
                j.max_retries,
                j.lost_leases,  # the new count
                victims.c.lease_id.label("old_lease"),
            )
            .cte("moved")
        )
        record_runs = (
            sa.update(self.runs)
            .where(r.lease_id == moved.c.old_lease)
            .values(status=run_status.value, finished_at=now(), error=reason)
            .cte("record_runs")
        )
        stmt = sa.select(moved).add_cte(record_runs)
        rows = self._execute(stmt).mappings().all()
        pending: list[str] = []
        failed: list[str] = []
        db_now: dt.datetime | None = None
        for row in rows:
            if row["status"] == JobStatus.FAILED.value:
                failed.append(row["key"])
                continue
            if (
                lost
                and row["job_type"] == JobType.RECURRING.value
                and row["lost_leases"] >= max_lost_leases
            ):
                # A recurring job whose runs keep being lost gives up this tick and waits for
                # the next one. The row is locked by the statement above until this transaction
                # ends, so this second write cannot race anyone.
                db_now = db_now or self.now()
                still_pending = sa.and_(j.key == row["key"], j.status == JobStatus.PENDING.value)
                try:
                    tick = next_run_after(
                        CronSchedule.parse(row["cron"], row["timezone"]),
                        tick=row["scheduled_at"],
                        now=db_now,
                        misfire=row["misfire"],
                        grace=row["misfire_grace"],
                    )
                except (InvalidCronError, InvalidTimezoneError) as exc:
                    # An invalid stored schedule disables its own job; raising here would roll
                    # back the rescue of every other stalled job, on every pass, forever.
                    self._execute(
                        sa.update(self.jobs)
                        .where(still_pending)
                        .values(
                            status=JobStatus.FAILED.value,
                            next_run=None,
                            finished_at=now(),
                            last_error=schedule_disabled(exc),
                        )
                    )
                    failed.append(row["key"])
                    continue
                self._execute(
                    sa.update(self.jobs)
                    .where(still_pending)
                    .values(next_run=tick, scheduled_at=tick, attempt=0, lost_leases=0)
                )
            pending.append(row["key"])
        if pending:
            self.notify()
        return TakeBackResult(tuple(pending), tuple(failed))

    # ------------------------------------------------------------------ operator actions
    def cancel(self, key: str) -> CancelResult:
        """Cancel a pending job, or ask the holder of a running one to stop it."""
        j = self.jobs.c
        cancelled = self._execute(
            sa.update(self.jobs)
            .where(j.key == key, self._guard(states.CANCEL))
            .values(
                status=JobStatus.CANCELLED.value,
                next_run=None,
                finished_at=now(),
                last_error="cancelled",
                updated_at=now(),
            )
            .returning(j.key)
        ).first()
        if cancelled is not None:
            return CancelResult(key, cancelled=True, requested=False)
        # Running: only the lease holder writes a running row's outcome, so flag it and let the
        # holder abort (it sees the flag at its next heartbeat).
        requested = self._execute(
            sa.update(self.jobs)
            .where(j.key == key, j.status == JobStatus.RUNNING.value)
            .values(cancel_requested=True, updated_at=now())
            .returning(j.node_id)
        ).first()
        if requested is not None:
            return CancelResult(key, cancelled=False, requested=True, node_id=requested[0])
        existing = self.get(key)
        if existing is None:
            raise JobNotFoundError(f"no job with key {key!r}")
        raise InvalidStateError(f"job {key!r} is {existing.status.value} and cannot be cancelled")

    def cancel_requested(self, leases: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these leases have a pending cancel request."""
        held = list(leases)
        if not held:
            return set()
        j = self.jobs.c
        rows = self._execute(
            sa.select(j.lease_id).where(j.lease_id.in_(held), j.cancel_requested.is_(True))
        )
        return {row[0] for row in rows}

    def trigger(self, key: str) -> JobRecord:
        """Make a pending job due now (a recurring job runs now, outside its schedule)."""
        j = self.jobs.c
        manual_tick = sa.and_(j.job_type == JobType.RECURRING.value, waiting_for_tick(j))
        row = (
            self._execute(
                sa.update(self.jobs)
                .where(j.key == key, self._guard(states.TRIGGER))
                .values(
                    next_run=now(),
                    scheduled_at=sa.case((manual_tick, now()), else_=j.scheduled_at),
                    updated_at=now(),
                )
                .returning(*self.jobs.c)
            )
            .mappings()
            .first()
        )
        if row is None:
            return self._refuse(key, "triggered")
        self.notify(key)
        return JobRecord.from_row(row)

    def retry_now(self, key: str) -> JobRecord:
        """Re-queue a failed or cancelled job to run now, with a fresh attempt budget."""
        j = self.jobs.c
        row = (
            self._execute(
                sa.update(self.jobs)
                .where(j.key == key, self._guard(states.RETRY_NOW))
                .values(
                    status=JobStatus.PENDING.value,
                    next_run=now(),
                    # A new run request: a new scheduled_at keeps (key, scheduled_at, attempt) unique.
                    scheduled_at=now(),
                    attempt=0,
                    lost_leases=0,
                    finished_at=None,
                    updated_at=now(),
                )
                .returning(*self.jobs.c)
            )
            .mappings()
            .first()
        )
        if row is None:
            return self._refuse(key, "retried")
        self.notify(key)
        return JobRecord.from_row(row)

    def _refuse(self, key: str, action: str) -> JobRecord:
        existing = self.get(key)
        if existing is None:
            raise JobNotFoundError(f"no job with key {key!r}")
        raise InvalidStateError(f"job {key!r} is {existing.status.value} and cannot be {action}")

    # ------------------------------------------------------------------ maintenance
    def cleanup_finished(self, retention: dt.timedelta, *, limit: int = 10000) -> int:
        """Delete finished one-time jobs (and runs) older than ``retention``; returns jobs deleted.

        Runs under ``PLANNER_SETTINGS`` (for the rest of the caller's transaction): each delete
        walks an index in order and stops at ``limit``. Without them, on a table never analyzed,
        the jobs' delete read every expired entry of the finished index (270,000 to delete 1,000),
        and the runs' delete could hash-join a sequential scan of the whole runs table."""
        j, r = self.jobs.c, self.runs.c
        self.session.execute(PLANNER_SETTINGS)
        old_jobs = (
            sa.select(j.key)
            .where(
                j.job_type == JobType.ONE_TIME.value,
                j.status.in_([s.value for s in states.TERMINAL_STATUSES]),
                j.finished_at < now() - retention,
            )
            .limit(limit)
            .scalar_subquery()
        )
        deleted = self._execute(sa.delete(self.jobs).where(j.key.in_(old_jobs)).returning(j.key))
        count = len(deleted.all())
        old_runs = (
            sa.select(r.id)
            .where(r.finished_at < now() - retention)
            # The oldest runs first, along the primary key: runs are numbered as they start, so
            # the scan meets the runs to prune first (there is no index on finished_at).
            .order_by(r.id)
            .limit(limit)
            .scalar_subquery()
        )
        self._execute(sa.delete(self.runs).where(r.id.in_(old_runs)))
        return count

    def delete_orphans(self, timeout: dt.timedelta, *, limit: int = 10000) -> list[str]:
        """Delete jobs whose name no node has registered within ``timeout``.

        The view is cluster-wide (the nodes table), so a job registered on only some nodes is safe;
        a row younger than ``timeout`` is never deleted (a job enqueued before its first node
        started), and neither is a running one. Node rows unseen for ``timeout`` go too.
        """
        j, n = self.jobs.c, self.nodes.c
        known = (
            sa.select(sa.literal(1))
            .where(n.last_seen_at > now() - timeout, j.name == sa.any_(n.job_names))
            .exists()
        )
        orphans = (
            sa.select(j.key)
            .where(j.status != JobStatus.RUNNING.value, j.created_at < now() - timeout, ~known)
            .limit(limit)
            .scalar_subquery()
        )
        deleted = self._execute(sa.delete(self.jobs).where(j.key.in_(orphans)).returning(j.key))
        keys = [row[0] for row in deleted]
        self._execute(sa.delete(self.nodes).where(n.last_seen_at < now() - timeout))
        return keys

    # ------------------------------------------------------------------ nodes
    def register_node(
        self, node_id: str, node_name: str, hostname: str, pid: int, job_names: Sequence[str]
    ) -> None:
        n = self.nodes.c
        stmt = postgresql.insert(self.nodes).values(
            node_id=node_id,
            node_name=node_name,
            hostname=hostname,
            pid=pid,
            job_names=sorted(job_names),
        )
        self._execute(
            stmt.on_conflict_do_update(
                index_elements=[n.node_id],
                set_={
                    "job_names": stmt.excluded.job_names,
                    "last_seen_at": now(),
                    "stopped_at": None,
                },
            )
        )

    def touch_node(self, node_id: str, job_names: Sequence[str] | None = None) -> bool:
        """Mark the node alive (and update its job names); False if its row is gone."""
        n = self.nodes.c
        values: dict[str, Any] = {"last_seen_at": now(), "stopped_at": None}
        if job_names is not None:
            values["job_names"] = sorted(job_names)
        row = self._execute(
            sa.update(self.nodes).where(n.node_id == node_id).values(**values).returning(n.node_id)
        ).first()
        return row is not None

    def deregister_node(self, node_id: str) -> None:
        """Mark the node stopped. The row stays (with its job names) until the orphan horizon, so
        a rolling restart never makes a job look orphaned."""
        n = self.nodes.c
        self._execute(
            sa.update(self.nodes)
            .where(n.node_id == node_id)
            .values(stopped_at=now(), last_seen_at=now())
        )

    def list_nodes(self, *, live_within: dt.timedelta | None = None) -> list[NodeRecord]:
        n = self.nodes.c
        stmt = sa.select(self.nodes).order_by(n.started_at)
        if live_within is not None:
            stmt = stmt.where(n.stopped_at.is_(None), n.last_seen_at > now() - live_within)
        return [NodeRecord.from_row(row) for row in self._execute(stmt).mappings()]

    # ------------------------------------------------------------------ reads
    def get(self, key: str) -> JobRecord | None:
        row = self._execute(sa.select(self.jobs).where(self.jobs.c.key == key)).mappings().first()
        return JobRecord.from_row(row) if row is not None else None

    def list_jobs(
        self,
        *,
        name: str | None = None,
        status: JobStatus | str | None = None,
        job_type: JobType | str | None = None,
        limit: int = 100,
    ) -> list[JobRecord]:
        j = self.jobs.c
        stmt = sa.select(self.jobs).order_by(j.next_run.nulls_last(), j.key).limit(limit)
        if name is not None:
            stmt = stmt.where(j.name == name)
        if status is not None:
            stmt = stmt.where(j.status == JobStatus(status).value)
        if job_type is not None:
            stmt = stmt.where(j.job_type == JobType(job_type).value)
        return [JobRecord.from_row(row) for row in self._execute(stmt).mappings()]

    def run_of_lease(self, lease_id: uuid.UUID) -> RunRecord | None:
        """The run row of one attempt (one lease), or None if it is gone."""
        stmt = sa.select(self.runs).where(self.runs.c.lease_id == lease_id)
        row = self._execute(stmt).mappings().first()
        return None if row is None else RunRecord.from_row(row)

    def list_runs(self, key: str, *, limit: int = 100) -> list[RunRecord]:
        r = self.runs.c
        stmt = (
            sa.select(self.runs)
            .where(r.job_key == key)
            # Newest first, in the order of the tick_ix index (a run's id follows the same order).
            # A handed-back or lost run and its rerun share an attempt: the later one first.
            .order_by(r.scheduled_at.desc(), r.attempt.desc(), r.id.desc())
            .limit(limit)
        )
        return [RunRecord.from_row(row) for row in self._execute(stmt).mappings()]

    def count_by_status(self) -> dict[str, int]:
        j = self.jobs.c
        rows: Any = self._execute(sa.select(j.status, sa.func.count()).group_by(j.status)).all()
        return {str(status): int(count) for status, count in rows}
