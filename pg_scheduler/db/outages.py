"""What a database error means for a node: not installed, unreachable, worth retrying, or a bug.

One place for the SQLSTATE rules, the retry budget of a write that failed on the database, and the
throttled log lines of background services that cannot reach it. Both runtimes use it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from pg_scheduler.db.connections import lost_connection
from pg_scheduler.errors import DatabaseUnavailableError, PgSchedulerError
from pg_scheduler.naming import Names

#: At most one "database unavailable" line per service per this many seconds.
DB_ERROR_LOG_SECONDS = 10.0

_UNDEFINED_TABLE = "42P01"
_UNIQUE_VIOLATION = "23505"

# SQLSTATE classes and codes that mean "the database is away or cannot write for now" (connection
# exceptions, operator intervention, insufficient resources, read-only transaction, statement
# timeout): worth retrying for as long as the lease holds. Anything else is a bug or bad data.
_OUTAGE_CLASSES = ("08", "53", "57")
_OUTAGE_CODES = ("25006", "40001", "40P01", "55P03")

# A lost race (serialization failure, deadlock, lock timeout) is retried like an outage, but it
# is no sign that heartbeats were failing.
_LOST_RACE_CODES = ("40001", "40P01", "55P03")


def translate_error(
    exc: sa.exc.DBAPIError, url: sa.URL, not_installed: Callable[[], PgSchedulerError]
) -> PgSchedulerError | None:
    """Our error for a driver error that means "not installed" (``not_installed()`` builds it) or
    "unreachable", else None: the caller re-raises the driver's error."""
    if isinstance(exc, sa.exc.ProgrammingError) and sqlstate(exc) == _UNDEFINED_TABLE:
        return not_installed()
    if isinstance(exc, sa.exc.OperationalError) or lost_connection(exc):
        return unavailable(exc, url)
    return None


def unavailable(exc: BaseException, url: sa.URL) -> DatabaseUnavailableError:
    database = url.render_as_string(hide_password=True)
    return DatabaseUnavailableError(f"database unavailable ({database}): {first_line(exc)}")


def is_outage(exc: BaseException) -> bool:
    """True for an error that a later retry can outlive (the database restarting, unreachable,
    read-only, or too slow), False for one that would fail the same way every time."""
    if isinstance(exc, DatabaseUnavailableError | sa.exc.OperationalError | sa.exc.InterfaceError):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        code = sqlstate(exc) or ""
        return code[:2] in _OUTAGE_CLASSES or code in _OUTAGE_CODES
    return isinstance(exc, OSError)


def holds_back_rescues(exc: BaseException) -> bool:
    """True when ``exc`` means this node could not reach (or write to) the database, so the other
    nodes' heartbeats were probably failing too. Lost races and bugs do not count: a node seeing a
    deadlock every second must not hold back rescues forever (seen in the soak: recoveries of
    13-26 s while heartbeats and group outcome writes deadlocked)."""
    cause = exc.__cause__ if isinstance(exc, DatabaseUnavailableError) else exc
    if isinstance(cause, sa.exc.DBAPIError) and sqlstate(cause) in _LOST_RACE_CODES:
        return False
    return is_outage(exc)


def is_duplicate_key(exc: sa.exc.DBAPIError, names: Names) -> bool:
    """Whether ``exc`` is a unique violation of the jobs table's primary key."""
    return sqlstate(exc) == _UNIQUE_VIOLATION and names.job("pkey") in str(exc.orig)


def sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code is None and orig is not None and orig.args and isinstance(orig.args[0], dict):
        code = orig.args[0].get("C")  # pg8000
    return code


def first_line(exc: BaseException) -> str:
    """The first line of what an error says (the driver's own error for a wrapped one)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


class DatabaseErrors:
    """A node's database failures: when the last one happened (maintenance holds back rescues
    after one), and their log lines. The first failure of each service is logged at once, then
    at most one line per ``DB_ERROR_LOG_SECONDS`` with the count of failures in between: a
    database that stays down or read-only for hours must not flood the log from every retry of
    every service."""

    def __init__(self, log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.log = log
        self._last = float("-inf")
        self._reports: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def report(self, service: str, exc: BaseException, *, retry_in: float) -> None:
        now = time.monotonic()
        with self._lock:
            if holds_back_rescues(exc):
                self._last = now
            last, suppressed = self._reports.get(service, (float("-inf"), 0))
            if now - last < DB_ERROR_LOG_SECONDS:
                self._reports[service] = (last, suppressed + 1)
                return
            self._reports[service] = (now, 0)
        self.log.warning(
            "%s failed (%s); retrying in %.1fs%s",
            service,
            first_line(exc),
            retry_in,
            f" ({suppressed} more failures since the last report)" if suppressed else "",
            extra={"event": "db.unavailable", "service": service, "suppressed": suppressed},
        )

    def seconds_since_last(self) -> float:
        return time.monotonic() - self._last


class OutageRetry:
    """When a write that failed on the database is tried again, and when it is given up.

    A plain write is retried for up to ``budget`` (``no_heartbeat_timeout``: after that the lease
    has expired anyway). With ``lease_lost`` (an outcome write: says whether the run's lease is
    gone), an outage is retried for as long as this node holds the job's lease, however long the
    database is away: the job stays in flight meanwhile, so the heartbeat renews its lease as soon
    as the database answers and no node rescues a job whose outcome is on its way. The retries end
    when the heartbeat reports the lease lost or shutdown hands the job back."""

    def __init__(self, budget: dt.timedelta, lease_lost: Callable[[], bool] | None = None) -> None:
        self.deadline = time.monotonic() + budget.total_seconds()
        self.lease_lost = lease_lost
        self.delay = 0.05

    def next_delay(self, exc: BaseException) -> float | None:
        """Seconds to wait before the next try, or None: give up."""
        if self.lease_lost is not None and self.lease_lost():
            return None
        keep_trying = self.lease_lost is not None and is_outage(exc)
        if not keep_trying and time.monotonic() + self.delay > self.deadline:
            return None
        delay, self.delay = self.delay, min(self.delay * 2, 2.0)
        return delay
