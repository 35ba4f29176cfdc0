"""Lost runs are not failures (README "Outcomes"): a job whose node dies runs again whatever its
``retries``, with the same attempt number, and a job that takes its node down on every run is
given up after ``max_lost_leases`` lost runs. Real node processes, really killed."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from pg_scheduler import JobStatus
from pg_scheduler.cli.views import jobs_table
from pg_scheduler.db.records import OneTimeSpec
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.models import Models
from pg_scheduler.testing import wait_until
from tests.support.cluster import Cluster

pytestmark = pytest.mark.slow


def enqueue(engine: sa.Engine, models: Models, params: dict[str, object], retries: int) -> str:
    with Session(engine) as session, session.begin():
        return JobRepository(session, models).insert_one_time(
            OneTimeSpec("suicide", params, retries)
        )


def test_a_job_that_kills_its_node_every_time_is_failed_after_max_lost_leases(
    cluster: Cluster, engine: sa.Engine, models: Models
) -> None:
    config = {"max_lost_leases": 2}
    key = enqueue(engine, models, {"die_times": 100}, retries=5)
    a = cluster.start("a", jobs=["suicide"], config=config)
    wait_until(lambda: a.proc.poll() is not None, timeout=30, message="a runs the job and dies")
    # b rescues a's run (the first lost lease: pending again, no attempt used), runs it, dies.
    b = cluster.start("b", jobs=["suicide"], config=config)
    wait_until(lambda: b.proc.poll() is not None, timeout=30, message="b reruns it and dies")
    assert (a.proc.returncode, b.proc.returncode) == (17, 17)
    # c rescues b's run: the second lost lease reaches the bound, and the job is given up.
    c = cluster.start("c", jobs=["suicide"], config=config)
    with Session(engine) as session:
        repo = JobRepository(session, models)
        wait_until(
            lambda: (r := repo.get(key)) is not None and r.status is JobStatus.FAILED,
            timeout=30,
            message="given up after two lost leases",
        )
        record = repo.get(key)
        runs = repo.list_runs(key)
    assert record is not None
    assert record.last_error == "lost its lease 2 times (node died or hung); not retried"
    assert (record.attempt, record.max_retries, record.lost_leases) == (1, 5, 2)
    assert [(r.attempt, r.status.value) for r in reversed(runs)] == [(1, "lost"), (1, "lost")]
    assert cluster.scalar(f"SELECT count(*) FROM {cluster.effects}") == 2, "c never ran it"
    assert "[job.failed]" in c.log() and c.proc.poll() is None
    # What `pg-scheduler jobs list` shows agrees: one attempt of six used.
    assert list(jobs_table([record]).columns[3].cells) == ["1/6"]
