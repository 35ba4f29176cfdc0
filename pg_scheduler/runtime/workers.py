"""Where job code runs: a fixed pool of worker threads, and one event loop for ``async def`` jobs.

``Inflight`` is the node's record of the jobs it is running. Its size is what the poller
subtracts from ``max_concurrent_jobs``, so the cap holds across polls; a job that hangs keeps its
slot until its thread returns (Python cannot kill a thread), while its lease is rescued elsewhere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pg_scheduler.db.records import ClaimedJob, FinishResult, Outcome
from pg_scheduler.jobs import CancelReason, Job, JobContext, is_cancellation
from pg_scheduler.states import JobStatus, JobType, RunStatus
from pg_scheduler.ticks import skip_reason

logger = logging.getLogger(__name__)

# How often a worker waiting for an async job checks whether the job was asked to stop.
_CANCEL_CHECK_SECONDS = 0.05


StopReason = CancelReason
"""Why a running job was asked to stop; it decides what its outcome write does (see
``attempt_outcome``). The same values job code reads as ``ctx.cancel_reason``."""


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


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


class Inflight:
    """Thread-safe registry of running jobs, with a way to wait for it to drain.

    It counts the jobs whose code has ended (see ``end_code``), so ``free_slots`` answers without
    walking the registry: a busy node asks after every job."""

    def __init__(self) -> None:
        self._jobs: dict[uuid.UUID, RunningJob] = {}
        self._code_ended = 0
        # A plain lock (taken several times per job); the condition only for ``wait_empty``.
        self._lock = threading.Lock()
        self._emptied = threading.Condition(self._lock)
        self._waiting = 0

    def add(self, running: RunningJob) -> None:
        with self._lock:
            if running.lease_id not in self._jobs:
                self._jobs[running.lease_id] = running
                self._code_ended += running.code_ended

    def end_code(self, running: RunningJob) -> None:
        """``running``'s code has returned: its slot is free, its lease still held until its
        outcome is written (``remove``)."""
        with self._lock:
            if running.code_ended:
                return
            running.code_ended = True
            if self._jobs.get(running.lease_id) is running:
                self._code_ended += 1

    def remove(self, lease_id: uuid.UUID) -> None:
        with self._lock:
            running = self._jobs.pop(lease_id, None)
            if running is not None and running.code_ended:
                self._code_ended -= 1
            if self._waiting and not self._jobs:
                self._emptied.notify_all()

    def get(self, lease_id: uuid.UUID) -> RunningJob | None:
        with self._lock:
            return self._jobs.get(lease_id)

    def snapshot(self) -> list[RunningJob]:
        with self._lock:
            return list(self._jobs.values())

    def leases(self) -> list[uuid.UUID]:
        with self._lock:
            return list(self._jobs)

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    def free_slots(self, cap: int) -> int:
        """How many more jobs may be claimed under ``cap`` (``max_concurrent_jobs``): a job
        whose code has ended frees its slot at once, while its outcome is still being written;
        but the node never holds more than ``2 * cap`` leases (jobs running, or waiting for
        their outcome write), so a slow database cannot make it claim without bound."""
        with self._lock:
            held = len(self._jobs)
            return max(0, min(cap - (held - self._code_ended), 2 * cap - held))

    def __iter__(self) -> Iterator[RunningJob]:
        return iter(self.snapshot())

    def wait_empty(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            self._waiting += 1
            try:
                while self._jobs:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._emptied.wait(left)
                return True
            finally:
                self._waiting -= 1


class WorkerPool:
    """A fixed number of daemon threads running submitted callables.

    Daemon threads, so a job that ignores cancellation cannot keep the process alive after
    ``shutdown()`` has returned (``concurrent.futures`` threads would be joined at exit).
    """

    def __init__(self, size: int, name: str) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-worker-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[[], None]) -> None:
        self._queue.put(fn)

    def _work(self) -> None:
        while True:
            fn = self._queue.get()
            if fn is None:
                return
            try:
                fn()
            except BaseException:  # a worker must survive whatever a job does
                logger.exception("worker task failed", extra={"event": "worker.error"})

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)


class EventLoopThread:
    """One asyncio event loop on its own thread, shared by every ``async def`` job of a node.

    Job code cannot kill it by raising: each job runs inside a wrapper that catches everything
    (``SystemExit`` and ``KeyboardInterrupt`` included, which asyncio would otherwise let out of
    the loop). Should the loop die anyway (such an exception raised from a callback the job
    scheduled, or the job stopping the loop), every run waiting on it gets ``EventLoopDied`` and
    ``alive`` turns False: the scheduler starts a new loop for the next async job."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-asyncio", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return not self._ended.is_set()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        except BaseException as exc:  # whatever ended it, its runs are handed back
            logger.error(
                "the event loop of async jobs died (%r); its runs are handed back and a new "
                "loop takes the next async job",
                exc,
                extra={"event": "worker.loop_died"},
            )
        finally:
            self._ended.set()

    def run(self, awaitable: Any, cancelled: threading.Event) -> Any:
        """Run ``awaitable`` as a task on the loop and wait until that task has really ended.

        When ``cancelled`` is set the task is cancelled once, so the job sees
        ``asyncio.CancelledError`` as well as ``ctx.cancelled``. The caller keeps waiting while the
        job's ``except``/``finally`` blocks run: its slot is not freed, and its outcome not
        written, before its code has stopped. The job's own exception (``CancelledError``,
        ``SystemExit`` included) is raised here unchanged; ``EventLoopDied`` if the loop died.
        """
        if not self.alive:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise EventLoopDied("the event loop of async jobs is not running")
        ended: concurrent.futures.Future[Any] = concurrent.futures.Future()
        tasks: list[asyncio.Future[Any]] = []

        async def guarded() -> tuple[Any, BaseException | None]:
            # Task.__step re-raises SystemExit and KeyboardInterrupt out of run_forever(), which
            # would end the loop and strand every job on it: the job's exception is its outcome.
            try:
                return await awaitable, None
            except BaseException as exc:  # the job's outcome, whatever it is
                return None, exc

        def settle(task: asyncio.Future[Any]) -> None:
            try:
                value, error = task.result()
            except BaseException as exc:  # cancelled before it started: CancelledError
                ended.set_exception(exc)
                return
            if error is not None:
                ended.set_exception(error)
            else:
                ended.set_result(value)

        def start() -> None:
            task = asyncio.ensure_future(guarded())
            task.add_done_callback(settle)
            tasks.append(task)

        def cancel() -> None:  # on the loop, so after start(): tasks[0] exists
            tasks[0].cancel()

        # Callbacks run in the order they were scheduled: start() runs before any cancel below.
        self.loop.call_soon_threadsafe(start)
        cancel_sent = False
        while not ended.done():
            concurrent.futures.wait([ended], timeout=_CANCEL_CHECK_SECONDS)
            if ended.done():
                break
            if not self.alive:
                raise EventLoopDied("the event loop of async jobs died while this job ran")
            if not cancel_sent and cancelled.is_set():
                cancel_sent = True
                self.loop.call_soon_threadsafe(cancel)
        return ended.result()

    def stop(self) -> None:
        """Stop the loop once the jobs still on it have ended. Like a worker thread, a job that
        outlived the shutdown timeout (its lease handed back) runs on, and its late outcome is
        dropped, instead of freezing mid-way on a stopped loop."""
        if not self.alive:
            return

        async def drain() -> None:
            others = asyncio.all_tasks() - {asyncio.current_task()}
            if others:
                await asyncio.wait(others)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(drain(), self.loop)


def call_hook(
    hook: Callable[[JobContext], Any], ctx: JobContext, loop: EventLoopThread | None
) -> Any:
    """Call a job hook; an awaitable result is run on the node's event loop."""
    result = hook(ctx)
    if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
        if loop is None:  # pragma: no cover - the scheduler always has a loop for async jobs
            raise RuntimeError("async job hook without an event loop")
        return loop.run(result, ctx.cancelled)
    return result


def execute(running: RunningJob, loop: EventLoopThread | None) -> BaseException | None:
    """Run one attempt: ``init``, ``run``, then ``shutdown`` whatever happened.

    Returns the exception that failed the attempt (``BaseException`` included: a job raising
    ``KeyboardInterrupt`` or ``SystemExit`` still gets its outcome recorded), or None on success.
    """
    job, ctx = running.job, running.ctx
    error: BaseException | None = None
    try:
        if job.has_init:
            call_hook(job.init, ctx, loop)
        call_hook(job.run, ctx, loop)
    except BaseException as exc:
        error = exc
    finally:
        if job.has_shutdown:
            try:
                call_hook(job.shutdown, ctx, loop)
            except BaseException as exc:
                shutdown_hook_failed(ctx, exc)
    return error


# ---------------------------------------------------------------------- one attempt, both schedulers
# What follows decides and reports; it does no I/O. Scheduler and AsyncScheduler both use it, so
# the two cannot drift apart on what an attempt's end means.


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
    else:
        log.debug(
            "job %r %s",
            key,
            outcome.status.value,
            extra={"event": event or "job.rescheduled", "job_key": key},
        )
