"""The nodes table: one row per live scheduler process and the job names it registered (the
orphan rule's cluster-wide view, and the operators' view of the cluster). Its statements, and the
registry methods of ``JobRepository``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from pg_scheduler.models import Models

from .queries import now
from .reads import JobReads


def register_node(models: Models, node: dict[str, Any]) -> sa.Insert:
    """Insert or revive the row of ``node`` (``node_id``, ``node_name``, ``hostname``, ``pid``,
    ``job_names``)."""
    n = models.nodes.c
    stmt = postgresql.insert(models.nodes).values(**node)
    return stmt.on_conflict_do_update(
        index_elements=[n.node_id],
        set_={"job_names": stmt.excluded.job_names, "last_seen_at": now(), "stopped_at": None},
    )


def touch_node(models: Models, node_id: str, job_names: Sequence[str] | None) -> sa.Update:
    n = models.nodes.c
    values: dict[str, Any] = {"last_seen_at": now(), "stopped_at": None}
    if job_names is not None:
        values["job_names"] = sorted(job_names)
    return sa.update(models.nodes).where(n.node_id == node_id).values(**values).returning(n.node_id)


def deregister_node(models: Models, node_id: str) -> sa.Update:
    n = models.nodes.c
    return (
        sa.update(models.nodes)
        .where(n.node_id == node_id)
        .values(stopped_at=now(), last_seen_at=now())
    )


def delete_stale_nodes(models: Models, timeout: dt.timedelta) -> sa.Delete:
    n = models.nodes.c
    return sa.delete(models.nodes).where(n.last_seen_at < now() - timeout)


class NodeRegistry(JobReads):
    """The node registry's writes (the base of ``JobRepository``)."""

    def register_node(
        self, node_id: str, node_name: str, hostname: str, pid: int, job_names: Sequence[str]
    ) -> None:
        node = {
            "node_id": node_id,
            "node_name": node_name,
            "hostname": hostname,
            "pid": pid,
            "job_names": sorted(job_names),
        }
        self._execute(register_node(self.models, node))

    def touch_node(self, node_id: str, job_names: Sequence[str] | None = None) -> bool:
        """Mark the node alive (and update its job names); False if its row is gone."""
        return self._execute(touch_node(self.models, node_id, job_names)).first() is not None

    def deregister_node(self, node_id: str) -> None:
        """Mark the node stopped. The row stays (with its job names) until the orphan horizon, so
        a rolling restart never makes a job look orphaned."""
        self._execute(deregister_node(self.models, node_id))
