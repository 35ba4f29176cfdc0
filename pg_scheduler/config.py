"""``SchedulerConfig``: every setting of a node, validated once at construction.

Field names are the original library's (``MaxConcurrentJobs`` → ``max_concurrent_jobs`` …), with
its defaults; ``engine`` replaces ``DB``/``DBDriverName`` (the engine's dialect picks the driver).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from .errors import ConfigError
from .naming import Names
from .params import DEFAULT_MAX_PARAMS_BYTES

DEFAULT_MAX_CONCURRENT_JOBS = 10
DEFAULT_JOB_CHECK_INTERVAL = dt.timedelta(minutes=1)
DEFAULT_ORPHANED_JOB_TIMEOUT = dt.timedelta(days=14)
DEFAULT_HEARTBEAT_INTERVAL = dt.timedelta(seconds=30)
DEFAULT_NO_HEARTBEAT_TIMEOUT = dt.timedelta(minutes=5)
DEFAULT_SHUTDOWN_TIMEOUT = dt.timedelta(seconds=30)
DEFAULT_CLEANUP_INTERVAL = dt.timedelta(hours=1)
DEFAULT_FINISHED_JOB_RETENTION = dt.timedelta(days=7)
DEFAULT_STATEMENT_TIMEOUT = dt.timedelta(seconds=30)
DEFAULT_MAX_LOST_LEASES = 3


@dataclass(frozen=True)
class RetryBackoff:
    """Delay before retry ``n`` (n = the attempt that failed, 1-based): ``base * 2**(n-1)``,
    capped at ``cap``, then stretched by up to ``jitter`` (a fraction) so retries of many jobs
    that failed together do not return together."""

    base: dt.timedelta = dt.timedelta(seconds=10)
    cap: dt.timedelta = dt.timedelta(hours=1)
    jitter: float = 0.1

    def __post_init__(self) -> None:
        _require_duration("retry_backoff.base", self.base, allow_zero=True)
        _require_duration("retry_backoff.cap", self.cap, allow_zero=True)
        if self.cap < self.base:
            raise ConfigError(
                f"retry_backoff.cap ({self.cap}) must not be shorter than retry_backoff.base "
                f"({self.base})"
            )
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"retry_backoff.jitter must be within [0, 1], got {self.jitter!r}")

    def delay(self, attempt: int) -> dt.timedelta:
        exponent = min(max(attempt - 1, 0), 40)  # 2**40 * base is past any sane cap already
        raw = min(self.base * (2**exponent), self.cap)
        stretched: dt.timedelta = raw * (1 + self.jitter * random.random())
        return stretched


def _require_duration(name: str, value: object, *, allow_zero: bool = False) -> None:
    if not isinstance(value, dt.timedelta):
        raise ConfigError(
            f"{name} must be a datetime.timedelta, got {value!r} ({type(value).__name__}); "
            f"for example timedelta(seconds=30)"
        )
    if value < dt.timedelta(0) or (value == dt.timedelta(0) and not allow_zero):
        rule = "negative" if allow_zero else "zero or negative"
        raise ConfigError(f"{name} must be a positive duration, got {value} ({rule})")


@dataclass(frozen=True)
class SchedulerConfig:
    """Settings of one scheduler node. Nodes that share tables should share these settings."""

    engine: sa.Engine | Any
    """The application's SQLAlchemy engine (``Engine``, or ``AsyncEngine`` for ``AsyncScheduler``).
    (Seed: ``DB`` and ``DBDriverName``.)"""

    session_factory: Any = None
    """The application's ``sessionmaker`` (or ``async_sessionmaker``); default: one on ``engine``."""

    max_concurrent_jobs: int = DEFAULT_MAX_CONCURRENT_JOBS
    """The most jobs this node runs at once: a true cap, not a per-poll quota."""

    job_check_interval: dt.timedelta = DEFAULT_JOB_CHECK_INTERVAL
    """Longest sleep between two looks for due jobs. Nodes also wake on NOTIFY and at the next
    known due time, so this only bounds how late a change made outside pg_scheduler is seen."""

    orphaned_job_timeout: dt.timedelta = DEFAULT_ORPHANED_JOB_TIMEOUT
    """Jobs whose name no node has registered for this long (and older than this) are deleted."""

    heartbeat_interval: dt.timedelta = DEFAULT_HEARTBEAT_INTERVAL
    """How often a node renews the leases of the jobs it runs."""

    no_heartbeat_timeout: dt.timedelta = DEFAULT_NO_HEARTBEAT_TIMEOUT
    """A running job whose lease has not been renewed for this long is taken back and re-run."""

    create_schema: bool = False
    """Run pg_scheduler's Alembic migrations at ``start()`` (never ``create_all``)."""

    logger: logging.Logger | logging.LoggerAdapter[Any] | None = None
    """Where the scheduler logs; default: the ``pg_scheduler.*`` module loggers."""

    run_immediately: bool = True
    """Look for due jobs as soon as ``start()`` returns. False waits one ``job_check_interval``
    (or a NOTIFY) first, as the original did by default."""

    table_prefix: str = ""
    """Prefix of every table, index and constraint. ``""`` keeps the original's ``scheduled_jobs``."""

    shutdown_timeout: dt.timedelta = DEFAULT_SHUTDOWN_TIMEOUT
    """How long ``shutdown()`` waits for running jobs before handing them back."""

    failed_and_completed_one_time_job_interval: dt.timedelta = DEFAULT_CLEANUP_INTERVAL
    """How often finished one-time jobs older than ``finished_job_retention`` are deleted."""

    schema: str | None = None
    """PostgreSQL schema of the tables; default: the connection's search path."""

    node_name: str | None = None
    """A readable name for this node (default: the host name); ids stay unique regardless."""

    retry_backoff: RetryBackoff = field(default_factory=RetryBackoff)
    """Delay between attempts of a failing job."""

    finished_job_retention: dt.timedelta = DEFAULT_FINISHED_JOB_RETENTION
    """How long finished one-time jobs and run history are kept."""

    max_params_bytes: int = DEFAULT_MAX_PARAMS_BYTES
    """Largest JSON document accepted as one job's parameters."""

    listen: bool = True
    """Wake on LISTEN/NOTIFY where the driver supports it (turn off behind PgBouncer's
    transaction pooling; polling then takes over)."""

    statement_timeout: dt.timedelta | None = DEFAULT_STATEMENT_TIMEOUT
    """Longest a statement of the scheduler's own may run, and (plus one second) longest one of
    its transactions may wait for the database. Set server side per transaction (never on the
    application's connections), and enforced client side by cutting the connection off, so a
    black-holed network or a hung pooler cannot hang a node. ``None`` disables both; set the
    driver's ``connect_timeout`` (and keepalives) on the engine to bound connecting too."""

    max_lost_leases: int = DEFAULT_MAX_LOST_LEASES
    """How many runs of one job may lose their lease in a row (the node died or hung) before the
    job is given up: the run that reaches it ends a one-time job ``failed`` (a recurring job waits
    for its next tick), ``last_error`` saying its runs were lost. A lost run is not a failure and
    uses up no attempt; this bounds a job that takes its node down on every run. Applied by the
    node that rescues the job."""

    def __post_init__(self) -> None:
        engine = self.engine
        dialect = getattr(engine, "dialect", None)
        if dialect is None:
            raise ConfigError(
                f"engine must be a SQLAlchemy Engine or AsyncEngine, got {type(engine).__name__}"
            )
        if dialect.name != "postgresql":
            raise ConfigError(
                f"pg_scheduler needs PostgreSQL; the engine's dialect is {dialect.name!r}"
            )
        if isinstance(self.max_concurrent_jobs, bool) or not isinstance(
            self.max_concurrent_jobs, int
        ):
            raise ConfigError(
                f"max_concurrent_jobs must be an integer, got {self.max_concurrent_jobs!r}"
            )
        if (
            isinstance(self.max_lost_leases, bool)
            or not isinstance(self.max_lost_leases, int)
            or self.max_lost_leases < 1
        ):
            raise ConfigError(
                f"max_lost_leases must be an integer of at least 1, got {self.max_lost_leases!r}"
            )
        if self.max_concurrent_jobs < 1:
            raise ConfigError(
                f"max_concurrent_jobs must be at least 1, got {self.max_concurrent_jobs}"
            )
        for name in (
            "job_check_interval",
            "orphaned_job_timeout",
            "heartbeat_interval",
            "no_heartbeat_timeout",
            "failed_and_completed_one_time_job_interval",
        ):
            _require_duration(name, getattr(self, name))
        _require_duration("shutdown_timeout", self.shutdown_timeout, allow_zero=True)
        _require_duration("finished_job_retention", self.finished_job_retention, allow_zero=True)
        if self.statement_timeout is not None:
            _require_duration("statement_timeout", self.statement_timeout)
        if self.no_heartbeat_timeout < 2 * self.heartbeat_interval:
            raise ConfigError(
                f"no_heartbeat_timeout ({self.no_heartbeat_timeout}) must be at least twice "
                f"heartbeat_interval ({self.heartbeat_interval}): otherwise one late heartbeat "
                "makes a healthy job look stalled and it runs twice"
            )
        if self.orphaned_job_timeout < self.no_heartbeat_timeout:
            raise ConfigError(
                f"orphaned_job_timeout ({self.orphaned_job_timeout}) must not be shorter than "
                f"no_heartbeat_timeout ({self.no_heartbeat_timeout})"
            )
        if not isinstance(self.retry_backoff, RetryBackoff):
            raise ConfigError("retry_backoff must be a RetryBackoff")
        if not isinstance(self.max_params_bytes, int) or self.max_params_bytes < 2:
            raise ConfigError(
                f"max_params_bytes must be an integer >= 2, got {self.max_params_bytes!r}"
            )
        if self.node_name is not None and (not self.node_name or "\x00" in self.node_name):
            raise ConfigError(f"node_name must be a non-empty string, got {self.node_name!r}")
        self.names  # noqa: B018 - validates table_prefix and schema now, before any connection

    @property
    def names(self) -> Names:
        return Names(prefix=self.table_prefix, schema=self.schema)
