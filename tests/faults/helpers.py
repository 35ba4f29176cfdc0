"""Small helpers shared by the fault tests: enqueue through a repository, read a job's state."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from pg_scheduler.db.records import OneTimeSpec
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.models import build_models
from tests.support.cluster import Cluster


def enqueue(cluster: Cluster, name: str, params: Any = None, *, retries: int = 3) -> str:
    models = build_models(cluster.names)
    with Session(cluster.engine) as session, session.begin():
        return JobRepository(session, models).insert_one_time(OneTimeSpec(name, params, retries))


def enqueue_many(cluster: Cluster, name: str, params: list[Any], *, retries: int = 3) -> list[str]:
    models = build_models(cluster.names)
    with Session(cluster.engine) as session, session.begin():
        repo = JobRepository(session, models)
        return repo.insert_many([OneTimeSpec(name, p, retries) for p in params])


def status(cluster: Cluster, key: str) -> str | None:
    value = cluster.scalar(f"SELECT status FROM {cluster.names.jobs_table} WHERE key = :k", k=key)
    return str(value) if value is not None else None


def statuses(cluster: Cluster, keys: list[str]) -> dict[str, int]:
    rows = cluster.query(
        f"SELECT status, count(*) FROM {cluster.names.jobs_table} WHERE key = ANY(:keys) GROUP BY 1",
        keys=keys,
    )
    return {str(s): int(n) for s, n in rows}


def runs(cluster: Cluster, key: str) -> list[tuple[int, str]]:
    return [
        (int(a), str(s))
        for a, s in cluster.query(
            f"SELECT attempt, status FROM {cluster.names.runs_table} WHERE job_key = :k "
            "ORDER BY attempt, id",
            k=key,
        )
    ]


def safe_scalar(cluster: Cluster, sql: str, **params: Any) -> Any:
    """``cluster.scalar`` that answers None while the database is unreachable."""
    try:
        return cluster.scalar(sql, **params)
    except sa.exc.OperationalError:
        return None
