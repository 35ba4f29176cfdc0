"""``AsyncScheduler``: a pg_scheduler node for asyncio applications, on their ``AsyncEngine``.

A thin facade: what a node does is ``pg_scheduler.node.Node``, written once for both runtimes
(same tables, same state machine, same guarantees as ``Scheduler``); this class awaits it on the
asyncio runtime (``pg_scheduler.runtime.aio``): ``async def`` jobs run as tasks on the
application's event loop, synchronous job code on worker threads.

Needs ``pip install 'sqlalchemy-pg-scheduler[asyncio]'`` (SQLAlchemy 2.1 no longer installs
greenlet itself) and an async driver: asyncpg or psycopg 3.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from pg_scheduler import migrations
from pg_scheduler.config import SchedulerConfig
from pg_scheduler.db.records import CancelResult, JobRecord, NodeRecord, OneTimeSpec, RunRecord
from pg_scheduler.errors import ConfigError, PgSchedulerError, SchedulerStateError
from pg_scheduler.jobs import FunctionJob, Job, JobConfig
from pg_scheduler.node.node import Node, make_node_id
from pg_scheduler.runtime.aio import AsyncRuntime
from pg_scheduler.runtime.workers import running_loop
from pg_scheduler.states import JobStatus, JobType

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class AsyncScheduler:
    """A pg_scheduler node for asyncio. ``async with AsyncScheduler(config) as scheduler:``, or
    ``await start()`` and ``await shutdown()``; call it from the loop it was started on."""

    def __init__(self, config: SchedulerConfig) -> None:
        if not isinstance(config, SchedulerConfig):
            raise TypeError(f"AsyncScheduler needs a SchedulerConfig, got {type(config).__name__}")
        if not isinstance(config.engine, AsyncEngine):
            raise PgSchedulerError(
                "AsyncScheduler needs an AsyncEngine (create_async_engine); for a synchronous "
                "Engine use Scheduler"
            )
        if isinstance(config.session_factory, sessionmaker):
            raise ConfigError(
                "session_factory must be an async_sessionmaker for AsyncScheduler, got a "
                "synchronous sessionmaker"
            )
        self.config = config
        self.engine: AsyncEngine = config.engine
        self.names = config.names
        self.node_id = make_node_id(config.node_name)
        self.session_factory: Callable[[], AsyncSession] = (
            config.session_factory or async_sessionmaker(self.engine, expire_on_commit=False)
        )
        self.runtime = AsyncRuntime(
            config,
            self.engine,
            self.session_factory,
            repository=lambda session, direct=False: self.node.repository(session, direct=direct),
            not_installed=lambda: migrations.not_installed(config.names),
            node_id=self.node_id,
        )
        self.node = Node(config, self.runtime, facade="AsyncScheduler", node_id=self.node_id)
        self.log = self.node.log
        self.models = self.node.models
        self.inflight = self.node.inflight
        self.poller = self.node.poller
        self.listener = self.runtime.listener
        self.heartbeat = self.node.heartbeat
        self.maintenance = self.node.maintenance
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop start() ran on

    # ------------------------------------------------------------------ registry
    def register(self, job: Job) -> Job:
        """Make this node able to run jobs named ``job.name`` (enqueues nothing)."""
        return self.node.register(job)

    def registered_names(self) -> list[str]:
        return self.node.registry.names()

    def registered_job(self, name: str) -> Job | None:
        return self.node.registry.get(name)

    async def schedule_job(self, job: Job) -> str:
        """Register ``job`` and schedule it; returns the job key (as ``Scheduler.schedule_job``).
        Once started, it may be awaited on another thread's event loop too: the write runs on
        the scheduler's loop."""
        self.register(job)
        if self.node.declare(job.config):
            return job.name  # a recurring job's key is its name
        return await self._on_own_loop(self.node.schedule_now(job.config))

    async def _on_own_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the loop the scheduler was started on (its engine's connections and
        its tasks live there), also when called from another thread's loop."""
        loop = self._loop
        if loop is None or running_loop() is loop:
            return await coro
        if loop.is_closed() or not loop.is_running():
            coro.close()
            raise SchedulerStateError(
                "the event loop this AsyncScheduler was started on is no longer running"
            )
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def recurring(
        self,
        name: str,
        cron: str,
        *,
        timezone: str = "UTC",
        retries: int = 0,
        misfire: Any = "coalesce",
        misfire_grace: dt.timedelta = dt.timedelta(minutes=1),
    ) -> Callable[[F], F]:
        """Decorator: a plain function ``fn(ctx)`` (sync or async) as a recurring job. A
        declaration, as ``schedule_job``: its row is written by ``start()``. Once started, it is
        written at once: in the background when decorated on the scheduler's loop (a failure is
        logged), else (another thread) before the decorator returns (a failure raises)."""
        config = JobConfig.recurring(
            name, cron, timezone=timezone, retries=retries, misfire=misfire,
            misfire_grace=misfire_grace,
        )  # fmt: skip

        def decorate(fn: F) -> F:
            self.register(FunctionJob(config, fn))
            if not self.node.declare(config):
                self._schedule_soon(config)
            return fn

        return decorate

    def _schedule_soon(self, config: JobConfig) -> None:
        """Write a recurring job's row declared after ``start()``, from a plain (sync) call."""
        loop = self._loop
        if loop is not None and running_loop() is loop:
            self.runtime.spawn(self.node.schedule_now(config), "schedule")
            return
        if loop is None or loop.is_closed() or not loop.is_running():
            raise SchedulerStateError(
                f"cannot schedule {config.name!r}: this AsyncScheduler is {self.node.state} and "
                "its event loop is not running (declare jobs before start(), or await "
                "schedule_job)"
            )
        if running_loop() is not None:
            raise SchedulerStateError(
                f"cannot schedule {config.name!r} from another event loop with the decorator: "
                "await scheduler.schedule_job(job) there instead"
            )
        # Another thread: run the write on the scheduler's loop and wait for it, so that a
        # failure reaches the caller.
        asyncio.run_coroutine_threadsafe(self.node.schedule_now(config), loop).result()

    def one_time(self, name: str, *, retries: int = 0) -> Callable[[F], F]:
        """Decorator: a plain function ``fn(ctx)`` (sync or async) as the handler of one-time jobs
        named ``name``; enqueue runs with ``await scheduler.enqueue(name, params)``."""
        config = JobConfig.one_time(name, retries=retries)

        def decorate(fn: F) -> F:
            self.register(FunctionJob(config, fn))
            return fn

        return decorate

    # ------------------------------------------------------------------ enqueue and inspect
    async def enqueue(
        self,
        name: str,
        params: Any = None,
        *,
        retries: int | None = None,
        run_at: dt.datetime | None = None,
        session: AsyncSession | None = None,
    ) -> str:
        """Enqueue one run of the one-time job ``name`` with JSON ``params``; returns its key. As
        ``Scheduler.enqueue``; ``session`` is the application's ``AsyncSession``."""
        if session is not None:
            spec = OneTimeSpec(name, params, retries, run_at)
            return await session.run_sync(lambda s: self.node.repository(s).insert_one_time(spec))
        return await self.node.enqueue(name, params, retries, run_at)

    async def enqueue_many(
        self,
        name: str,
        params_list: Iterable[Any],
        *,
        retries: int | None = None,
        run_at: dt.datetime | None = None,
        session: AsyncSession | None = None,
    ) -> list[str]:
        """Enqueue one run of ``name`` per element of ``params_list`` in one batched INSERT."""
        if session is not None:
            specs = [OneTimeSpec(name, params, retries, run_at) for params in params_list]
            return await session.run_sync(lambda s: self.node.repository(s).insert_many(specs))
        return await self.node.enqueue_many(name, params_list, retries, run_at)

    async def get_job(self, key: str) -> JobRecord | None:
        """The job row with this key, or None."""
        return await self.node.get_job(key)

    async def list_jobs(
        self,
        *,
        name: str | None = None,
        status: JobStatus | str | None = None,
        job_type: JobType | str | None = None,
        limit: int = 100,
    ) -> list[JobRecord]:
        return await self.node.list_jobs(name=name, status=status, job_type=job_type, limit=limit)

    async def list_runs(self, key: str, *, limit: int = 100) -> list[RunRecord]:
        """The attempts of one job, newest first."""
        return await self.node.list_runs(key, limit=limit)

    async def list_nodes(self, *, live_within: dt.timedelta | None = None) -> list[NodeRecord]:
        return await self.node.list_nodes(live_within=live_within)

    async def cancel_job(self, key: str) -> CancelResult:
        """Cancel a pending job; for a running one, ask its node to stop it (here: at once, by
        cancelling its task; on another node: at that node's next heartbeat)."""
        return await self.node.cancel_job(key)

    async def trigger(self, key: str) -> JobRecord:
        """Run a pending job now (for a recurring job: once, outside its schedule)."""
        return await self.node.trigger(key)

    async def retry_job(self, key: str) -> JobRecord:
        """Re-queue a failed or cancelled job to run now."""
        return await self.node.retry_job(key)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> AsyncScheduler:
        """Check (or, with ``create_schema``, install) the schema, register this node, write the
        rows of decorated recurring jobs, and start claiming. Raises if already started."""
        loop = asyncio.get_running_loop()
        if self.node.state == "new":
            self._loop = loop
        await self.node.start()
        return self

    @property
    def running(self) -> bool:
        return self.node.running

    async def shutdown(self, timeout: dt.timedelta | None = None) -> None:
        """As ``Scheduler.shutdown``; running ``async def`` jobs see their task cancelled."""
        await self.node.shutdown(timeout)

    async def __aenter__(self) -> AsyncScheduler:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def run_pending(self) -> list[RunRecord]:
        """Run what is due, here and now, on a scheduler never started (as
        ``Scheduler.run_pending``): ``async def`` code in the calling loop, synchronous code on a
        worker thread; returns the run records of those attempts, in order."""
        return await self.node.run_pending()


__all__ = ["AsyncScheduler"]
