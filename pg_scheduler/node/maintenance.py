"""Maintenance, on every node: stall rescue, the orphan sweep, cleanup of finished one-time jobs.

Each is one guarded statement, so any number of nodes may run them at once. The first pass comes
soon after start (the original waited a full timeout period: 14 days for the orphan sweep).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from pg_scheduler.config import SchedulerConfig
from pg_scheduler.db.outages import DatabaseErrors
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.node.runtime import Runtime
from pg_scheduler.node.service import Service

FIRST_PASS_DELAY_SECONDS = 1.0


@dataclass(frozen=True)
class MaintenanceResult:
    rescued: int = 0
    failed: int = 0
    cleaned: int = 0
    orphans: int = 0
    rescue_skipped: bool = False


class Maintenance(Service):
    name = "maintenance"

    def __init__(
        self,
        runtime: Runtime,
        *,
        config: SchedulerConfig,
        errors: DatabaseErrors,
        log: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        super().__init__(runtime)
        self.config = config
        self.errors = errors
        self.log = log
        self._last_cleanup = float("-inf")
        self.passes = 0
        """Passes run so far (tests wait on it)."""

    async def run_once(self, *, cleanup: bool | None = None) -> MaintenanceResult:
        """One pass: the stall rescue and the orphan sweep (both held back for a while after a
        database error), and the cleanup of finished jobs when its interval has passed (or when
        ``cleanup`` says so)."""
        cfg, log, db = self.config, self.log, self.runtime.db
        now = time.monotonic()
        cleanup, skip_rescue = plan(
            cfg, now - self._last_cleanup, self.errors.seconds_since_last(), cleanup
        )
        rescued = failed = cleaned = orphans = 0
        if not skip_rescue:
            rescued, failed = await db(lambda repo: rescue(repo, cfg, log))
            orphans = await db(lambda repo: sweep(repo, cfg, log))
        if cleanup:
            cleaned = await db(lambda repo: clean(repo, cfg, log))
            self._last_cleanup = now
        self.passes += 1
        return MaintenanceResult(rescued, failed, cleaned, orphans, skip_rescue)

    async def loop(self) -> None:
        interval, delay = pass_interval(self.config)
        while True:
            await self.wakeup.wait(delay)
            if self.stopping:
                return
            self.wakeup.clear()
            delay = interval
            try:
                await self.run_once()
            except Exception as exc:
                self.errors.report("maintenance", exc, retry_in=interval)


def pass_interval(cfg: SchedulerConfig) -> tuple[float, float]:
    """Seconds between passes, and before the first one (soon after start)."""
    interval = min(cfg.heartbeat_interval, cfg.job_check_interval).total_seconds()
    return interval, min(FIRST_PASS_DELAY_SECONDS, interval)


def plan(
    cfg: SchedulerConfig,
    since_cleanup: float,
    since_database_error: float,
    cleanup: bool | None = None,
) -> tuple[bool, bool]:
    """What one pass does: (run the cleanup of finished jobs, hold back the stall rescue and the
    orphan sweep). Cleanup runs when its interval has passed, unless ``cleanup`` says otherwise;
    the rescue and the sweep run on every pass that is not held back."""
    if cleanup is None:
        cleanup = since_cleanup >= cfg.failed_and_completed_one_time_job_interval.total_seconds()
    # After this node could not reach the database, every node's heartbeats were probably
    # failing too: a lease's age then counts time in which its holder could not renew it.
    # Give every holder a whole lease period of working database before judging anyone
    # stalled (two heartbeat intervals were not enough: a holder reconnecting on a busy
    # machine was rescued, and its job re-run, after a plain server restart). The orphan sweep
    # waits as well: the nodes' registrations (their last_seen_at) could not be renewed either.
    skip_rescue = since_database_error < cfg.no_heartbeat_timeout.total_seconds()
    return cleanup, skip_rescue


def rescue(
    repo: JobRepository, cfg: SchedulerConfig, log: logging.Logger | logging.LoggerAdapter[Any]
) -> tuple[int, int]:
    """Take back stalled leases; returns (handed back to pending, marked failed)."""
    taken = repo.rescue_stalled(cfg.no_heartbeat_timeout, max_lost_leases=cfg.max_lost_leases)
    for key in taken.pending:
        log.warning(
            "job %r stalled (no heartbeat for %s); handed back to pending (no attempt used up)",
            key,
            cfg.no_heartbeat_timeout,
            extra={"event": "job.rescued", "job_key": key},
        )
    for key in taken.failed:
        log.error(
            "job %r stalled: its runs lost their lease %d times in a row (node died or hung); "
            "marked failed, not retried",
            key,
            cfg.max_lost_leases,
            extra={"event": "job.failed", "job_key": key},
        )
    return len(taken.pending), len(taken.failed)


def clean(
    repo: JobRepository, cfg: SchedulerConfig, log: logging.Logger | logging.LoggerAdapter[Any]
) -> int:
    """Delete finished one-time jobs (and run history) past retention; returns how many jobs."""
    cleaned = repo.cleanup_finished(cfg.finished_job_retention)
    if cleaned:
        log.info(
            "maintenance deleted %d finished jobs",
            cleaned,
            extra={"event": "maintenance.cleaned", "cleaned": cleaned, "orphans": 0},
        )
    return cleaned


def sweep(
    repo: JobRepository, cfg: SchedulerConfig, log: logging.Logger | logging.LoggerAdapter[Any]
) -> int:
    """Delete orphaned jobs (no node registered their name within ``orphaned_job_timeout``, and
    older than that); runs on every pass, so an orphan goes within that timeout plus one pass."""
    keys = repo.delete_orphans(cfg.orphaned_job_timeout)
    if keys:
        log.info(
            "maintenance deleted %d orphaned jobs (no node registered their names for %s): %s",
            len(keys),
            cfg.orphaned_job_timeout,
            ", ".join(keys[:10]) + (" ..." if len(keys) > 10 else ""),
            extra={"event": "maintenance.orphans", "cleaned": 0, "orphans": len(keys)},
        )
    return len(keys)
