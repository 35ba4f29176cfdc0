"""Immutable snapshots of rows, handed out by the repository (never live ORM objects).

Snapshots are safe to keep after the transaction that read them has ended, to pass between
threads, and to use from asyncio code (no lazy loads).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from pg_scheduler.params import decode_params
from pg_scheduler.states import JobStatus, JobType, RunStatus


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
