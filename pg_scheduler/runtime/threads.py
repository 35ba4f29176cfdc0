"""The thread runtime (``Scheduler``): job code on a fixed pool of worker threads, ``async def``
job code on one event loop thread, each service on a thread of its own.

The node's coroutines run here without an event loop. ``drive`` runs one to its end in the
calling thread: every await of this runtime blocks that thread and returns, so the coroutine never
suspends. An attempt is the one exception: its outcome write (``write_outcome``) parks it until
the group holding its outcome is written, and the thread that wrote the group carries it on
(``Later``). So a worker thread whose job has ended goes back to work at once, and no thread is
woken just to learn that its outcome was written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa

from pg_scheduler.config import SchedulerConfig
from pg_scheduler.db.connections import connect
from pg_scheduler.db.records import ClaimedJob, FinishResult, Outcome
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.db.sessions import SyncDatabase
from pg_scheduler.jobs import JobContext
from pg_scheduler.node.attempt import run_hooks
from pg_scheduler.node.running import RunningJob
from pg_scheduler.node.runtime import Stream, group_stream
from pg_scheduler.runtime.listen import Listener
from pg_scheduler.runtime.outcomes import OutcomeWriter
from pg_scheduler.runtime.workers import (
    CallingThreadLoop,
    EventLoopThread,
    WorkerPool,
    call_hook,
    running_loop,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Later:
    """A value another thread provides: awaiting it parks the attempt (see ``launch``) until
    ``settle`` is called, or returns at once when it was settled before."""

    __slots__ = ("_coro", "_lock", "_settled", "_value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settled = False
        self._value: Any = None
        self._coro: Coroutine[Any, Any, None] | None = None

    def settle(self, value: Any) -> None:
        with self._lock:
            self._settled, self._value = True, value
            coro, self._coro = self._coro, None
        if coro is not None:  # parked: this thread carries it on
            launch(coro, value)

    def park(self, coro: Coroutine[Any, Any, None]) -> bool:
        """Leave ``coro`` to whichever thread settles this; False when it is settled already
        (the caller goes on with ``value``)."""
        with self._lock:
            if self._settled:
                return False
            self._coro = coro
            return True

    @property
    def value(self) -> Any:
        return self._value

    def __await__(self) -> Generator[Later, Any, Any]:
        if self._settled:
            return self._value
        return (yield self)


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end in this thread. It must not park (only attempts do)."""
    try:
        parked = coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError(f"a node coroutine parked on {parked!r} outside an attempt")


def launch(coro: Coroutine[Any, Any, None], value: Any = None) -> None:
    """Run ``coro`` in this thread until it parks on a ``Later``; whichever thread settles that
    carries it on. Whatever escapes it is logged: a worker must survive anything."""
    while True:
        try:
            parked = coro.send(value)
        except StopIteration:
            return
        except BaseException:
            logger.exception("worker task failed", extra={"event": "worker.error"})
            return
        if not isinstance(parked, Later):  # pragma: no cover - only Later parks here
            coro.close()
            raise RuntimeError(f"an attempt parked on {parked!r}")
        if parked.park(coro):
            return
        value = parked.value  # settled meanwhile: go on here


class ThreadWakeup:
    """``threading.Event`` as a ``Wakeup`` (``wait`` blocks the driving thread)."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self, timeout: float | None) -> bool:
        return self._event.wait(timeout)


class ThreadRuntime:
    """The ``Runtime`` of ``Scheduler`` (see the module docstring)."""

    def __init__(
        self,
        config: SchedulerConfig,
        engine: sa.Engine,
        database: SyncDatabase,
    ) -> None:
        self.config = config
        self.engine = engine
        self.database = database
        self.log = config.logger or logging.getLogger("pg_scheduler")
        self.listener = Listener(engine, config.names.channel, lambda payload: None, log=self.log)
        self._heartbeat_lock = threading.Lock()
        self._pool: WorkerPool | None = None
        self._code_loop: EventLoopThread | None = None
        self._pending_loop: EventLoopThread | None = None
        self._loop_lock = threading.Lock()
        self.outcomes = OutcomeWriter(self._write_group)

    @property
    def on_schema_missing(self) -> Callable[[], None]:
        return self.database.on_schema_missing

    @on_schema_missing.setter
    def on_schema_missing(self, callback: Callable[[], None]) -> None:
        self.database.on_schema_missing = callback

    def wakeup(self) -> ThreadWakeup:
        return ThreadWakeup()

    # ------------------------------------------------------------------ database
    async def db(self, fn: Callable[[JobRepository], T], stream: Stream = Stream.TRANSACTION) -> T:
        return self.call(fn, stream)

    def call(self, fn: Callable[[JobRepository], T], stream: Stream = Stream.TRANSACTION) -> T:
        """``db`` as a plain call."""
        d = self.database
        if stream is Stream.TRANSACTION:
            with d.transaction() as repo:
                return fn(repo)
        if stream is Stream.HEARTBEAT:
            with self._heartbeat_lock, d.heartbeat() as repo:
                return fn(repo)
        kept = {
            Stream.CLAIM: d.claim_connection,
            Stream.OUTCOME: d.outcome_connection,
            Stream.ENQUEUE: d.enqueue_connection,
        }.get(stream)
        with d.autocommit(kept) as repo:
            return fn(repo)

    async def on_connection(self, fn: Callable[[sa.Connection], None], *, commit: bool) -> None:
        with connect(self.engine) as conn:
            fn(conn)
            if commit and conn.in_transaction():
                conn.commit()

    def _write_group(self, items: Sequence[tuple[ClaimedJob, Outcome]]) -> Sequence[FinishResult]:
        return self.call(lambda repo: repo.finish_many(items), group_stream(items))

    async def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        # Twice the slots: a thread whose job has ended stays with it while its outcome is
        # written (grouped with others'), and its slot already runs the next job meanwhile.
        if self._pool is None:
            self._pool = WorkerPool(2 * self.config.max_concurrent_jobs, "pg_scheduler")

    def serve(self, loop: Coroutine[Any, Any, None], name: str) -> Callable[[], None]:
        def run() -> None:
            try:
                drive(loop)
            except BaseException:  # pragma: no cover - each service catches its own errors
                logger.exception("%s failed", name, extra={"event": "worker.error"})

        threading.Thread(target=run, name=name, daemon=True).start()
        return lambda: None  # a thread cannot be cancelled; its loop sees ``stopping``

    def launch(self, attempt: Coroutine[Any, Any, None], name: str) -> None:
        assert self._pool is not None, "launch() before start()"
        self._pool.submit(lambda: launch(attempt))

    async def run_code(self, running: RunningJob, *, here: bool = False) -> BaseException | None:
        loop: EventLoopThread | None = None
        if running.job.is_async:
            loop = self._loop_here() if here else self._loop()
            if isinstance(loop, CallingThreadLoop):
                running.on_stop = loop.cancel_current  # cancel_job from another thread
        ctx = running.ctx

        async def call(hook: Callable[[JobContext], Any]) -> Any:
            return call_hook(hook, ctx, loop)

        return await run_hooks(running, call)

    def _loop(self) -> EventLoopThread:
        with self._loop_lock:
            if self._code_loop is None or not self._code_loop.alive:
                # A dead loop's runs were handed back; the next async job gets a new one.
                self._code_loop = EventLoopThread("pg_scheduler")
            return self._code_loop

    def _loop_here(self) -> EventLoopThread:
        """``run_pending``'s loop: the calling thread runs it, or, when that thread runs a loop
        already (it cannot run two), one of its own."""
        if self._pending_loop is None:
            if running_loop() is None:
                self._pending_loop = CallingThreadLoop()
            else:
                self._pending_loop = EventLoopThread("pg_scheduler-run_pending")
        return self._pending_loop

    def write_outcome(
        self, claimed: ClaimedJob, outcome: Outcome
    ) -> Awaitable[FinishResult | None]:
        later = Later()
        self.outcomes.submit(claimed, outcome, later.settle)
        return later

    async def hop(self) -> None:
        if self._pool is None:
            return
        later = Later()
        self._pool.submit(lambda: later.settle(None))
        await later

    # ------------------------------------------------------------------ listener and stop
    def start_listener(self, on_notify: Callable[[str], None]) -> None:
        self.listener.on_notify = on_notify
        self.listener.start()

    async def stop_listener(self) -> None:
        self.listener.stop()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
        loop, self._code_loop = self._code_loop, None
        if loop is not None:
            loop.stop()
        self.database.close()

    async def after_pending(self) -> None:
        loop, self._pending_loop = self._pending_loop, None
        if loop is not None:
            loop.stop()
        # A test's scheduler is seldom shut down: hold no pooled connection after the call.
        self.database.close()
