"""Where the thread runtime runs job code: a fixed pool of daemon worker threads, and one event
loop thread shared by every ``async def`` job of a node (``run_pending`` runs async code on a loop
of the calling thread instead).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from pg_scheduler.jobs import JobContext
from pg_scheduler.node.running import EventLoopDied

logger = logging.getLogger(__name__)

# How often a worker waiting for an async job checks whether the job was asked to stop.
_CANCEL_CHECK_SECONDS = 0.05


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


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


class CallingThreadLoop(EventLoopThread):
    """An event loop that the calling thread runs itself, for ``run_pending``: ``async def`` job
    code runs in the caller's thread, one hook at a time, on one loop for the whole call."""

    def __init__(self) -> None:  # no thread of its own
        self.loop = asyncio.new_event_loop()
        self._task: asyncio.Future[Any] | None = None

    def run(self, awaitable: Any, cancelled: threading.Event) -> Any:
        task = self._task = asyncio.ensure_future(awaitable, loop=self.loop)
        if cancelled.is_set():
            task.cancel()
        try:
            return self.loop.run_until_complete(task)
        except BaseException:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: asyncio must not warn that nobody did
            raise
        finally:
            self._task = None

    def cancel_current(self) -> None:
        """Cancel the hook running now (callable from any thread: ``cancel_job``)."""
        task = self._task
        if task is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(task.cancel)

    def stop(self) -> None:
        try:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()
