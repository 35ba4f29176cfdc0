"""Several nodes as real processes against one PostgreSQL: the guarantees that need a cluster.

Each test states its invariant as SQL over the effects table that the test jobs write through
their own connections, and over the runs table.
"""

from __future__ import annotations

import itertools
import signal
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from pg_scheduler import JobStatus
from pg_scheduler.cli.views import jobs_table
from pg_scheduler.db.records import OneTimeSpec
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.models import Models
from pg_scheduler.testing import wait_until
from tests.support.cluster import FAST, Cluster

pytestmark = pytest.mark.slow


def enqueue(
    engine: sa.Engine, models: Models, name: str, params: dict[str, object], retries: int = 3
) -> str:
    with Session(engine) as session, session.begin():
        return JobRepository(session, models).insert_one_time(OneTimeSpec(name, params, retries))


def job_status(engine: sa.Engine, models: Models, key: str) -> JobStatus | None:
    with Session(engine) as session:
        record = JobRepository(session, models).get(key)
    return record.status if record else None


def test_four_nodes_run_every_tick_exactly_once(cluster: Cluster) -> None:
    for i in range(4):
        cluster.start(f"n{i}", recurring={"tick": "* * * * * *"})
    table = cluster.effects
    wait_until(
        lambda: cluster.scalar(f"SELECT count(DISTINCT scheduled_at) FROM {table}") >= 11,
        timeout=40,
        message="eleven ticks",
    )
    cluster.stop_all()
    duplicates = cluster.query(
        f"SELECT scheduled_at, count(*) FROM {table} GROUP BY 1 HAVING count(*) > 1"
    )
    assert duplicates == []
    overlaps = cluster.query(
        f"SELECT a.id, b.id FROM {table} a JOIN {table} b ON a.id < b.id "
        "AND a.started_at < coalesce(b.finished_at, 'infinity') "
        "AND b.started_at < coalesce(a.finished_at, 'infinity')"
    )
    assert overlaps == []
    ticks = [row[0] for row in cluster.query(f"SELECT scheduled_at FROM {table} ORDER BY 1")]
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(ticks)}
    assert gaps == {1.0}, f"every second ran, none missed: {sorted(gaps)}"
    runs = cluster.query(
        f"SELECT job_key, scheduled_at FROM {cluster.names.runs_table} "
        "WHERE status = 'completed' GROUP BY 1, 2 HAVING count(*) > 1"
    )
    assert runs == []


def test_a_killed_nodes_job_is_finished_by_another(
    cluster: Cluster, engine: sa.Engine, models: Models
) -> None:
    """A lost run is not a failure: with retries=0 the job still runs again elsewhere, with the
    same attempt number, and the attempt shown stays within its budget (no "2/1")."""
    nodes = [cluster.start(name, jobs=["slow"]) for name in ("a", "b")]
    key = enqueue(engine, models, "slow", {"seconds": 2}, retries=0)
    wait_until(lambda: cluster.scalar(f"SELECT count(*) FROM {cluster.effects}") == 1)
    first = cluster.scalar(f"SELECT node FROM {cluster.effects}")
    a = next(n for n in nodes if n.node_id == first)
    b = next(n for n in nodes if n is not a)
    a.send(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: job_status(engine, models, key) is JobStatus.COMPLETED, timeout=60)
    recovered_in = time.monotonic() - killed_at
    effects = cluster.query(
        f"SELECT attempt, node, finished_at IS NOT NULL FROM {cluster.effects} ORDER BY id"
    )
    assert [(e[0], e[2]) for e in effects] == [(1, False), (1, True)]
    assert effects[1][1] == b.node_id
    # no_heartbeat_timeout + one maintenance pass + the job's own 2 s, with slack for CI.
    bound = FAST["no_heartbeat_timeout"] + FAST["heartbeat_interval"] + 2 + 3
    assert recovered_in < bound
    runs = cluster.query(
        f"SELECT attempt, status FROM {cluster.names.runs_table} WHERE job_key = :k ORDER BY id",
        k=key,
    )
    assert runs == [(1, "lost"), (1, "completed")]
    with Session(engine) as session:
        record = JobRepository(session, models).get(key)
    assert record is not None
    assert (record.attempt, record.max_retries, record.lost_leases) == (1, 0, 0)
    assert list(jobs_table([record]).columns[3].cells) == ["1/1"]  # as `jobs list` shows it


def test_a_paused_node_cannot_overwrite_its_successor(
    cluster: Cluster, engine: sa.Engine, models: Models
) -> None:
    nodes = [cluster.start(name, jobs=["slow"]) for name in ("a", "b")]
    key = enqueue(engine, models, "slow", {"seconds": 2.5, "cooperative": False})
    wait_until(lambda: cluster.scalar(f"SELECT count(*) FROM {cluster.effects}") == 1)
    first = cluster.scalar(f"SELECT node FROM {cluster.effects}")
    a = next(n for n in nodes if n.node_id == first)
    b = next(n for n in nodes if n is not a)
    a.send(signal.SIGSTOP)
    wait_until(lambda: job_status(engine, models, key) is JobStatus.COMPLETED, timeout=60)
    completed = cluster.query(
        f"SELECT lease_id, status FROM {cluster.names.runs_table} WHERE job_key = :k ORDER BY id",
        k=key,
    )
    a.send(signal.SIGCONT)
    # A wakes up, finds its lease gone, lets its copy finish, and drops the late outcome.
    wait_until(lambda: "outcome dropped" in a.log(), timeout=45, message="A drops its outcome")
    assert "[job.lease_lost]" in a.log()
    after = cluster.query(
        f"SELECT lease_id, status FROM {cluster.names.runs_table} WHERE job_key = :k ORDER BY id",
        k=key,
    )
    assert after == completed and [s for _, s in after] == ["lost", "completed"]
    record = cluster.query(
        f"SELECT status, attempt, node_id FROM {cluster.names.jobs_table} WHERE key = :k", k=key
    )
    assert record == [("completed", 1, b.node_id)]  # the lost run used up no attempt
    # The stale copy did finish its side effect: execution is at-least-once, as documented.
    assert (
        cluster.scalar(f"SELECT count(*) FROM {cluster.effects} WHERE finished_at IS NOT NULL") == 2
    )
