"""``JobRepository``: every statement pg_scheduler runs, one method per state transition.

The repository works inside the caller's ``Session`` and never commits or rolls back: an enqueue
made through the application's session exists if and only if the application commits. Each
transition is one statement guarded by the state it expects (``states.TRANSITIONS``) and, when
fenced, by a lease, so a writer that lost the race matches no row and learns so from the result.
Every time comparison uses the database's ``now()``; a node's clock never meets another node's.

The statements are built in ``queries`` (a run's path: enqueue, claim, heartbeat, outcome) and
``admin`` (take-back, operator actions, housekeeping); here they are run, after their input is
checked, and their rows mapped to ``records``. The reads and the node registry's writes are the
base classes ``reads.JobReads`` and ``nodes.NodeRegistry``. When a
recurring job runs next is ``ticks.next_tick``'s decision, which transition records a run's end
``states.after_run``'s.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
import uuid_utils
from sqlalchemy.orm import Session

from pg_scheduler import states, ticks
from pg_scheduler.config import DEFAULT_MAX_LOST_LEASES, RetryBackoff
from pg_scheduler.errors import InvalidStateError, JobNotFoundError
from pg_scheduler.models import Models
from pg_scheduler.naming import validate_job_name
from pg_scheduler.params import DEFAULT_MAX_PARAMS_BYTES, encode_params
from pg_scheduler.states import JobStatus, JobType, RunStatus

from . import admin, fastpath, queries
from .nodes import NodeRegistry, delete_stale_nodes
from .records import (
    CancelResult,
    ClaimedJob,
    FinishResult,
    JobRecord,
    OneTimeSpec,
    Outcome,
    RecurringSpec,
    TakeBackResult,
    check_retries,
    check_run_at,
)


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


class JobRepository(NodeRegistry):
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
        # straight to its cursor (see ``fastpath``).
        self.direct = direct and isinstance(session, sa.Connection)
        self.models = models
        self.jobs = models.jobs
        self.runs = models.runs
        self.nodes = models.nodes
        self.backoff = backoff or RetryBackoff()
        self.max_params_bytes = max_params_bytes

    # ------------------------------------------------------------------ helpers
    def notify(self, payload: str = "") -> None:
        """Wake the nodes of this installation (delivered when the transaction commits)."""
        self._execute(queries.notify(self.models, payload))

    # ------------------------------------------------------------------ scheduling
    def upsert_recurring(self, spec: RecurringSpec) -> JobRecord:
        """Create the row of a recurring job, or update its schedule (one row per name).

        Re-scheduling keeps the row's ``next_run`` (a restart never skips or repeats a due tick),
        takes a changed cron or time zone (the next tick is recomputed from now, unless a run or a
        retry is in progress), and never touches a running lease or a cancelled job's state.
        """
        validate_job_name(spec.name)
        check_retries(spec.retries)
        first = ticks.next_tick(spec, self.now())
        # ``spec.schedule`` was validated when it was made: it has a tick.
        assert isinstance(first, ticks.NextTick), first
        values = {
            "key": spec.name,
            "name": spec.name,
            "cron": spec.schedule.expression,
            "timezone": spec.schedule.timezone,
            "misfire": spec.misfire,
            "misfire_grace": spec.misfire_grace,
            "max_retries": spec.retries,
        }
        row = self._execute(queries.upsert_recurring(self.models, values, first.at))
        found = row.mappings().first()
        if found is None:
            raise InvalidStateError(f"job key {spec.name!r} exists and is not a recurring job")
        self.notify(spec.name)
        return JobRecord.from_row(found)

    def _one_time_values(self, spec: OneTimeSpec, key: str | None) -> dict[str, Any]:
        validate_job_name(spec.name)
        check_retries(spec.retries, unsaid=True)
        check_run_at(spec.run_at)
        return {
            "key": key if key is not None else new_key(spec.name),
            "name": spec.name,
            "params_json": encode_params(spec.params, self.max_params_bytes),
            "max_retries": spec.retries,
            "run_at": spec.run_at,
        }

    def insert_one_time(self, spec: OneTimeSpec, *, key: str | None = None) -> str:
        """Enqueue one run of a one-time job; returns its key (``name#<uuid>``, drawn here unless
        given: a caller that may have to send the insert twice draws it first, see
        ``is_duplicate_key``)."""
        values = self._one_time_values(spec, key)
        fastpath.run_prebuilt(
            self.session,
            "insert_one_time",
            self.models,
            lambda: queries.with_notify(self.models, queries.insert_one_time(self.models)),
            {**values, "notify_payload": spec.name},
            direct=self.direct,
            rows=False,
        )
        return str(values["key"])

    def insert_many(
        self, specs: Iterable[OneTimeSpec], *, keys: Sequence[str] | None = None
    ) -> list[str]:
        """Enqueue many one-time runs in one statement; returns their keys in order (drawn here
        unless given, one per spec, as for ``insert_one_time``).

        The rows travel as four columns of lines that PostgreSQL splits and unnests (see
        ``queries.lines_column``): one round trip and one statement text, whatever the batch
        size. (A multi-row VALUES insert, SQLAlchemy's insertmanyvalues, needs one placeholder
        per value, and psycopg's conversion of those 1000-row statements alone took longer than
        PostgreSQL's insert: 2,100 jobs/s against 19,000 this way.)
        """
        # Validate everything before writing anything. A batch usually repeats one name, one
        # retries value, one run_at and often one params object: each distinct value is checked
        # (and serialised) once; per row there is only the key to draw.
        columns: dict[str, list[str]] = {"keys": [], "params": [], "retries": [], "run_at": []}
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
            check_retries(retries, unsaid=True)
            check_run_at(run_at)
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
        statement = fastpath.prebuilt(
            "insert_many",
            self.models,
            lambda: queries.with_notify(self.models, queries.insert_many(self.models)),
        )
        lines = {name: "\n".join(values) for name, values in columns.items()}
        self._execute(statement, {"notify_payload": "", **lines})
        return columns["keys"]

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
        rows = fastpath.run_prebuilt_planned(
            self.session,
            "claim",
            self.models,
            lambda: queries.claim(self.models),
            queries.claim_values(node_id, names, limit, retries),
            direct=self.direct,
            settings=queries.PLANNER_SETTINGS,
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
        template = fastpath.prebuilt("claim", self.models, lambda: queries.claim(self.models))
        return template.params(**queries.claim_values(node_id, names, limit, retries))

    def heartbeat(self, node_id: str, leases: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Renew this node's leases in one statement; returns those still held (missing = lost)."""
        held = list(leases)
        if not held:
            return set()
        return {row[0] for row in self._execute(queries.heartbeat(self.models, node_id, held))}

    # ------------------------------------------------------------------ outcomes (fenced)
    def finish(self, claimed: ClaimedJob, outcome: Outcome) -> FinishResult:
        """Record how an attempt ended, only if ``claimed.lease_id`` still holds the job.

        The job row and its run row change in one statement. A recurring job's next tick is
        computed from the database time of this transaction.
        """
        job = claimed.job
        # A claimed job's max_retries is never NULL (the claim resolved it from the handler).
        transition = states.after_run(
            outcome.status,
            recurring=job.job_type is JobType.RECURRING,
            retry_left=job.attempt <= (job.max_retries or 0),
        )
        tick: dt.datetime | None = None
        disabled: str | None = None
        if transition is states.RESCHEDULE:
            decision = ticks.next_tick(job, self.now())
            if isinstance(decision, ticks.Disabled):
                # The stored schedule is invalid (edited by hand, or written by another version):
                # this job has no next tick. Disable it, with the reason; the node goes on.
                transition, disabled = states.FAIL, decision.reason
            else:
                tick = decision.at
        statement = queries.finish(
            self.models,
            job.key,
            claimed.lease_id,
            transition,
            outcome,
            retry_delay=self.backoff.delay(job.attempt) if transition is states.RETRY else None,
            tick=tick,
            disabled=disabled,
        )
        status = transition.target
        row = self._execute(statement).first()
        if row is not None:
            return FinishResult(applied=True, status=status, next_run=row[0])
        # Matched nothing. Either another node took the job back (lease lost), or this is a retry
        # of a write whose COMMIT did land before the connection died: the run row tells which.
        recorded = self._execute(queries.run_status_of(self.models, claimed.lease_id)).scalar()
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
        rows = fastpath.run_prebuilt(
            self.session,
            "complete_one_time",
            self.models,
            lambda: queries.complete_one_time(self.models),
            {
                # One text value per column (see ``queries.lines_column``).
                "keys": "\n".join(claimed.key for claimed, _ in items),
                "leases": "\n".join(claimed.lease_id.hex for claimed, _ in items),
                "durations": "\n".join(str(outcome.duration_ms) for _, outcome in items),
            },
            direct=self.direct,
        )
        lines = rows[0][0] if rows else None
        written = set(lines.split("\n")) if lines else set()
        missing = [claimed.lease_id for claimed, _ in items if claimed.key not in written]
        recorded: set[uuid.UUID] = set()
        if missing:
            # As in ``finish``: a lease that matched nothing was either lost, or this is a retry
            # of a write whose COMMIT landed before the connection died; the run row tells which.
            found = self._execute(queries.completed_runs(self.models, missing))
            recorded = {row[0] for row in found}
        status = states.COMPLETE.target
        completed = FinishResult(applied=True, status=status)
        again = FinishResult(applied=True, status=status, already_recorded=True)
        return [
            completed
            if claimed.key in written
            else again
            if claimed.lease_id in recorded
            else FinishResult(False)
            for claimed, _ in results_order
        ]

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
        stalled = self.jobs.c.heartbeat_at < queries.now() - timeout
        reason = "lease lost: the node stopped heartbeating"
        return self._take_back(stalled, states.RESCUE, reason, limit, max_lost_leases)

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
        reason = reason or "released: still running when its node shut down"
        return self._take_back(mine, states.RELEASE, reason, len(held), DEFAULT_MAX_LOST_LEASES)

    def _take_back(
        self,
        condition: sa.ColumnElement[bool],
        transition: states.Transition,
        reason: str,
        limit: int,
        max_lost_leases: int,
    ) -> TakeBackResult:
        statement = admin.take_back(
            self.models, condition, transition, reason, limit, max_lost_leases=max_lost_leases
        )
        rows = self._execute(statement).mappings().all()
        pending: list[str] = []
        failed: list[str] = []
        db_now: dt.datetime | None = None
        for row in rows:
            record = JobRecord.from_row(row)
            if record.status is JobStatus.FAILED:
                failed.append(record.key)
                continue
            if (
                transition is states.RESCUE
                and record.is_recurring
                and record.lost_leases >= max_lost_leases
            ):
                # A recurring job whose runs keep being lost gives up this tick and waits for
                # the next one. The row is locked by the statement above until this transaction
                # ends, so this second write cannot race anyone.
                db_now = db_now or self.now()
                decision = ticks.next_tick(record, db_now)
                if isinstance(decision, ticks.Disabled):
                    # An invalid stored schedule disables its own job; raising here would roll
                    # back the rescue of every other stalled job, on every pass, forever.
                    self._execute(admin.disable(self.models, record.key, decision.reason))
                    failed.append(record.key)
                    continue
                self._execute(admin.next_tick(self.models, record.key, decision.at))
            pending.append(record.key)
        if pending:
            self.notify()
        return TakeBackResult(tuple(pending), tuple(failed))

    # ------------------------------------------------------------------ operator actions
    def cancel(self, key: str) -> CancelResult:
        """Cancel a pending job, or ask the holder of a running one to stop it."""
        if self._execute(admin.cancel(self.models, key)).first() is not None:
            return CancelResult(key, cancelled=True, requested=False)
        # Running: only the lease holder writes a running row's outcome, so flag it and let the
        # holder abort (it sees the flag at its next heartbeat).
        requested = self._execute(admin.request_cancel(self.models, key)).first()
        if requested is not None:
            return CancelResult(key, cancelled=False, requested=True, node_id=requested[0])
        existing = self.get(key)
        if existing is None:
            raise JobNotFoundError(f"no job with key {key!r}")
        raise InvalidStateError(f"job {key!r} is {existing.status.value} and cannot be cancelled")

    def trigger(self, key: str) -> JobRecord:
        """Make a pending job due now (a recurring job runs now, outside its schedule)."""
        row = self._execute(admin.trigger(self.models, key)).mappings().first()
        if row is None:
            return self._refuse(key, "triggered")
        self.notify(key)
        return JobRecord.from_row(row)

    def retry_now(self, key: str) -> JobRecord:
        """Re-queue a failed or cancelled job to run now, with a fresh attempt budget."""
        row = self._execute(admin.retry_now(self.models, key)).mappings().first()
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

        Runs under ``queries.PLANNER_SETTINGS`` (for the rest of the caller's transaction): each
        delete walks an index in order and stops at ``limit``. Without them, on a table never
        analyzed, the jobs' delete read every expired entry of the finished index (270,000 to
        delete 1,000), and the runs' delete could hash-join a sequential scan of the whole runs
        table."""
        self.session.execute(queries.PLANNER_SETTINGS)
        deleted = self._execute(admin.delete_finished_jobs(self.models, retention, limit))
        count = len(deleted.all())
        self._execute(admin.delete_finished_runs(self.models, retention, limit))
        return count

    def delete_orphans(self, timeout: dt.timedelta, *, limit: int = 10000) -> list[str]:
        """Delete jobs whose name no node has registered within ``timeout``.

        The view is cluster-wide (the nodes table), so a job registered on only some nodes is safe;
        a row younger than ``timeout`` is never deleted (a job enqueued before its first node
        started), and neither is a running one. Node rows unseen for ``timeout`` go too.
        """
        deleted = self._execute(admin.delete_orphans(self.models, timeout, limit))
        keys = [row[0] for row in deleted]
        self._execute(delete_stale_nodes(self.models, timeout))
        return keys
