"""The repository's reads: jobs, runs and nodes as records, and the database's clock.

``JobReads`` is the base of ``JobRepository`` (through ``nodes.NodeRegistry``): what every
method reads with, and the reads themselves, which change no row.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from pg_scheduler.models import Models
from pg_scheduler.states import JobStatus, JobType

from . import queries
from .records import JobRecord, NodeRecord, RunRecord


class JobReads:
    """Reads for one installation, inside one session (see ``JobRepository``)."""

    session: Session | sa.Connection
    models: Models
    jobs: sa.Table
    runs: sa.Table
    nodes: sa.Table

    def _execute(self, stmt: sa.Executable, params: Any = None) -> sa.Result[Any]:
        return self.session.execute(stmt, params)

    def now(self) -> dt.datetime:
        """The database's clock: the start time of the current transaction."""
        value = self.session.execute(sa.select(queries.now())).scalar_one()
        assert isinstance(value, dt.datetime)
        return value

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
        row: Any = self._execute(sa.select(queries.now(), soonest)).one()
        db_now: dt.datetime = row[0]
        next_run: dt.datetime | None = row[1]
        return db_now, next_run

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

    def list_nodes(self, *, live_within: dt.timedelta | None = None) -> list[NodeRecord]:
        n = self.nodes.c
        stmt = sa.select(self.nodes).order_by(n.started_at)
        if live_within is not None:
            stmt = stmt.where(n.stopped_at.is_(None), n.last_seen_at > queries.now() - live_within)
        return [NodeRecord.from_row(row) for row in self._execute(stmt).mappings()]
