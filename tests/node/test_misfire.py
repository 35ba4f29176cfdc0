"""Ticks missed while no node ran follow the job's misfire policy, once each at most."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from typing import Any

import sqlalchemy as sa

from pg_scheduler import Job, JobConfig, JobContext, RunStatus
from pg_scheduler.models import Models
from pg_scheduler.node.registry import schedule
from pg_scheduler.testing import wait_until


class Ticks(Job):
    def __init__(self, config: JobConfig) -> None:
        super().__init__(config)
        self.ticks: list[dt.datetime] = []
        self.lock = threading.Lock()

    def run(self, ctx: JobContext) -> None:
        with self.lock:
            self.ticks.append(ctx.scheduled_at)


def back_date(engine: sa.Engine, models: Models, name: str, seconds: int) -> dt.datetime:
    """Pretend the cluster was down: the job's next tick was ``seconds`` ago."""
    with engine.begin() as conn:
        tick = conn.execute(
            sa.select(sa.func.date_trunc("second", sa.func.now()) - dt.timedelta(seconds=seconds))
        ).scalar_one()
        conn.execute(
            sa.update(models.jobs)
            .where(models.jobs.c.key == name)
            .values(next_run=tick, scheduled_at=tick)
        )
    return tick


def schedule_while_down(
    s: Any, engine: sa.Engine, models: Models, job: Ticks, late: int
) -> dt.datetime:
    # The row as a node that ran earlier wrote it (schedule_job before start() only declares).
    s.register(job)
    with s.transaction() as repo:
        schedule(repo, job.config)
    return back_date(engine, models, job.name, late)


def test_coalesce_runs_a_late_tick_once_then_resumes(
    make_scheduler: Any, engine: sa.Engine, models: Models
) -> None:
    s = make_scheduler()
    job = Ticks(JobConfig.recurring("coalesced", "* * * * * *", misfire="coalesce"))
    late = schedule_while_down(s, engine, models, job, 10)
    with s:
        wait_until(lambda: len(job.ticks) >= 3, timeout=10)
    assert job.ticks[0] == late
    # No catch-up flood: the run after the late one is for a tick after it ran, ~10 s later.
    assert (job.ticks[1] - late).total_seconds() >= 9
    assert len(set(job.ticks)) == len(job.ticks)


def test_skip_drops_a_tick_later_than_the_grace(
    make_scheduler: Any, engine: sa.Engine, models: Models
) -> None:
    s = make_scheduler()
    job = Ticks(
        JobConfig.recurring(
            "skipping", "* * * * * *", misfire="skip", misfire_grace=dt.timedelta(seconds=1)
        )
    )
    late = schedule_while_down(s, engine, models, job, 10)
    with s:
        wait_until(lambda: len(job.ticks) >= 2, timeout=10)
    assert late not in job.ticks
    assert all((t - late).total_seconds() >= 9 for t in job.ticks)
    statuses = [r.status for r in s.list_runs("skipping")]
    assert statuses[-1] is RunStatus.SKIPPED  # the oldest run: recorded, not executed
    assert statuses.count(RunStatus.SKIPPED) == 1


def test_all_runs_each_missed_tick_within_the_grace(
    make_scheduler: Any, engine: sa.Engine, models: Models
) -> None:
    s = make_scheduler()
    job = Ticks(
        JobConfig.recurring(
            "catching_up", "* * * * * *", misfire="all", misfire_grace=dt.timedelta(seconds=4)
        )
    )
    late = schedule_while_down(s, engine, models, job, 10)
    with s:
        wait_until(lambda: len(job.ticks) >= 8, timeout=15)
    ticks = job.ticks
    assert ticks[0] == late
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(ticks)]
    # From the late tick, a jump to the start of the grace window, then every second in order.
    assert gaps[0] >= 5
    assert set(gaps[1:]) == {1.0}
