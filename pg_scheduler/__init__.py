"""pg_scheduler: a PostgreSQL-backed cron and one-time job scheduler for SQLAlchemy applications."""

from __future__ import annotations

from . import errors, migrations
from .errors import PgSchedulerError
from .naming import Names

__all__ = ["Names", "PgSchedulerError", "errors", "migrations"]
__version__ = "0.1.0"
