"""Maintenance, on every node: stall rescue, cleanup of finished one-time jobs, the orphan sweep.

Each is one guarded statement, so any number of nodes may run them at once. The first pass comes
soon after start (the original waited a full timeout period: 14 days for the orphan sweep).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .scheduler import Scheduler

FIRST_PASS_DELAY_SECONDS = 1.0


@dataclass(frozen=True)
class MaintenanceResult:
    rescued: int = 0
    failed: int = 0
    cleaned: int = 0
    orphans: int = 0
    rescue_skipped: bool = False


class Maintenance:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_cleanup = float("-inf")

    def run_once(self, *, cleanup: bool | None = None) -> MaintenanceResult:
        """One pass. Cleanup and the orphan sweep run when their interval has passed (or when
        ``cleanup`` says so)."""
        s = self.scheduler
        cfg = s.config
        now = time.monotonic()
        if cleanup is None:
            cleanup = now - self._last_cleanup >= (
                cfg.failed_and_completed_one_time_job_interval.total_seconds()
            )
        # After this node could not reach the database, every node's heartbeats were probably
        # failing too; give them a beat to resume before judging anyone stalled.
        skip_rescue = s.seconds_since_database_error() < 2 * cfg.heartbeat_interval.total_seconds()
        rescued = failed = cleaned = orphans = 0
        with s.transaction() as repo:
            if not skip_rescue:
                taken = repo.rescue_stalled(cfg.no_heartbeat_timeout)
                rescued, failed = len(taken.pending), len(taken.failed)
                for key in taken.pending:
                    s.log.warning(
                        "job %r stalled (no heartbeat for %s); handed back to pending",
                        key,
                        cfg.no_heartbeat_timeout,
                        extra={"event": "job.rescued", "job_key": key},
                    )
                for key in taken.failed:
                    s.log.error(
                        "job %r stalled on its last attempt; marked failed",
                        key,
                        extra={"event": "job.failed", "job_key": key},
                    )
        if cleanup:
            with s.transaction() as repo:
                cleaned = repo.cleanup_finished(cfg.finished_job_retention)
                orphans = len(repo.delete_orphans(cfg.orphaned_job_timeout))
            self._last_cleanup = now
            if cleaned or orphans:
                s.log.info(
                    "maintenance deleted %d finished and %d orphaned jobs",
                    cleaned,
                    orphans,
                    extra={"event": "maintenance.cleaned", "cleaned": cleaned, "orphans": orphans},
                )
        return MaintenanceResult(rescued, failed, cleaned, orphans, skip_rescue)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._loop, name="pg_scheduler-maintenance", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        cfg = self.scheduler.config
        interval = min(cfg.heartbeat_interval, cfg.job_check_interval).total_seconds()
        delay = min(FIRST_PASS_DELAY_SECONDS, interval)
        while not self._stop.wait(delay):
            delay = interval
            try:
                self.run_once()
            except Exception as exc:
                self.scheduler.database_error("maintenance", exc, retry_in=interval)
