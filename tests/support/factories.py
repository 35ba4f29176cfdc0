"""Rows in any state, with back-dated timestamps, written straight into the tables with Core.

Tests use these to put the database where a scenario starts (a running job whose node died ten
minutes ago, a failed one-time job past its retention, a node last seen two weeks ago) without
driving the scheduler there. Timestamps take either an aware ``datetime`` or a ``timedelta``
relative to the database's ``now()`` (``ago(minutes=10)``), so back-dating never mixes the test
process's clock with the server's.

A ``running`` row gets a lease, a node and a heartbeat, and a matching ``running`` row in the runs
table, exactly as ``JobRepository.claim`` leaves it, so the repository's fenced writes find what
they expect.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from pg_scheduler.db.records import JobRecord, NodeRecord
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.models import Models
from pg_scheduler.states import JobStatus, JobType, RunStatus

#: A timestamp argument: an aware datetime, or an offset from the database's now().
When = dt.datetime | dt.timedelta | None

DEFAULT_NODE = "factory-host:1:feedbeef"
DEFAULT_CRON = "*/5 * * * *"

_TIMESTAMPS = (
    "next_run",
    "scheduled_at",
    "heartbeat_at",
    "last_run_at",
    "last_success_at",
    "last_failure_at",
    "created_at",
    "updated_at",
    "finished_at",
)
_UNSET: Any = object()


@contextlib.contextmanager
def repository(engine: sa.Engine, models: Models, **kwargs: Any) -> Iterator[JobRepository]:
    """A ``JobRepository`` in its own session and transaction, committed when the block ends."""
    with Session(engine) as session, session.begin():
        yield JobRepository(session, models, **kwargs)


def ago(**kwargs: float) -> dt.timedelta:
    """``ago(minutes=10)``: ten minutes before the database's now()."""
    return -dt.timedelta(**kwargs)


def from_now(**kwargs: float) -> dt.timedelta:
    """``from_now(hours=1)``: an hour after the database's now()."""
    return dt.timedelta(**kwargs)


def _at(value: When) -> Any:
    if isinstance(value, dt.timedelta):
        return sa.func.now() + value
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        raise ValueError(f"factory timestamps must be timezone-aware, got {value!r}")
    return value


def make_job(
    engine: sa.Engine,
    models: Models,
    *,
    status: JobStatus | str = JobStatus.PENDING,
    job_type: JobType | str = JobType.ONE_TIME,
    name: str | None = None,
    key: str | None = None,
    with_run: bool = True,
    **columns: Any,
) -> JobRecord:
    """Insert one job row in ``status`` and return it as the repository would read it.

    Every column can be given; the defaults make a row that satisfies the table's constraints
    and looks like the state machine left it: pending rows are due now, running rows hold a fresh
    lease (and ``attempt >= 1``), finished one-time rows have ``finished_at = now()``.
    """
    status = JobStatus(status)
    job_type = JobType(job_type)
    name = name or f"job_{uuid.uuid4().hex[:8]}"
    if key is None:
        key = name if job_type is JobType.RECURRING else f"{name}#{uuid.uuid4()}"
    values: dict[str, Any] = {
        "key": key,
        "name": name,
        "job_type": job_type.value,
        "status": status.value,
        "cron": DEFAULT_CRON if job_type is JobType.RECURRING else None,
    }
    if status is JobStatus.PENDING:
        values.update(next_run=dt.timedelta(0), scheduled_at=dt.timedelta(0))
    elif status is JobStatus.RUNNING:
        values.update(
            lease_id=uuid.uuid4(),
            node_id=DEFAULT_NODE,
            heartbeat_at=dt.timedelta(0),
            last_run_at=dt.timedelta(0),
            scheduled_at=dt.timedelta(0),
            next_run=dt.timedelta(0),
            attempt=1,
        )
    elif job_type is JobType.ONE_TIME:
        values.update(finished_at=dt.timedelta(0), scheduled_at=ago(minutes=1))
    values.update(columns)
    values = {k: _at(v) if k in _TIMESTAMPS else v for k, v in values.items()}
    with engine.begin() as conn:
        row = conn.execute(sa.insert(models.jobs).values(values).returning(*models.jobs.c))
        record = JobRecord.from_row(row.mappings().one())
        if with_run and record.status is JobStatus.RUNNING:
            assert record.lease_id is not None and record.node_id is not None
            conn.execute(
                sa.insert(models.runs).values(
                    job_key=record.key,
                    name=record.name,
                    scheduled_at=record.scheduled_at or sa.func.now(),
                    attempt=record.attempt,
                    node_id=record.node_id,
                    lease_id=record.lease_id,
                    status=RunStatus.RUNNING.value,
                    started_at=record.last_run_at or sa.func.now(),
                )
            )
    return record


def make_jobs(engine: sa.Engine, models: Models, count: int, **kwargs: Any) -> list[JobRecord]:
    """``count`` rows made by ``make_job`` with the same arguments (each its own key)."""
    return [make_job(engine, models, **kwargs) for _ in range(count)]


def update_job(engine: sa.Engine, models: Models, key: str, **columns: Any) -> JobRecord:
    """Overwrite columns of an existing row (e.g. back-date a heartbeat) and return it."""
    values = {k: _at(v) if k in _TIMESTAMPS else v for k, v in columns.items()}
    jobs = models.jobs
    with engine.begin() as conn:
        row = conn.execute(
            sa.update(jobs).where(jobs.c.key == key).values(values).returning(*jobs.c)
        )
        return JobRecord.from_row(row.mappings().one())


def make_run(
    engine: sa.Engine,
    models: Models,
    job: JobRecord,
    *,
    status: RunStatus | str = RunStatus.COMPLETED,
    attempt: int | None = None,
    started_at: When = dt.timedelta(0),
    finished_at: When = _UNSET,
) -> dict[str, Any]:
    """Insert one run row of ``job`` (finished ``finished_at``, default: when it started)."""
    status = RunStatus(status)
    if finished_at is _UNSET:
        finished_at = None if status is RunStatus.RUNNING else started_at
    values: dict[str, Any] = {
        "job_key": job.key,
        "name": job.name,
        "scheduled_at": _at(started_at),
        "attempt": job.attempt if attempt is None else attempt,
        "node_id": job.node_id or DEFAULT_NODE,
        "lease_id": uuid.uuid4(),
        "status": status.value,
        "started_at": _at(started_at),
        "finished_at": _at(finished_at),
    }
    runs = models.runs
    with engine.begin() as conn:
        return dict(
            conn.execute(sa.insert(runs).values(values).returning(*runs.c)).mappings().one()
        )


def make_node(
    engine: sa.Engine,
    models: Models,
    job_names: list[str] | tuple[str, ...],
    *,
    node_id: str | None = None,
    last_seen_at: When = dt.timedelta(0),
    started_at: When = _UNSET,
    stopped_at: When = None,
) -> NodeRecord:
    """Insert one node row that registered ``job_names`` and was last seen at ``last_seen_at``."""
    node_id = node_id or f"factory-host:{uuid.uuid4().int % 100000}:{uuid.uuid4().hex[:8]}"
    values: dict[str, Any] = {
        "node_id": node_id,
        "node_name": "factory-host",
        "hostname": "factory-host",
        "pid": 1,
        "job_names": list(job_names),
        "last_seen_at": _at(last_seen_at),
        "started_at": _at(last_seen_at if started_at is _UNSET else started_at),
        "stopped_at": _at(stopped_at),
    }
    nodes = models.nodes
    with engine.begin() as conn:
        row = conn.execute(sa.insert(nodes).values(values).returning(*nodes.c))
        return NodeRecord.from_row(row.mappings().one())


def snapshot(
    engine: sa.Engine | sa.Connection, models: Models, *keys: str
) -> dict[str, dict[str, Any]]:
    """Every column of the given job rows (all rows when no key is given), plus ``xmin``.

    ``xmin`` is the id of the transaction that last wrote the row version: two equal snapshots
    mean the row was not rewritten at all, not even by an UPDATE that set the same values.
    """
    jobs = models.jobs
    stmt = sa.select(jobs, sa.literal_column("xmin").cast(sa.Text).label("_xmin"))
    if keys:
        stmt = stmt.where(jobs.c.key.in_(keys))

    def read(conn: sa.Connection) -> dict[str, dict[str, Any]]:
        return {row["key"]: dict(row) for row in conn.execute(stmt).mappings()}

    if isinstance(engine, sa.Connection):
        return read(engine)
    with engine.connect() as conn:
        return read(conn)


def count_jobs(engine: sa.Engine, models: Models, **where: Any) -> int:
    """How many job rows match ``column=value`` filters (all rows without filters)."""
    jobs = models.jobs
    stmt = sa.select(sa.func.count()).select_from(jobs)
    for column, value in where.items():
        stmt = stmt.where(jobs.c[column] == value)
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def runs_of(engine: sa.Engine, models: Models, key: str) -> list[dict[str, Any]]:
    """The run rows of one job, oldest first."""
    runs = models.runs
    stmt = sa.select(runs).where(runs.c.job_key == key).order_by(runs.c.id)
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(stmt).mappings()]


def db_now(engine: sa.Engine) -> dt.datetime:
    """The database's clock (start of a fresh transaction)."""
    with engine.connect() as conn:
        value = conn.execute(sa.select(sa.func.now())).scalar_one()
    assert isinstance(value, dt.datetime)
    return value
