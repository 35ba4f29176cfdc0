"""Maintenance timing: the orphan sweep runs on every maintenance pass, not with the hourly cleanup.

An orphan (a row whose name no node has registered within ``orphaned_job_timeout``, and older than
that) must be gone within ``orphaned_job_timeout`` plus one maintenance pass, on ``Scheduler`` and
``AsyncScheduler`` alike, while the cleanup of finished jobs keeps its own (long) interval.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import sqlalchemy as sa

from pg_scheduler import Job, JobConfig, JobContext, RetryBackoff, SchedulerConfig
from pg_scheduler.models import Models
from pg_scheduler.node.maintenance import pass_interval
from pg_scheduler.testing import wait_until
from tests.support.factories import make_job
from tests.support.runtimes import Nodes

ORPHAN_TIMEOUT = dt.timedelta(seconds=2)
# Short leases (so passes are short), the hourly cleanup left at its default.
TIMINGS: dict[str, Any] = {
    "job_check_interval": dt.timedelta(seconds=2),
    "heartbeat_interval": dt.timedelta(milliseconds=300),
    "no_heartbeat_timeout": dt.timedelta(milliseconds=1500),
    "orphaned_job_timeout": ORPHAN_TIMEOUT,
    "shutdown_timeout": dt.timedelta(seconds=2),
    "retry_backoff": RetryBackoff(base=dt.timedelta(milliseconds=50), jitter=0),
}
# Slack for a loaded machine, on top of the bound the README promises.
SLACK = 3.0


class Noop(Job):
    def run(self, ctx: JobContext) -> None:
        return None


def exists(engine: sa.Engine, models: Models, key: str) -> bool:
    with engine.connect() as conn:
        found = conn.execute(sa.select(models.jobs.c.key).where(models.jobs.c.key == key)).first()
    return found is not None


def bound(config: SchedulerConfig) -> float:
    interval, _ = pass_interval(config)
    return ORPHAN_TIMEOUT.total_seconds() + interval + SLACK


def test_an_orphan_goes_within_its_timeout_plus_one_pass(
    make_node: Nodes, engine: sa.Engine, models: Models
) -> None:
    s = make_node(**TIMINGS)
    s.register(Noop(JobConfig.one_time("known")))
    assert s.config.failed_and_completed_one_time_job_interval >= dt.timedelta(hours=1)
    with s:
        # The first pass (soon after start) has come and gone before the orphan appears.
        wait_until(lambda: s.maintenance.passes >= 1, message="a first maintenance pass")
        started = time.monotonic()
        orphan = make_job(engine, models, name="nobody_registers_me")
        kept = make_job(engine, models, name="known", next_run=dt.timedelta(hours=1))
        wait_until(
            lambda: not exists(engine, models, orphan.key),
            timeout=bound(s.config),
            interval=0.05,
            message="the orphan swept",
        )
        took = time.monotonic() - started
    # Never before its timeout: the row must be older than orphaned_job_timeout.
    assert took >= ORPHAN_TIMEOUT.total_seconds() - 0.1, took
    assert exists(engine, models, kept.key)
