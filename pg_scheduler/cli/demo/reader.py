"""The demo's queries: every number it shows comes from here, i.e. from the database."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from pg_scheduler import JobRecord, NodeRecord, RunRecord
from pg_scheduler.models import Models, build_models
from pg_scheduler.scheduler import Scheduler
from pg_scheduler.states import TERMINAL_STATUSES, RunStatus

from .app import NAMES, TICK

#: A node is live in the demo's views if seen within this long.
LIVE_WITHIN = dt.timedelta(seconds=5)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What the live view shows, read in one transaction."""

    now: dt.datetime
    jobs: list[JobRecord]
    runs: list[RunRecord]
    nodes: list[NodeRecord]
    ticks: int
    duplicates: int

    def unfinished(self, keys: Sequence[str]) -> int:
        done = {j.key for j in self.jobs if j.status in TERMINAL_STATUSES}
        return sum(1 for key in keys if key not in done)

    def live_nodes(self) -> int:
        return sum(
            1
            for n in self.nodes
            if n.stopped_at is None and n.last_seen_at > self.now - LIVE_WITHIN
        )


class Reader:
    """The demo's queries: every number it prints comes from here, i.e. from the database."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.models: Models = build_models(NAMES)

    def snapshot(self, recent: int = 8) -> Snapshot:
        runs = self.models.runs
        with self.scheduler.transaction() as repo:
            session = repo.session
            recent_runs = session.execute(
                sa.select(runs).order_by(runs.c.id.desc()).limit(recent)
            ).mappings()
            return Snapshot(
                now=repo.now(),
                jobs=repo.list_jobs(limit=50),
                runs=[RunRecord.from_row(row) for row in recent_runs],
                nodes=repo.list_nodes(),
                ticks=self._scalar(session, self.ticks_run()),
                duplicates=self._scalar(session, self.duplicate_ticks()),
            )

    @staticmethod
    def _scalar(session: Any, stmt: sa.Select[Any]) -> int:
        return int(session.execute(stmt).scalar_one() or 0)

    def ticks_run(self) -> sa.Select[Any]:
        r = self.models.runs.c
        return sa.select(sa.func.count(sa.distinct(r.scheduled_at))).where(
            r.job_key == TICK, r.status == RunStatus.COMPLETED.value
        )

    def duplicate_ticks(self) -> sa.Select[Any]:
        """Ticks (of any job) that completed more than once.

        A tick is (job_key, scheduled_at). A failed attempt followed by a successful retry is one
        tick with two runs, and correct; two *completed* runs of one tick is a tick that ran twice.
        """
        r = self.models.runs.c
        completed = sa.func.count().filter(r.status == RunStatus.COMPLETED.value)
        twice = (
            sa.select(r.job_key, r.scheduled_at)
            .group_by(r.job_key, r.scheduled_at)
            .having(completed > 1)
            .subquery()
        )
        return sa.select(sa.func.count()).select_from(twice)

    def overlapping_runs(self) -> sa.Select[Any]:
        """Pairs of runs of one job that were running at the same time (never allowed)."""
        runs = self.models.runs
        a, b = runs.alias("a"), runs.alias("b")
        a_end = sa.func.coalesce(a.c.finished_at, sa.func.now())
        b_end = sa.func.coalesce(b.c.finished_at, sa.func.now())
        return sa.select(sa.func.count()).where(
            a.c.job_key == b.c.job_key,
            a.c.id < b.c.id,
            a.c.started_at < b_end,
            b.c.started_at < a_end,
        )

    def ticks_by_node(self) -> list[tuple[str, int, dt.datetime, dt.datetime]]:
        r = self.models.runs.c
        stmt = (
            sa.select(
                r.node_id,
                sa.func.count(),
                sa.func.min(r.scheduled_at),
                sa.func.max(r.scheduled_at),
            )
            .where(r.job_key == TICK, r.status == RunStatus.COMPLETED.value)
            .group_by(r.node_id)
            .order_by(r.node_id)
        )
        with self.scheduler.transaction() as repo:
            return [tuple(row) for row in repo.session.execute(stmt)]

    def count(self, stmt: sa.Select[Any]) -> int:
        with self.scheduler.transaction() as repo:
            return self._scalar(repo.session, stmt)
