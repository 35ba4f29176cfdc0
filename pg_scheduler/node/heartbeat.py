"""The heartbeat: renews every lease of this node in one statement, on a connection of its own
(``Stream.HEARTBEAT``), so neither busy jobs nor an exhausted pool can starve it.

A lease that the statement does not return is lost (another node rescued the job while this one
was paused or cut off): the job's cancellation is set and its outcome will not be written. Cancel
requests made from other nodes are picked up here too.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pg_scheduler.db.outages import DatabaseErrors
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.node.inflight import Inflight
from pg_scheduler.node.running import RunningJob, StopReason
from pg_scheduler.node.runtime import Runtime, Stream
from pg_scheduler.node.service import Service


@dataclass(frozen=True)
class HeartbeatResult:
    renewed: int
    lost: tuple[uuid.UUID, ...] = ()
    cancel_requested: tuple[uuid.UUID, ...] = ()


class Heartbeat(Service):
    name = "heartbeat"

    def __init__(
        self,
        runtime: Runtime,
        *,
        node_id: str,
        inflight: Inflight,
        job_names: Callable[[], list[str]],
        register_node: Callable[[JobRepository], None],
        interval: float,
        errors: DatabaseErrors,
        log: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        super().__init__(runtime)
        self.node_id = node_id
        self.inflight = inflight
        self.job_names = job_names
        self.register_node = register_node
        self.interval = interval
        self.errors = errors
        self.log = log

    async def run_once(self) -> HeartbeatResult:
        """Renew this node's leases and mark the node alive; act on lost leases and cancel
        requests."""
        running = self.inflight.snapshot()
        leases = [r.lease_id for r in running]
        names = self.job_names()
        held, requested = await self.runtime.db(
            lambda repo: renew(repo, self.node_id, leases, names, self.register_node),
            Stream.HEARTBEAT,
        )
        return settle(
            running, held, requested, inflight=self.inflight, node_id=self.node_id, log=self.log
        )

    async def loop(self) -> None:
        delay = self.interval
        while True:
            await self.wakeup.wait(delay)
            if self.stopping:
                return
            self.wakeup.clear()
            try:
                await self.run_once()
                delay = self.interval
            except Exception as exc:
                # Retry soon: a few missed beats are fine, the lease is several intervals long.
                delay = min(1.0, self.interval)
                self.errors.report("heartbeat", exc, retry_in=delay)


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
