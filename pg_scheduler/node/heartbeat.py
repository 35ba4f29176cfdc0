"""The heartbeat: renews every lease of this node in one statement, on its own thread and its own
connection, so neither busy jobs nor an exhausted pool can starve it.

A lease that the statement does not return is lost (another node rescued the job while this one
was paused or cut off): the job's cancellation is set and its outcome will not be written. Cancel
requests made from other nodes are picked up here too.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from pg_scheduler.db.connections import connect
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.db.timeouts import set_local_timeouts
from pg_scheduler.runtime.workers import Inflight, RunningJob, StopReason

if TYPE_CHECKING:
    from pg_scheduler.scheduler import Scheduler


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
            self._conn = connect(self.scheduler.engine)
            self.scheduler.name_connection(self._conn, "heartbeat")
            self._conn.commit()
        return self._conn

    def run_once(self) -> HeartbeatResult:
        """Renew this node's leases and mark the node alive; act on lost leases and cancel requests."""
        s = self.scheduler
        with self._lock:
            running = s.inflight.snapshot()
            try:
                conn = self._connection()
                with (
                    s.deadlines.guard(conn.connection.dbapi_connection, "a heartbeat"),
                    Session(bind=conn) as session,
                    session.begin(),
                ):
                    set_local_timeouts(session, s.config)
                    held, requested = renew(
                        JobRepository(session, s.models),
                        s.node_id,
                        [r.lease_id for r in running],
                        s.registered_names(),
                        s.register_node,
                    )
            except Exception:
                self._discard()
                raise
        return settle(running, held, requested, inflight=s.inflight, node_id=s.node_id, log=s.log)

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


# ---------------------------------------------------------------------- shared with AsyncScheduler


def renew(
    repo: JobRepository,
    node_id: str,
    leases: list[uuid.UUID],
    job_names: list[str],
    register_node: Callable[[JobRepository], None],
) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
    """One beat: renew ``leases`` and mark the node alive. Returns the leases still held and those
    with a cancel request."""
    held = repo.heartbeat(node_id, leases)
    requested = repo.cancel_requested(held)
    if not repo.touch_node(node_id, job_names):
        # Our node row was swept (this node was silent past the orphan horizon).
        register_node(repo)
    return held, requested


def settle(
    running: list[RunningJob],
    held: set[uuid.UUID],
    requested: set[uuid.UUID],
    *,
    inflight: Inflight,
    node_id: str,
    log: logging.Logger | logging.LoggerAdapter[Any],
) -> HeartbeatResult:
    """Stop the jobs whose lease was lost (their outcome will be dropped) or whose cancel was
    requested from another node. ``running`` is the snapshot the beat renewed."""
    # Jobs that finished while the statement ran are gone from inflight, not lost; jobs this node
    # handed back itself (shutdown timeout) already know.
    lost = [
        r
        for r in running
        if r.lease_id not in held
        and r.stop_reason is not StopReason.LEASE_LOST
        and inflight.get(r.lease_id) is not None
    ]
    for r in lost:
        r.stop(StopReason.LEASE_LOST)
        if r.code_ended:
            # Its outcome write (fenced by the lease) says what happened: written just before
            # this beat, or dropped. Warning here too would report a completed job as lost.
            continue
        log.warning(
            "job %r lost its lease (another node took it over); its outcome will be dropped",
            r.claimed.key,
            extra={"event": "job.lease_lost", "job_key": r.claimed.key, "node_id": node_id},
        )
    for r in running:
        if r.lease_id in requested:
            r.stop(StopReason.CANCEL_JOB)
    return HeartbeatResult(
        len(held), tuple(r.lease_id for r in lost), tuple(sorted(requested, key=str))
    )
