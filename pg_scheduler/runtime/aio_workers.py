"""Where ``AsyncScheduler`` runs job code: ``async def`` hooks as tasks on the application's event
loop, synchronous hooks on worker threads (so they can never block the loop).

An attempt is a task of its own. ``RunningJob.stop()`` (shutdown, a lost lease, ``cancel_job``)
sets ``ctx.cancelled`` and, for an async job, cancels that task once, so the job also sees
``asyncio.CancelledError``; the outcome is decided (``workers.attempt_outcome``) and written only
after the task has really ended. Every job counts in ``Inflight`` until then, which is what the
poller subtracts from ``max_concurrent_jobs``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pg_scheduler.db.records import ClaimedJob, Outcome
from pg_scheduler.jobs import Job, JobContext, is_async_callable
from pg_scheduler.scheduler import lease_lost
from pg_scheduler.states import RunStatus

from .outcomes import AsyncOutcomeWriter
from .workers import (
    RunningJob,
    StopReason,
    WorkerPool,
    attempt_outcome,
    misfire_outcome,
    new_context,
    report_dropped,
    report_outcome,
    running_loop,
    shutdown_hook_failed,
)

if TYPE_CHECKING:
    from pg_scheduler.aio import AsyncScheduler


class AsyncWorkers:
    """Runs the jobs an ``AsyncScheduler`` claims, one task each."""

    def __init__(self, scheduler: AsyncScheduler) -> None:
        self.scheduler = scheduler
        self.tasks: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._pool: WorkerPool | None = None  # started on the first synchronous hook
        self.outcomes = AsyncOutcomeWriter(scheduler.write_outcomes)

    def dispatch(self, claimed: ClaimedJob) -> None:
        s = self.scheduler
        job = s.registered_job(claimed.name)
        if job is None:  # pragma: no cover - names are never unregistered; kept as a guard
            s.spawn(s.transaction(lambda repo: repo.release(s.node_id, [claimed.lease_id])))
            return
        running = RunningJob(claimed, job, new_context(claimed, s.node_id, s.log))
        s.inflight.add(running)
        self.tasks[running.lease_id] = asyncio.create_task(
            self._run(running), name=f"pg_scheduler:{claimed.key}"
        )

    def stop(self) -> None:
        pool, self._pool = self._pool, None  # a later synchronous hook starts a new one
        if pool is not None:
            pool.stop()

    async def execute(self, running: RunningJob) -> BaseException | None:
        """One attempt's code, in the calling task's loop (``AsyncScheduler.run_pending``)."""
        return await self._execute(running)

    async def _run(self, running: RunningJob) -> None:
        s, claimed = self.scheduler, running.claimed
        try:
            outcome = misfire_outcome(claimed)
            if outcome is None:
                s.log.debug(
                    "job %r attempt %d started",
                    claimed.key,
                    running.ctx.attempt,
                    extra={"event": "job.claimed", "job_key": claimed.key},
                )
                started = time.monotonic()
                error = await self._execute(running)
                duration_ms = int((time.monotonic() - started) * 1000)
                outcome = attempt_outcome(running, error, duration_ms)
            # As in the threaded scheduler: the slot is free once the code has ended; the lease
            # stays in flight (renewed, fenced, waited for by shutdown) until the outcome is written.
            s.inflight.end_code(running)
            s.poller.wake()
            await self._finish(running, outcome)
        finally:
            s.inflight.remove(running.lease_id)
            self.tasks.pop(running.lease_id, None)
            s.poller.wake()  # a slot is free

    async def _execute(self, running: RunningJob) -> BaseException | None:
        """Run the attempt as a task of its own, which ``running.stop()`` cancels (once) when the
        job is async; wait for that task to end whatever the job does with the cancellation."""
        attempt = asyncio.create_task(self._attempt(running))
        if running.job.is_async:
            loop = asyncio.get_running_loop()

            def cancel() -> None:
                if running_loop() is loop:
                    attempt.cancel()
                elif not loop.is_closed():
                    loop.call_soon_threadsafe(attempt.cancel)

            running.on_stop = cancel
            if running.stop_reason is not None:  # asked to stop before the task existed
                attempt.cancel()
        # wait() rather than ``await attempt``: a task cancelled before its first step ends
        # cancelled without running _attempt, and that is this attempt's outcome, not ours.
        await asyncio.wait({attempt})
        if attempt.cancelled():
            return asyncio.CancelledError()
        return attempt.result()

    async def _attempt(self, running: RunningJob) -> BaseException | None:
        """``init``, ``run``, then ``shutdown`` whatever happened; returns the exception that failed
        the attempt (``CancelledError`` included), or None (as ``workers.execute``)."""
        job, ctx = running.job, running.ctx
        error: BaseException | None = None
        try:
            await self._call(job.init, ctx)
            await self._call(job.run, ctx)
        except BaseException as exc:
            error = exc
        finally:
            try:
                await self._call(job.shutdown, ctx)
            except BaseException as exc:
                shutdown_hook_failed(ctx, exc)
        return error

    async def _call(self, hook: Callable[[JobContext], Any], ctx: JobContext) -> Any:
        if is_async_callable(hook):
            return await hook(ctx)
        if getattr(hook, "__func__", None) in (Job.init, Job.shutdown):
            return None  # the base class's empty hooks: no thread hop for nothing
        result = await self._in_thread(hook, ctx)
        if inspect.isawaitable(result):
            return await result
        return result

    async def _in_thread(self, hook: Callable[[JobContext], Any], ctx: JobContext) -> Any:
        """Run synchronous job code on a worker thread and wait for it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        def work() -> None:
            try:
                value, error = hook(ctx), None
            except BaseException as exc:
                value, error = None, exc
            if not loop.is_closed():
                loop.call_soon_threadsafe(settle, value, error)

        if self._pool is None:
            self._pool = WorkerPool(self.scheduler.config.max_concurrent_jobs, "pg_scheduler")
        self._pool.submit(work)
        # A thread cannot be interrupted: a cancellation of this task waits for the code to return
        # (it sees ctx.cancelled), so the attempt never ends while its code still runs.
        while True:
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                if future.done():
                    return future.result()

    async def _finish(self, running: RunningJob, outcome: Outcome) -> None:
        s, claimed = self.scheduler, running.claimed
        if running.stop_reason is StopReason.LEASE_LOST:
            report_dropped(s.log, claimed.key)
            return
        if outcome.status is RunStatus.RELEASED:  # handed back (see ``attempt_outcome``)
            await s.retry_database(
                "release",
                lambda repo: repo.release(s.node_id, [claimed.lease_id], reason=outcome.error),
            )
            return
        result = await self.outcomes.write(claimed, outcome)
        if result is None:  # the group write failed: alone, retried while the lease holds
            result = await s.retry_database(
                "record outcome", lambda repo: repo.finish(claimed, outcome), holder=running
            )
        if result is None and lease_lost(running):  # the heartbeat said so while we retried
            report_dropped(s.log, claimed.key)
            return
        report_outcome(s.log, claimed, outcome, result)
