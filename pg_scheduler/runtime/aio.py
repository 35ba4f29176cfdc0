"""The asyncio runtime (``AsyncScheduler``): each attempt and each service is a task on the
application's event loop; ``async def`` job code runs in its attempt's task, synchronous job code
on worker threads (so it can never block the loop).

Every repository call runs through SQLAlchemy's ``run_sync`` on a connection of the application's
``AsyncEngine``: the same ``JobRepository`` as the thread runtime's, so the SQL is written once.
As on threads, the node's hot statements (claims, grouped outcomes, enqueues) run in autocommit on
connections the node keeps, one per stream, with the repository built once per connection.

When a job is asked to stop (shutdown, lost lease, ``cancel_job``) the task running its async code
is cancelled once, so it sees ``CancelledError`` as well as ``ctx.cancelled``; its outcome is
written once its code has really stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import select
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from pg_scheduler.config import SchedulerConfig
from pg_scheduler.db.connections import pool_can_spare
from pg_scheduler.db.outages import translate_error, unavailable
from pg_scheduler.db.records import ClaimedJob, FinishResult, Outcome
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.db.sessions import MakeRepository, application_name
from pg_scheduler.db.timeouts import CLIENT_GRACE_SECONDS, set_local_timeouts
from pg_scheduler.errors import DatabaseUnavailableError, PgSchedulerError, SchemaNotInstalledError
from pg_scheduler.jobs import JobContext, is_async_callable
from pg_scheduler.node.attempt import run_hooks
from pg_scheduler.node.running import RunningJob
from pg_scheduler.node.runtime import Stream, group_stream
from pg_scheduler.runtime.listen import AsyncListener
from pg_scheduler.runtime.outcomes import AsyncOutcomeWriter
from pg_scheduler.runtime.workers import WorkerPool, running_loop

T = TypeVar("T")


_KEPT_STREAMS = (Stream.CLAIM, Stream.OUTCOME, Stream.ENQUEUE)

_timeout: Any = getattr(asyncio, "timeout", None)  # Python 3.11+


class AsyncWakeup:
    """``asyncio.Event`` as a ``Wakeup``; ``set`` from another thread goes through the loop."""

    __slots__ = ("_event", "_loop")

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def set(self) -> None:
        loop = self._loop
        if loop is None or running_loop() is loop:
            self._event.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._event.set)

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self, timeout: float | None) -> bool:
        self._loop = asyncio.get_running_loop()
        if self._event.is_set():
            return True
        try:
            if _timeout is None or timeout is None:  # Python 3.10
                await asyncio.wait_for(self._event.wait(), timeout)
            else:
                async with _timeout(timeout):
                    await self._event.wait()
        except asyncio.TimeoutError:
            return False
        return True


class _Canceller:
    """Cancels the task running an async job's hooks, once, and only while they run (see
    ``AsyncRuntime.run_code``); callable from any thread."""

    __slots__ = ("armed", "delivered", "loop", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.task = asyncio.current_task()
        self.armed = True
        self.delivered = False

    def cancel(self) -> None:
        if running_loop() is self.loop:
            self._cancel()
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        # On the loop: the task is suspended at an await, so the cancellation lands there, in the
        # hooks, while ``armed``; ``disarm`` runs on the loop too, right after the hooks.
        if self.armed and self.task is not None and not self.delivered:
            self.delivered = True
            self.task.cancel()

    def disarm(self) -> None:
        self.armed = False
        uncancel = getattr(self.task, "uncancel", None)  # Python 3.11+
        if self.delivered and uncancel is not None:
            uncancel()  # the job took its cancellation; the attempt goes on to its outcome


class _Kept:
    """One connection kept in autocommit for one stream; used by one task at a time."""

    __slots__ = ("busy", "conn", "idle", "idle_loop", "repo", "used")

    def __init__(self) -> None:
        self.conn: AsyncConnection | None = None
        self.repo: JobRepository | None = None
        self.busy = False
        self.used = 0.0  # the loop's clock at the last use
        self.idle: asyncio.TimerHandle | None = None
        self.idle_loop: asyncio.AbstractEventLoop | None = None  # the loop ``idle`` is on


#: How long a scheduler that was never started (one that only enqueues) keeps a connection idle
#: before it gives it back to the pool: a burst of enqueues keeps it, an idle producer holds
#: nothing (asyncio cannot give a connection back from the garbage collector).
IDLE_RELEASE_SECONDS = 1.0


class AsyncRuntime:
    """The ``Runtime`` of ``AsyncScheduler`` (see the module docstring)."""

    def __init__(
        self,
        config: SchedulerConfig,
        engine: AsyncEngine,
        session_factory: Callable[[], AsyncSession],
        *,
        repository: MakeRepository,
        not_installed: Callable[[], PgSchedulerError],
        node_id: str,
    ) -> None:
        self.config = config
        self.engine = engine
        self.session_factory = session_factory
        self.repository = repository
        self.not_installed = not_installed
        self.on_schema_missing: Callable[[], None] = lambda: None
        self.node_id = node_id  # names the heartbeat's connection
        self.log = config.logger or logging.getLogger("pg_scheduler")
        self.listener = AsyncListener(
            engine, config.names.channel, lambda payload: None, log=self.log
        )
        self._deadline = (
            None
            if config.statement_timeout is None
            else config.statement_timeout.total_seconds() + CLIENT_GRACE_SECONDS
        )
        # As on threads, only where the driver shows its socket, so a connection the server
        # closed is seen before it is used (psycopg); others take a pooled connection each time.
        self._keep = engine.dialect.driver == "psycopg" and pool_can_spare(engine.sync_engine.pool)
        self._kept = {stream: _Kept() for stream in _KEPT_STREAMS}
        self._started = False
        self._heartbeat: AsyncConnection | None = None
        self._heartbeat_lock: asyncio.Lock | None = None
        self._background: set[asyncio.Future[Any]] = set()
        self._attempts: set[asyncio.Future[Any]] = set()
        self._pool: WorkerPool | None = None  # started on the first synchronous hook
        self.outcomes = AsyncOutcomeWriter(self._write_group)

    def wakeup(self) -> AsyncWakeup:
        return AsyncWakeup()

    # ------------------------------------------------------------------ database
    async def db(self, fn: Callable[[JobRepository], T], stream: Stream = Stream.TRANSACTION) -> T:
        """Bounded like the thread runtime's: ``statement_timeout`` on the server for a
        transaction, and a client-side deadline a second later (a black-holed network never
        answers); the call is then cancelled and SQLAlchemy discards the connection."""
        try:
            if self._deadline is None:
                return await self._db(fn, stream)
            if _timeout is None:  # Python 3.10
                return await asyncio.wait_for(self._db(fn, stream), self._deadline)
            async with _timeout(self._deadline):  # no task of its own, unlike wait_for
                return await self._db(fn, stream)
        except asyncio.TimeoutError as exc:
            self.log.warning(
                "a transaction took longer than %.1fs; it was abandoned",
                self._deadline,
                extra={"event": "db.timeout", "what": "a transaction"},
            )
            raise DatabaseUnavailableError(
                f"database unavailable ({self.engine.url.render_as_string(hide_password=True)}):"
                f" no answer within {self._deadline:.1f}s"
            ) from exc
        except sa.exc.DBAPIError as exc:
            error = translate_error(exc, self.engine.url, self.not_installed)
            if error is None:
                raise
            if isinstance(error, SchemaNotInstalledError):
                self.on_schema_missing()
            raise error from exc
        except OSError as exc:
            raise unavailable(exc, self.engine.url) from exc

    async def _db(self, fn: Callable[[JobRepository], T], stream: Stream) -> T:
        if stream in _KEPT_STREAMS:
            kept = self._kept[stream]
            if self._keep and not kept.busy:
                return await self._on_kept(kept, fn)
            stream = Stream.AUTOCOMMIT
        if stream is Stream.AUTOCOMMIT:
            async with self.engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                return await conn.run_sync(lambda sync: fn(self.repository(sync, direct=True)))
        if stream is Stream.HEARTBEAT:
            return await self._on_heartbeat(fn)

        session = self.session_factory()
        async with session, session.begin():
            return await session.run_sync(self._bounded, fn)

    def _bounded(self, session: Any, fn: Callable[[JobRepository], T]) -> T:
        """``fn`` in a transaction bounded by ``statement_timeout`` (inside ``run_sync``)."""
        set_local_timeouts(session, self.config)
        return fn(self.repository(session))

    async def _on_kept(self, kept: _Kept, fn: Callable[[JobRepository], T]) -> T:
        kept.busy = True
        try:
            conn = kept.conn
            if conn is None or conn.closed or conn.invalidated or not _idle_and_sound(conn):
                await self._drop(kept)
                conn = kept.conn = await self.engine.connect()
                await conn.execution_options(isolation_level="AUTOCOMMIT")

            def call(sync: sa.Connection) -> T:
                if kept.repo is None or kept.repo.session is not sync:
                    kept.repo = self.repository(sync, direct=True)
                return fn(kept.repo)

            try:
                result = await conn.run_sync(call)
            except BaseException:
                await self._drop(kept)
                raise
            if not self._started:
                self._release_when_idle(kept)
            return result
        finally:
            kept.busy = False

    def _release_when_idle(self, kept: _Kept) -> None:
        loop = asyncio.get_running_loop()
        kept.used = loop.time()
        # A producer may enqueue from one ``asyncio.run`` after another: a check left on a loop
        # that has ended never runs, so the new loop gets one of its own.
        if kept.idle is None or kept.idle_loop is not loop:
            kept.idle, kept.idle_loop = (
                loop.call_later(IDLE_RELEASE_SECONDS, self._idle_check, kept),
                loop,
            )

    def _idle_check(self, kept: _Kept) -> None:
        loop = asyncio.get_running_loop()
        left = kept.used + IDLE_RELEASE_SECONDS - loop.time()
        if kept.busy or left > 0:
            kept.idle = loop.call_later(max(left, 0.01), self._idle_check, kept)
            return
        kept.idle = None
        conn, kept.conn, kept.repo = kept.conn, None, None
        if conn is not None:
            self.spawn(conn.close(), "give back an idle connection")

    async def _drop(self, kept: _Kept) -> None:
        if kept.idle is not None:
            kept.idle.cancel()
            kept.idle = None
        conn, kept.conn, kept.repo = kept.conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
                await conn.close()

    async def _on_heartbeat(self, fn: Callable[[JobRepository], T]) -> T:
        if self._heartbeat_lock is None:
            self._heartbeat_lock = asyncio.Lock()
        async with self._heartbeat_lock:
            try:
                conn = self._heartbeat
                if conn is None or conn.closed or conn.invalidated:
                    conn = self._heartbeat = await self.engine.connect()
                    name = application_name(self.node_id, "heartbeat")
                    await conn.execute(
                        sa.select(sa.func.set_config("application_name", name, False))
                    )
                    await conn.commit()

                async with AsyncSession(bind=conn) as session, session.begin():
                    return await session.run_sync(self._bounded, fn)
            except BaseException:
                conn, self._heartbeat = self._heartbeat, None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.invalidate()
                        await conn.close()
                raise

    async def on_connection(self, fn: Callable[[sa.Connection], None], *, commit: bool) -> None:
        async with self.engine.connect() as conn:
            await conn.run_sync(fn)
            if commit:
                await conn.commit()

    async def _write_group(
        self, items: Sequence[tuple[ClaimedJob, Outcome]]
    ) -> Sequence[FinishResult]:
        return await self.db(lambda repo: repo.finish_many(items), group_stream(items))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        # Tasks need nothing started (worker threads start with the first sync hook); from now on
        # kept connections stay until ``close``.
        self._started = True

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str = "task") -> None:
        """Run ``coro`` in the background; a failure is logged."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)

        def done(t: asyncio.Future[Any]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.log.error(
                    "background %s failed: %r",
                    what,
                    t.exception(),
                    extra={"event": "scheduler.background_failed"},
                )

        task.add_done_callback(done)

    def serve(self, loop: Coroutine[Any, Any, None], name: str) -> Callable[[], None]:
        task = asyncio.create_task(loop, name=name)

        def cancel() -> None:
            task.cancel()

        return cancel

    def launch(self, attempt: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(attempt, name=name)
        self._attempts.add(task)  # held: the loop keeps only weak references to tasks
        task.add_done_callback(self._attempts.discard)

    async def run_code(self, running: RunningJob, *, here: bool = False) -> BaseException | None:
        """Run the attempt's hooks in this task (``here``: a task of their own, not the caller's).
        While the hooks of an async job run, ``running.stop()`` cancels that task once, so the job
        sees ``CancelledError``; never afterwards, so the outcome write is not cut short."""
        if running.job.is_async and running.stop_reason is not None:
            return asyncio.CancelledError()  # asked to stop before its code started
        if here:
            task = asyncio.create_task(self.run_code(running))
            await asyncio.wait({task})
            return task.result()
        if not running.job.is_async:
            return await self._hooks(running)  # a thread cannot be cancelled: ctx.cancelled only
        canceller = _Canceller(asyncio.get_running_loop())
        running.on_stop = canceller.cancel
        try:
            return await self._hooks(running)
        finally:
            canceller.disarm()

    async def _hooks(self, running: RunningJob) -> BaseException | None:
        ctx = running.ctx
        return await run_hooks(running, lambda hook: self._call(hook, ctx))

    async def _call(self, hook: Callable[[JobContext], Any], ctx: JobContext) -> Any:
        if is_async_callable(hook):
            return await hook(ctx)
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
            self._pool = WorkerPool(self.config.max_concurrent_jobs, "pg_scheduler")
        self._pool.submit(work)
        # A thread cannot be interrupted: a cancellation of this task waits for the code to
        # return (it sees ctx.cancelled), so the attempt never ends while its code still runs.
        while True:
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                if future.done():
                    return future.result()

    def write_outcome(
        self, claimed: ClaimedJob, outcome: Outcome
    ) -> Awaitable[FinishResult | None]:
        return self.outcomes.write(claimed, outcome)

    async def hop(self) -> None:
        pass  # the group writer is a task of its own: nothing waits on this one

    # ------------------------------------------------------------------ listener and stop
    def start_listener(self, on_notify: Callable[[str], None]) -> None:
        self.listener.on_notify = on_notify
        self.listener.start()

    async def stop_listener(self) -> None:
        await self.listener.stop()

    async def close(self) -> None:
        self._started = False
        for task in list(self._background):
            task.cancel()
        self._stop_pool()
        for kept in self._kept.values():
            await self._drop(kept)
        conn, self._heartbeat = self._heartbeat, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def after_pending(self) -> None:
        self._stop_pool()
        for kept in self._kept.values():
            await self._drop(kept)

    def _stop_pool(self) -> None:
        pool, self._pool = self._pool, None  # a later synchronous hook starts a new one
        if pool is not None:
            pool.stop()


def _idle_and_sound(conn: AsyncConnection) -> bool:
    """Whether a kept connection is still usable, without a round trip (see
    ``connections.idle_and_sound``)."""
    try:
        driver: Any = conn.sync_connection.connection.driver_connection  # type: ignore[union-attr]
        fileno = driver.fileno()
    except Exception:
        return False
    try:
        readable, _, _ = select.select([fileno], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
