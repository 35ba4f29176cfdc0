"""One attempt's whole life, written once for both runtimes: the hand-off from the claim, the
job's hooks (run by the runtime), cancellation, the outcome decision, its write and its report.

A run counts in ``Inflight`` from its claim until its outcome is written. Its slot is free as soon
as its code has ended (``Inflight.end_code``): the next claim overlaps the outcome write, while
the lease stays held, renewed and fenced until the write is done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pg_scheduler.db.records import ClaimedJob, FinishResult, Outcome
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.jobs import Job, JobContext, is_cancellation
from pg_scheduler.node.inflight import Inflight
from pg_scheduler.node.running import EventLoopDied, RunningJob, StopReason
from pg_scheduler.node.runtime import Runtime, group_stream
from pg_scheduler.states import JobStatus, JobType, RunStatus
from pg_scheduler.ticks import skip_reason

T = TypeVar("T")

RetryDatabase = Callable[..., Awaitable[Any]]


class Attempts:
    """Starts the runs a node claims and sees each through to its written outcome."""

    def __init__(
        self,
        runtime: Runtime,
        inflight: Inflight,
        *,
        node_id: str,
        log: logging.Logger | logging.LoggerAdapter[Any],
        slot_freed: Callable[[], None],
        retry_database: RetryDatabase,
    ) -> None:
        self.runtime = runtime
        self.inflight = inflight
        self.node_id = node_id
        self.log = log
        self.slot_freed = slot_freed
        self.retry_database = retry_database

    def running(self, claimed: ClaimedJob, job: Job) -> RunningJob:
        """A claimed run, now counted in flight."""
        running = RunningJob(claimed, job, new_context(claimed, self.node_id, self.log))
        self.inflight.add(running)
        return running

    def start(self, claimed: ClaimedJob, job: Job) -> None:
        """Run a claimed job in the background (called by the poller once the claim committed)."""
        running = self.running(claimed, job)
        self.runtime.launch(self.run(running), f"pg_scheduler:{claimed.key}")

    async def run(self, running: RunningJob, *, here: bool = False) -> None:
        """The attempt: its code (unless its tick is too late), its outcome written, its lease
        gone from the node. ``here``: in the calling thread or task (``run_pending``)."""
        claimed = running.claimed
        try:
            outcome = misfire_outcome(claimed)
            if outcome is None:
                if self.log.isEnabledFor(logging.DEBUG):
                    self.log.debug(
                        "job %r attempt %d started",
                        claimed.key,
                        running.ctx.attempt,
                        extra={"event": "job.claimed", "job_key": claimed.key},
                    )
                started = time.monotonic()
                error = await self.runtime.run_code(running, here=here)
                outcome = attempt_outcome(running, error, int((time.monotonic() - started) * 1000))
            self.inflight.end_code(running)
            self.slot_freed()
            await self.finish(running, outcome, here=here)
        finally:
            # The outcome is written (or given up): the lease leaves the node. A node holding
            # ``2 * max_concurrent_jobs`` leases waits for this to claim again.
            self.inflight.remove(claimed.lease_id)
            self.slot_freed()

    async def finish(self, running: RunningJob, outcome: Outcome, *, here: bool = False) -> None:
        """Write the attempt's outcome (handed back, or grouped with others), then log it."""
        claimed = running.claimed
        if running.stop_reason is StopReason.LEASE_LOST:
            report_dropped(self.log, claimed.key)
            return
        if outcome.status is RunStatus.RELEASED:  # handed back (see ``attempt_outcome``)
            await self.retry_database(
                "release",
                lambda repo: repo.release(self.node_id, [claimed.lease_id], reason=outcome.error),
            )
            return
        # A node groups the outcome with the others ending now; ``run_pending`` writes it at once.
        if here:
            result = await self._write_now(claimed, outcome)
        else:
            result = await self.runtime.write_outcome(claimed, outcome)
        if result is None:  # alone, or the group failed: retried while the lease holds
            if not here:
                await self.runtime.hop()  # not on the group writer's thread

            def write(repo: JobRepository) -> FinishResult:
                return repo.finish(claimed, outcome)

            result = await self.retry_database(
                "record outcome", write, lease_lost=lambda: lease_lost(running)
            )
            if result is None and lease_lost(running):  # the heartbeat said so while we retried
                report_dropped(self.log, claimed.key)
                return
        report_outcome(self.log, claimed, outcome, result)

    async def _write_now(self, claimed: ClaimedJob, outcome: Outcome) -> FinishResult | None:
        """The outcome as a group of one (the same statement and stream), or None if that failed
        (nothing was written: the caller writes it alone, with retries)."""
        items = [(claimed, outcome)]
        try:
            (result,) = await self.runtime.db(
                lambda repo: repo.finish_many(items), group_stream(items)
            )
        except Exception:
            return None
        return result


async def run_hooks(
    running: RunningJob, call: Callable[[Callable[[JobContext], Any]], Awaitable[Any]]
) -> BaseException | None:
    """One attempt's code: ``init``, ``run``, then ``shutdown`` whatever happened, each through
    the runtime's ``call``. Returns the exception that failed the attempt (``BaseException``
    included: a job raising ``KeyboardInterrupt``, ``SystemExit`` or ``CancelledError`` still
    gets its outcome recorded), or None on success. A hook the job does not define is skipped."""
    job = running.job
    error: BaseException | None = None
    try:
        if job.has_init:
            await call(job.init)
        await call(job.run)
    except BaseException as exc:
        error = exc
    finally:
        if job.has_shutdown:
            try:
                await call(job.shutdown)
            except BaseException as exc:
                shutdown_hook_failed(running.ctx, exc)
    return error


def lease_lost(running: RunningJob) -> bool:
    return running.stop_reason is StopReason.LEASE_LOST


def new_context(
    claimed: ClaimedJob, node_id: str, log: logging.Logger | logging.LoggerAdapter[Any]
) -> JobContext:
    """The context of a run this node has just claimed."""
    record = claimed.job
    return JobContext(
        params=record.params if record.params is not None else {},
        job_name=record.name,
        job_key=record.key,
        attempt=record.attempt,
        scheduled_at=record.scheduled_at or claimed.claimed_at,
        node_id=node_id,
        logger=log,
        max_retries=record.max_retries or 0,  # resolved by the claim: never None here
    )


def misfire_outcome(claimed: ClaimedJob) -> Outcome | None:
    """``skipped`` for a recurring tick claimed later than its misfire policy allows (it is
    recorded, not run); None when the job should run."""
    record = claimed.job
    if record.job_type is JobType.RECURRING:
        reason = skip_reason(record, claimed.claimed_at)
        if reason is not None:
            return Outcome(RunStatus.SKIPPED, 0, reason)
    return None


def attempt_outcome(running: RunningJob, error: BaseException | None, duration_ms: int) -> Outcome:
    """How an attempt ended, from the exception it raised and why it was asked to stop. The one
    rule for both schedulers (README "Outcomes"):

    - a run for which ``cancel_job`` was requested ends ``cancelled``, whether its code returned
      or raised;
    - a run asked to stop (shutdown, lost lease) whose code raised the cancellation
      (``JobCancelled`` from ``ctx.raise_if_cancelled()``, or ``asyncio.CancelledError``) is
      handed back (``released``: pending, runnable at once, no attempt used up), as is a run whose
      event loop died under it;
    - otherwise returning completes the run, and raising anything fails the attempt.
    """
    reason = running.stop_reason
    if reason is StopReason.CANCEL_JOB:
        return Outcome(RunStatus.CANCELLED, duration_ms, "cancelled on request")
    if error is None:
        return Outcome(RunStatus.COMPLETED, duration_ms)
    if isinstance(error, EventLoopDied):
        return Outcome(RunStatus.RELEASED, duration_ms, f"released: {error}")
    if reason is not None and is_cancellation(error):
        return Outcome(
            RunStatus.RELEASED, duration_ms, f"released: stopped by its node ({reason.value})"
        )
    return Outcome.from_exception(error, duration_ms)


def shutdown_hook_failed(ctx: JobContext, exc: BaseException) -> None:
    # The original turned teardown errors into job failures (and retries); we log them.
    ctx.logger.error(
        "job %r shutdown hook failed: %r",
        ctx.job_name,
        exc,
        extra={"event": "job.shutdown_hook_failed", "job_key": ctx.job_key},
    )


def report_dropped(log: logging.Logger | logging.LoggerAdapter[Any], key: str) -> None:
    """The job finished after this node lost its lease: nothing was written."""
    log.warning(
        "job %r finished after losing its lease; outcome dropped",
        key,
        extra={"event": "job.lease_lost", "job_key": key},
    )


_FINISH_EVENTS = {
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}


def report_outcome(
    log: logging.Logger | logging.LoggerAdapter[Any],
    claimed: ClaimedJob,
    outcome: Outcome,
    result: FinishResult | None,
) -> None:
    """Log what an outcome write did (``result`` None: it could not be written at all)."""
    key = claimed.key
    if result is None:
        log.error(
            "could not record the outcome of job %r; its lease will expire and it will be rescued",
            key,
            extra={"event": "job.outcome_lost", "job_key": key},
        )
        return
    if not result.applied:
        log.warning(
            "job %r: lease lost before its outcome was written; outcome dropped",
            key,
            extra={"event": "job.lease_lost", "job_key": key},
        )
        return
    event = _FINISH_EVENTS.get(result.status) if result.status is not None else None
    if outcome.status is RunStatus.FAILED:
        event = event or "job.retry_scheduled"
        level = logging.ERROR if event == "job.failed" else logging.WARNING
        log.log(
            level,
            "job %r attempt %d failed: %s",
            key,
            claimed.job.attempt,
            (outcome.error or "").splitlines()[0] if outcome.error else "",
            extra={"event": event, "job_key": key, "next_run": result.next_run},
        )
    elif log.isEnabledFor(logging.DEBUG):  # every run ends here: build nothing for nobody
        log.debug(
            "job %r %s",
            key,
            outcome.status.value,
            extra={"event": event or "job.rescheduled", "job_key": key},
        )
