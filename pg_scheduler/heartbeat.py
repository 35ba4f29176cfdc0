"""The heartbeat: renews every lease of this node in one statement, on its own thread and its own
connection, so neither busy jobs nor an exhausted pool can starve it.

A lease that the statement does not return is lost (another node rescued the job while this one
was paused or cut off): the job's cancellation is set and its outcome will not be written. Cancel
requests made from other nodes are picked up here too.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .repository import JobRepository
from .workers import StopReason

if TYPE_CHECKING:
    from .scheduler import Scheduler


@dataclass(frozen=True)
class HeartbeatResult:
    renewed: int
    lost: tuple[uuid.UUID, ...] = ()
    cancel_requested: tuple[uuid.UUID, ...] = ()


class Heartbeat:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._conn: sa.Connection | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sa.Connection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self.scheduler.engine.connect()
            self.scheduler.name_connection(self._conn, "heartbeat")
            self._conn.commit()
        return self._conn

    def run_once(self) -> HeartbeatResult:
        """Renew this node's leases and mark the node alive; act on lost leases and cancel requests."""
        s = self.scheduler
        with self._lock:
            running = s.inflight.snapshot()
            leases = [r.lease_id for r in running]
            try:
                with Session(bind=self._connection()) as session, session.begin():
                    repo = JobRepository(session, s.models)
                    held = repo.heartbeat(s.node_id, leases)
                    requested = repo.cancel_requested(held)
                    if not repo.touch_node(s.node_id, s.registered_names()):
                        # Our node row was swept (this node was silent past the orphan horizon).
                        s.register_node(repo)
            except Exception:
                self._discard()
                raise
        # Jobs that finished while the statement ran are gone from inflight, not lost.
        lost = [
            r for r in running if r.lease_id not in held and s.inflight.get(r.lease_id) is not None
        ]
        for r in lost:
            r.stop(StopReason.LEASE_LOST)
            s.log.warning(
                "job %r lost its lease (another node took it over); its outcome will be dropped",
                r.claimed.key,
                extra={"event": "job.lease_lost", "job_key": r.claimed.key, "node_id": s.node_id},
            )
        for r in running:
            if r.lease_id in requested:
                r.stop(StopReason.CANCEL_REQUESTED)
        return HeartbeatResult(
            len(held), tuple(r.lease_id for r in lost), tuple(sorted(requested, key=str))
        )

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except Exception:
                pass

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._loop, name="pg_scheduler-heartbeat", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:
                    pass
                self._conn = None

    def _loop(self) -> None:
        interval = self.scheduler.config.heartbeat_interval.total_seconds()
        while not self._stop.wait(interval):
            try:
                self.run_once()
            except Exception as exc:
                # Retry soon: a few missed beats are fine, the lease is several intervals long.
                self.scheduler.database_error("heartbeat", exc, retry_in=min(1.0, interval))
                self._stop.wait(min(1.0, interval))
