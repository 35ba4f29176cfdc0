"""Where job code runs: a fixed pool of worker threads, and one event loop for ``async def`` jobs.

``Inflight`` is the node's record of the jobs it is running. Its size is what the poller
subtracts from ``max_concurrent_jobs``, so the cap holds across polls; a job that hangs keeps its
slot until its thread returns (Python cannot kill a thread), while its lease is rescued elsewhere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .jobs import Job, JobContext
from .records import ClaimedJob

logger = logging.getLogger(__name__)

# How often a worker waiting for an async job checks whether the job was asked to stop.
_CANCEL_CHECK_SECONDS = 0.05


class StopReason(enum.Enum):
    """Why a running job was asked to stop; it decides what its outcome write does."""

    SHUTDOWN = "shutdown"  # hand the job back (pending, attempt counted)
    CANCEL_REQUESTED = "cancel_requested"  # the operator cancelled it
    LEASE_LOST = "lease_lost"  # another node has it now: write nothing


@dataclass
class RunningJob:
    """A job this node is running."""

    claimed: ClaimedJob
    job: Job
    ctx: JobContext
    started: float = field(default_factory=time.monotonic)
    stop_reason: StopReason | None = None

    @property
    def lease_id(self) -> uuid.UUID:
        return self.claimed.lease_id

    def stop(self, reason: StopReason) -> None:
        # The first reason wins, except that a lost lease overrides everything: nothing may be
        # written for a lease that is no longer ours.
        if self.stop_reason is None or reason is StopReason.LEASE_LOST:
            self.stop_reason = reason
        self.ctx.cancelled.set()


class Inflight:
    """Thread-safe registry of running jobs, with a way to wait for it to drain."""

    def __init__(self) -> None:
        self._jobs: dict[uuid.UUID, RunningJob] = {}
        self._cond = threading.Condition()

    def add(self, running: RunningJob) -> None:
        with self._cond:
            self._jobs[running.lease_id] = running

    def remove(self, lease_id: uuid.UUID) -> None:
        with self._cond:
            self._jobs.pop(lease_id, None)
            self._cond.notify_all()

    def get(self, lease_id: uuid.UUID) -> RunningJob | None:
        with self._cond:
            return self._jobs.get(lease_id)

    def snapshot(self) -> list[RunningJob]:
        with self._cond:
            return list(self._jobs.values())

    def leases(self) -> list[uuid.UUID]:
        with self._cond:
            return list(self._jobs)

    def __len__(self) -> int:
        with self._cond:
            return len(self._jobs)

    def __iter__(self) -> Iterator[RunningJob]:
        return iter(self.snapshot())

    def wait_empty(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._jobs:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True


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
    """One asyncio event loop on its own thread, shared by every ``async def`` job of a node."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"{name}-asyncio", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, awaitable: Any, cancelled: threading.Event) -> Any:
        """Run ``awaitable`` as a task on the loop and wait until that task has really ended.

        When ``cancelled`` is set the task is cancelled once, so the job sees
        ``asyncio.CancelledError`` as well as ``ctx.cancelled``. The caller keeps waiting while the
        job's ``except``/``finally`` blocks run: its slot is not freed, and its outcome not
        written, before its code has stopped. The job's own exception (``CancelledError``
        included) is raised here unchanged.
        """
        ended: concurrent.futures.Future[Any] = concurrent.futures.Future()
        tasks: list[asyncio.Future[Any]] = []

        def settle(task: asyncio.Future[Any]) -> None:
            try:
                ended.set_result(task.result())
            except BaseException as exc:  # CancelledError is a BaseException
                ended.set_exception(exc)

        def start() -> None:
            task = asyncio.ensure_future(awaitable)
            task.add_done_callback(settle)
            tasks.append(task)

        def cancel() -> None:  # on the loop, so after start(): tasks[0] exists
            tasks[0].cancel()

        # Callbacks run in the order they were scheduled: start() runs before any cancel below.
        self.loop.call_soon_threadsafe(start)
        cancel_sent = False
        while not ended.done():
            concurrent.futures.wait([ended], timeout=_CANCEL_CHECK_SECONDS)
            if not cancel_sent and cancelled.is_set() and not ended.done():
                cancel_sent = True
                self.loop.call_soon_threadsafe(cancel)
        return ended.result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


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
        call_hook(job.init, ctx, loop)
        call_hook(job.run, ctx, loop)
    except BaseException as exc:
        error = exc
    finally:
        try:
            call_hook(job.shutdown, ctx, loop)
        except BaseException as exc:
            # The original turned teardown errors into job failures (and retries); we log them.
            ctx.logger.error(
                "job %r shutdown hook failed: %r",
                ctx.job_name,
                exc,
                extra={"event": "job.shutdown_hook_failed", "job_key": ctx.job_key},
            )
    return error
