"""The repository's values: immutable snapshots of rows (never live ORM objects), what its
methods take (``RecurringSpec``, ``OneTimeSpec``, ``Outcome``) and what they report
(``FinishResult``, ``TakeBackResult``, ``CancelResult``).

Snapshots are safe to keep after the transaction that read them has ended, to pass between
threads, and to use from asyncio code (no lazy loads).
"""

from __future__ import annotations

import datetime as dt
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from pg_scheduler.cron import CronSchedule, MisfirePolicy
from pg_scheduler.errors import ConfigError
from pg_scheduler.params import decode_params
from pg_scheduler.states import JobStatus, JobType, RunStatus

#: Error texts are kept, but bounded: a traceback of a deep recursion must not bloat a row.
MAX_ERROR_LENGTH = 8000


@dataclass(frozen=True)
class JobRecord:
    """One row of the jobs table: what ``Scheduler.get_job`` returns."""

    key: str
    name: str
    job_type: JobType
    status: JobStatus
    cron: str | None
    timezone: str
    misfire: str
    misfire_grace: dt.timedelta
    params: Any
    next_run: dt.datetime | None
    scheduled_at: dt.datetime | None
    attempt: int
    max_retries: int | None
    """Retries allowed (``retries=N``: N + 1 attempts). None: the enqueue left them to the
    handler, and no node has claimed the job yet; the first claim stores its handler's."""
    lease_id: uuid.UUID | None
    node_id: str | None
    heartbeat_at: dt.datetime | None
    cancel_requested: bool
    last_run_at: dt.datetime | None
    last_success_at: dt.datetime | None
    last_failure_at: dt.datetime | None
    consecutive_failures: int
    last_error: str | None
    execution_time_ms: int | None
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None
    lost_leases: int
    """Runs of the current run request (one-time) or tick (recurring) lost in a row: their node
    died or hung. Not attempts; bounded by ``SchedulerConfig.max_lost_leases``."""

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> JobRecord:
        values = {name: row[name] for name in JOB_FIELDS}
        values["job_type"] = JobType(values["job_type"])
        values["status"] = JobStatus(values["status"])
        return cls(**values)

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> JobRecord:
        """From the first ``len(JOB_FIELDS)`` values of a row that selected the columns in field
        order, ``params`` as JSON text (the claim does: one record per claimed job, on the hot
        path)."""
        row = list(values[:_FIELD_COUNT])
        row[2] = _JOB_TYPES[row[2]]
        row[3] = _JOB_STATUSES[row[3]]
        row[_PARAMS_AT] = decode_params(row[_PARAMS_AT])
        return cls(*row)

    @property
    def is_recurring(self) -> bool:
        return self.job_type is JobType.RECURRING

    @property
    def attempts_left(self) -> int | None:
        """None while ``max_retries`` is the handler's (not known before the first claim)."""
        if self.max_retries is None:
            return None
        return max(0, self.max_retries + 1 - self.attempt)


JOB_FIELDS = tuple(JobRecord.__dataclass_fields__)
_FIELD_COUNT = len(JOB_FIELDS)
_PARAMS_AT = JOB_FIELDS.index("params")
assert JOB_FIELDS[2:4] == ("job_type", "status")
# Looking a value up costs less than calling the enum (the claim does it for every row).
_JOB_TYPES = {t.value: t for t in JobType}
_JOB_STATUSES = {s.value: s for s in JobStatus}


@dataclass(frozen=True)
class ClaimedJob:
    """A job this node has just leased; ``lease_id`` fences every later write about it."""

    job: JobRecord
    lease_id: uuid.UUID
    claimed_at: dt.datetime  # database time of the claim

    @property
    def key(self) -> str:
        return self.job.key

    @property
    def name(self) -> str:
        return self.job.name


@dataclass(frozen=True)
class RunRecord:
    """One attempt of a job, from the runs table."""

    id: int
    job_key: str
    name: str
    scheduled_at: dt.datetime
    attempt: int
    node_id: str
    lease_id: uuid.UUID
    status: RunStatus
    started_at: dt.datetime
    finished_at: dt.datetime | None
    duration_ms: int | None
    error: str | None

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> RunRecord:
        values = {name: row[name] for name in _RUN_FIELDS}
        values["status"] = RunStatus(values["status"])
        return cls(**values)


_RUN_FIELDS = tuple(RunRecord.__dataclass_fields__)


@dataclass(frozen=True)
class NodeRecord:
    """A scheduler process and the job names it registered."""

    node_id: str
    node_name: str
    hostname: str
    pid: int
    job_names: tuple[str, ...]
    started_at: dt.datetime
    last_seen_at: dt.datetime
    stopped_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> NodeRecord:
        values = {name: row[name] for name in _NODE_FIELDS}
        values["job_names"] = tuple(values["job_names"] or ())
        return cls(**values)


_NODE_FIELDS = tuple(NodeRecord.__dataclass_fields__)


# ---------------------------------------------------------------- what the repository is given
@dataclass(frozen=True)
class RecurringSpec:
    """What ``upsert_recurring`` needs to know about a recurring job."""

    name: str
    schedule: CronSchedule
    retries: int = 0
    misfire: MisfirePolicy = "coalesce"
    misfire_grace: dt.timedelta = dt.timedelta(minutes=1)

    # What ``ticks.next_tick`` reads: a job being scheduled has no tick yet.
    @property
    def cron(self) -> str:
        return self.schedule.expression

    @property
    def timezone(self) -> str:
        return self.schedule.timezone

    @property
    def scheduled_at(self) -> None:
        return None


@dataclass(frozen=True)
class OneTimeSpec:
    """One run request of a one-time job. ``retries`` None: the handler's, resolved by the node
    that claims the job (stored as NULL until then)."""

    name: str
    params: Any = None
    retries: int | None = None
    run_at: dt.datetime | None = None


def check_retries(retries: object, *, unsaid: bool = False) -> None:
    """Refuse a ``retries`` that is not a non-negative integer (``ConfigError``)."""
    # Refused here, not by the CHECK constraint: a database error would not say which value.
    # ``unsaid``: None is allowed (a one-time job's retries, left to its handler).
    if unsaid and retries is None:
        return
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"retries must be a non-negative integer, got {retries!r}")


def check_run_at(run_at: object) -> None:
    if run_at is not None and (not isinstance(run_at, dt.datetime) or run_at.utcoffset() is None):
        # Drivers disagree by hours on naive timestamps into timestamptz; refuse them.
        raise ConfigError(f"run_at must be a timezone-aware datetime, got {run_at!r}")


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


def describe_error(exc: BaseException, formatted: str | None = None) -> str:
    """``Type: message`` then the traceback, cut to ``MAX_ERROR_LENGTH`` keeping both ends."""
    head = f"{type(exc).__qualname__}: {exc}"
    text = f"{head}\n{formatted}" if formatted else head
    if len(text) > MAX_ERROR_LENGTH:
        half = MAX_ERROR_LENGTH // 2
        text = f"{text[:half]}\n... [truncated] ...\n{text[-half:]}"
    return text.replace("\x00", "\\x00")


# ---------------------------------------------------------------- what it reports
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
