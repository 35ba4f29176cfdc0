"""A run this node holds: the claimed row, the job that runs it, its context, and why it was
asked to stop."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from pg_scheduler.db.records import ClaimedJob
from pg_scheduler.jobs import CancelReason, Job, JobContext

StopReason = CancelReason
"""Why a running job was asked to stop; it decides what its outcome write does (see
``attempt_outcome``). The same values job code reads as ``ctx.cancel_reason``."""


class EventLoopDied(Exception):
    """The event loop running an ``async def`` job's code died under it (something raised
    ``SystemExit`` or ``KeyboardInterrupt`` out of a loop callback, or stopped the loop). The run
    is handed back, and the node starts a new loop for the next async job."""


@dataclass
class RunningJob:
    """A job this node is running."""

    claimed: ClaimedJob
    job: Job
    ctx: JobContext
    started: float = field(default_factory=time.monotonic)
    code_ended: bool = False
    """The job's code has returned; only its outcome write is left. Its slot is free again, its
    lease is still held (and renewed) until the outcome is written. Set by ``Inflight.end_code``."""
    on_stop: Callable[[], None] | None = field(default=None, repr=False)
    """Called at the first ``stop()``, after ``ctx.cancelled`` is set (AsyncScheduler cancels the
    job's task there)."""

    @property
    def lease_id(self) -> uuid.UUID:
        return self.claimed.lease_id

    @property
    def stop_reason(self) -> StopReason | None:
        """Why the run was asked to stop (``ctx.cancel_reason``), or None."""
        return self.ctx.cancel_reason

    def stop(self, reason: StopReason) -> None:
        # The first reason wins, except that a lost lease overrides everything: nothing may be
        # written for a lease that is no longer ours.
        first = self.ctx._cancel(reason, override=reason is StopReason.LEASE_LOST)
        if first and self.on_stop is not None:
            self.on_stop()
