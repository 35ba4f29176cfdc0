"""pg_scheduler: a PostgreSQL-backed cron and one-time job scheduler for SQLAlchemy applications.

Recurring jobs run at most once per tick across every node; one-time jobs carry JSON parameters and
retry automatically; leases with heartbeats hand a crashed node's jobs to another node. State lives
in your PostgreSQL, next to your data, installed by Alembic migrations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import errors, migrations
from .config import RetryBackoff, SchedulerConfig
from .cron import CronSchedule
from .db.records import CancelResult, JobRecord, NodeRecord, RunRecord
from .db.repository import JobRepository
from .errors import PgSchedulerError
from .jobs import CancelReason, FunctionJob, Job, JobCancelled, JobConfig, JobContext
from .naming import Names
from .scheduler import Scheduler
from .states import JobStatus, JobType, RunStatus

__all__ = [
    "AsyncScheduler",
    "CancelReason",
    "CancelResult",
    "CronSchedule",
    "FunctionJob",
    "Job",
    "JobCancelled",
    "JobConfig",
    "JobContext",
    "JobRecord",
    "JobRepository",
    "JobStatus",
    "JobType",
    "Names",
    "NodeRecord",
    "PgSchedulerError",
    "RetryBackoff",
    "RunRecord",
    "RunStatus",
    "Scheduler",
    "SchedulerConfig",
    "errors",
    "migrations",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .aio import AsyncScheduler


def __getattr__(name: str) -> Any:
    # AsyncScheduler needs SQLAlchemy's asyncio support (greenlet, the `asyncio` extra): import it
    # only when asked for, so a synchronous install never needs greenlet.
    if name == "AsyncScheduler":
        from .aio import AsyncScheduler

        return AsyncScheduler
    raise AttributeError(f"module 'pg_scheduler' has no attribute {name!r}")
