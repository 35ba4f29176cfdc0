"""``AsyncScheduler``: a pg_scheduler node for asyncio applications, on their ``AsyncEngine``.

Same tables, same state machine, same guarantees as ``Scheduler``. Every state transition is a
``JobRepository`` method run through ``AsyncSession.run_sync`` (one implementation for both worlds),
and every decision about a claim, a heartbeat, a maintenance pass or an attempt's outcome is the
function the threaded scheduler calls too. What differs is only how this node waits and runs code:

- the poller, heartbeat (on a connection of its own), maintenance and listener are asyncio tasks
  (``aio_services``, ``aio_notify``);
- ``async def`` jobs run as tasks on the application's event loop; when a job is asked to stop
  (shutdown, lost lease, ``cancel_job``) its task is cancelled, so it sees ``CancelledError`` as
  well as ``ctx.cancelled``, and its outcome is written once its code has really stopped;
- synchronous job code runs on worker threads, so it can never block the loop.

Needs ``pip install 'sqlalchemy-pg-scheduler[asyncio]'`` (SQLAlchemy 2.1 no longer installs
greenlet itself) and an async driver: asyncpg or psycopg 3.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from functools import partial
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from . import migrations
from .config import SchedulerConfig
from .db.records import (
    CancelResult,
    ClaimedJob,
    FinishResult,
    JobRecord,
    NodeRecord,
    Outcome,
    RunRecord,
)
from .db.repository import JobRepository, new_key, shares_one_statement
from .db.timeouts import CLIENT_GRACE_SECONDS, set_local_timeouts
from .errors import (
    ConfigError,
    DatabaseUnavailableError,
    PgSchedulerError,
    SchedulerStateError,
    SchemaNotInstalledError,
)
from .jobs import FunctionJob, Job, JobConfig
from .models import Models, build_models
from .node.registry import Claimable, JobRegistry, schedule
from .runtime.aio_listen import AsyncListener
from .runtime.aio_services import AsyncHeartbeat, AsyncMaintenance, AsyncPoller
from .runtime.aio_workers import AsyncWorkers
from .runtime.workers import (
    Inflight,
    RunningJob,
    StopReason,
    attempt_outcome,
    misfire_outcome,
    new_context,
    report_outcome,
    running_loop,
)
from .scheduler import (
    DatabaseErrors,
    OutageRetry,
    is_duplicate_key,
    make_node_id,
    translate_error,
    unavailable,
)
from .states import JobStatus, JobType, RunStatus

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: Errors of a database write that may be retried (asyncpg raises plain OSError on connect).
_RETRYABLE = (DatabaseUnavailableError, sa.exc.DBAPIError, OSError)


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
        self.models: Models = build_models(self.names)
        self.log: logging.Logger | logging.LoggerAdapter[Any] = config.logger or logging.getLogger(
            "pg_scheduler"
        )
        self.node_name = config.node_name or socket.gethostname()
        self.node_id = make_node_id(self.node_name)
        self.session_factory: Callable[[], AsyncSession] = (
            config.session_factory or async_sessionmaker(self.engine, expire_on_commit=False)
        )
        self.inflight = Inflight()
        self._registry = JobRegistry()
        # Recurring jobs declared before start(): start() writes their rows (see schedule_job).
        # The lock makes "record it, or see that start() is done and write it" atomic for
        # declarations made from other threads.
        self._declared: list[JobConfig] = []
        self._declare_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop start() ran on
        self._background: set[asyncio.Future[Any]] = set()
        self._state = "new"  # new -> starting -> running -> stopping -> stopped
        self._stopped = asyncio.Event()
        self._schema_ok = False
        self.db_errors = DatabaseErrors(self.log)
        self._deadline = (
            None
            if config.statement_timeout is None
            else config.statement_timeout.total_seconds() + CLIENT_GRACE_SECONDS
        )
        self.workers = AsyncWorkers(self)
        self.poller = AsyncPoller(self)
        self.heartbeat = AsyncHeartbeat(self)
        self.maintenance = AsyncMaintenance(self)
        self.listener = AsyncListener(
            self.engine, self.names.channel, self._on_notify, log=self.log
        )

    # ------------------------------------------------------------------ database access
    async def transaction(
        self,
        fn: Callable[[JobRepository], T],
        *,
        connection: AsyncConnection | None = None,
        autocommit: bool = False,
    ) -> T:
        """Run ``fn(repository)`` through ``AsyncSession.run_sync``: in a new transaction
        (committed on success), on ``connection`` if given, else from the session factory; or,
        with ``autocommit``, on a pooled connection where each statement commits by itself (only
        for one atomic statement, or reads: a claim, an enqueue; no BEGIN/COMMIT round trips).

        Bounded like the threaded scheduler's: ``statement_timeout`` on the server, for this
        transaction only, and a client-side deadline a second later (a black-holed network never
        answers); the task is then cancelled and SQLAlchemy discards the connection."""

        def work(sync_session: Session) -> T:
            set_local_timeouts(sync_session, self.config)
            return fn(self.repository(sync_session))

        async def run() -> T:
            if autocommit:
                # On the connection itself: an ORM session around one statement cost more than
                # the statement's round trip.
                async with self.engine.connect() as conn:
                    await conn.execution_options(isolation_level="AUTOCOMMIT")
                    return await conn.run_sync(lambda sync: fn(self.repository(sync, direct=True)))
            session = (
                self.session_factory() if connection is None else AsyncSession(bind=connection)
            )
            async with session, session.begin():
                return await session.run_sync(work)

        try:
            return await asyncio.wait_for(run(), self._deadline)
        except asyncio.TimeoutError as exc:
            self.log.warning(
                "a transaction took longer than %.1fs; it was abandoned",
                self._deadline,
                extra={"event": "db.timeout", "what": "a transaction"},
            )
            raise DatabaseUnavailableError(
                f"database unavailable ({_url(self.engine)}): no answer within "
                f"{self._deadline:.1f}s"
            ) from exc
        except sa.exc.DBAPIError as exc:
            error = translate_error(exc, self.names, self.engine.url)
            if error is None:
                raise
            if isinstance(error, SchemaNotInstalledError):
                self._schema_ok = False
            raise error from exc
        except OSError as exc:
            raise unavailable(exc, self.engine.url) from exc

    def repository(
        self, session: Session | sa.Connection, *, direct: bool = False
    ) -> JobRepository:
        """A repository on a synchronous ``session`` or connection (inside ``run_sync``; the
        caller owns its transaction). ``direct``: ``session`` is one of the scheduler's own
        autocommit connections (see ``pg_scheduler.direct``)."""
        return JobRepository(
            session,
            self.models,
            backoff=self.config.retry_backoff,
            max_params_bytes=self.config.max_params_bytes,
            direct=direct,
        )

    def database_error(self, service: str, exc: BaseException, *, retry_in: float) -> None:
        """A background service could not reach the database; it retries by itself."""
        self.db_errors.report(service, exc, retry_in=retry_in)

    def seconds_since_database_error(self) -> float:
        return self.db_errors.seconds_since_last()

    async def _ensure_schema(self) -> None:
        if self._schema_ok:
            return
        try:
            async with self.engine.connect() as conn:
                if self.config.create_schema:
                    await conn.run_sync(lambda c: migrations.upgrade(c, names=self.names))
                    await conn.commit()
                else:
                    await conn.run_sync(lambda c: migrations.check_schema(c, self.names))
        except (sa.exc.OperationalError, OSError) as exc:
            raise unavailable(exc, self.engine.url) from exc
        self._schema_ok = True

    # ------------------------------------------------------------------ registry
    def register(self, job: Job) -> Job:
        """Make this node able to run jobs named ``job.name`` (enqueues nothing)."""
        job = self._registry.add(job)
        if self._state == "running":
            self.poller.wake()
        return job

    def registered_names(self) -> list[str]:
        return self._registry.names()

    def claimable(self) -> Claimable:
        """The names this node claims, with their handlers' retries (see ``JobRepository.claim``)."""
        return self._registry.claimable()

    def registered_job(self, name: str) -> Job | None:
        return self._registry.get(name)

    async def schedule_job(self, job: Job) -> str:
        """Register ``job`` and schedule it. Returns the job key.

        A recurring job is a declaration: before ``start()`` it is only recorded (no database
        needed), and ``start()`` writes its row; once started, its row is created or updated at
        once. A one-time job is enqueued at once with its config's params. Once started, it may
        be awaited on another thread's event loop too: the write runs on the scheduler's loop.
        """
        self.register(job)
        if self._declare(job.config):
            return job.name  # a recurring job's key is its name
        return await self._on_own_loop(self._schedule_now(job.config))

    def _declare(self, config: JobConfig) -> bool:
        """Record a recurring job's declaration for ``start()``; False when there is nothing to
        record (a one-time job) or ``start()`` has written its declarations already."""
        if config.job_type is not JobType.RECURRING:
            return False
        with self._declare_lock:
            if self._state in ("new", "starting"):
                self._declared.append(config)
                return True
        return False

    async def _write_declarations(self) -> None:
        """Write the rows of the recurring jobs declared so far, and of those declared meanwhile
        (from this loop or another thread)."""
        while True:
            with self._declare_lock:
                if not self._declared:
                    return
                config = self._declared[0]
            await self.transaction(partial(schedule, config=config))
            with self._declare_lock:
                self._declared.pop(0)

    async def _schedule_now(self, config: JobConfig) -> str:
        await self._ensure_schema()
        return await self.transaction(lambda repo: schedule(repo, config))

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
            name,
            cron,
            timezone=timezone,
            retries=retries,
            misfire=misfire,
            misfire_grace=misfire_grace,
        )

        def decorate(fn: F) -> F:
            self.register(FunctionJob(config, fn))
            if not self._declare(config):
                self._schedule_soon(config)
            return fn

        return decorate

    def _schedule_soon(self, config: JobConfig) -> None:
        """Write a recurring job's row declared after ``start()``, from a plain (sync) call."""
        loop = self._loop
        if loop is not None and running_loop() is loop:
            self.spawn(self._schedule_now(config), "schedule")
            return
        if loop is None or loop.is_closed() or not loop.is_running():
            raise SchedulerStateError(
                f"cannot schedule {config.name!r}: this AsyncScheduler is {self._state} and its "
                "event loop is not running (declare jobs before start(), or await schedule_job)"
            )
        if running_loop() is not None:
            raise SchedulerStateError(
                f"cannot schedule {config.name!r} from another event loop with the decorator: "
                "await scheduler.schedule_job(job) there instead"
            )
        # Another thread: run the write on the scheduler's loop and wait for it, so that a
        # failure reaches the caller.
        asyncio.run_coroutine_threadsafe(self._schedule_now(config), loop).result()

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
        """Enqueue one run of the one-time job ``name`` with JSON ``params``; returns its key.

        With ``session`` (the application's ``AsyncSession``), the insert joins that session's
        transaction: the job exists if and only if the caller commits. ``retries`` left unsaid
        (None) is resolved from the handler by the node that claims the job; an explicit value
        wins. Nodes are woken by NOTIFY when the transaction commits.
        """
        spec = self._registry.one_time_spec(name, params, retries, run_at)
        if session is not None:
            return await session.run_sync(lambda s: self.repository(s).insert_one_time(spec))
        await self._ensure_schema()
        key = new_key(spec.name)
        await self._insert(lambda repo: [repo.insert_one_time(spec, key=key)], [key])
        return key

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
        specs = [self._registry.one_time_spec(name, p, retries, run_at) for p in params_list]
        if session is not None:
            return await session.run_sync(lambda s: self.repository(s).insert_many(specs))
        await self._ensure_schema()
        keys = [new_key(spec.name) for spec in specs]
        return await self._insert(lambda repo: repo.insert_many(specs, keys=keys), keys)

    async def _insert(
        self, insert: Callable[[JobRepository], list[str]], keys: list[str]
    ) -> list[str]:
        """An enqueue's one statement in autocommit, sent once more with the same keys if the
        connection turned out dead (see ``Scheduler._insert``: exactly once either way)."""
        try:
            return await self.transaction(insert, autocommit=True)
        except (DatabaseUnavailableError, sa.exc.InterfaceError) as exc:
            self.log.debug(
                "enqueue failed (%s); sending it again on a new connection",
                exc,
                extra={"event": "job.enqueue_retried"},
            )
        try:
            return await self.transaction(insert, autocommit=True)
        except sa.exc.IntegrityError as exc:
            if not is_duplicate_key(exc, self.names):
                raise
            return keys

    async def get_job(self, key: str) -> JobRecord | None:
        """The job row with this key, or None."""
        return await self.transaction(lambda repo: repo.get(key))

    async def list_jobs(
        self,
        *,
        name: str | None = None,
        status: JobStatus | str | None = None,
        job_type: JobType | str | None = None,
        limit: int = 100,
    ) -> list[JobRecord]:
        return await self.transaction(
            lambda repo: repo.list_jobs(name=name, status=status, job_type=job_type, limit=limit)
        )

    async def list_runs(self, key: str, *, limit: int = 100) -> list[RunRecord]:
        """The attempts of one job, newest first."""
        return await self.transaction(lambda repo: repo.list_runs(key, limit=limit))

    async def list_nodes(self, *, live_within: dt.timedelta | None = None) -> list[NodeRecord]:
        return await self.transaction(lambda repo: repo.list_nodes(live_within=live_within))

    async def cancel_job(self, key: str) -> CancelResult:
        """Cancel a pending job; for a running one, ask its node to stop it (here: at once, by
        cancelling its task; on another node: at that node's next heartbeat)."""
        result = await self.transaction(lambda repo: repo.cancel(key))
        if result.requested:
            for running in self.inflight:
                if running.claimed.key == key:
                    running.stop(StopReason.CANCEL_JOB)
        return result

    async def trigger(self, key: str) -> JobRecord:
        """Run a pending job now (for a recurring job: once, outside its schedule)."""
        return await self.transaction(lambda repo: repo.trigger(key))

    async def retry_job(self, key: str) -> JobRecord:
        """Re-queue a failed or cancelled job to run now."""
        return await self.transaction(lambda repo: repo.retry_now(key))

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> AsyncScheduler:
        """Check (or, with ``create_schema``, install) the schema, register this node, write the
        rows of decorated recurring jobs, and start claiming. Raises if already started."""
        if self._state in ("starting", "running"):
            raise SchedulerStateError("the scheduler is already running")
        if self._state != "new":
            raise SchedulerStateError(
                "this scheduler was shut down; create a new AsyncScheduler to start again"
            )
        with self._declare_lock:
            self._state = "starting"
        self._loop = asyncio.get_running_loop()
        try:
            await self._ensure_schema()
            await self._write_declarations()
            await self.transaction(self.register_node)
        except BaseException:
            with self._declare_lock:
                self._state = "new"
            raise
        with self._declare_lock:
            if self._declared:  # declared after the loop above ended: write them in the background
                for config in self._declared:
                    self.spawn(self._schedule_now(config), "schedule")
                self._declared.clear()
            self._state = "running"
        if self.config.listen:
            self.listener.start()
        self.heartbeat.start()
        self.maintenance.start()
        self.poller.start(immediately=self.config.run_immediately)
        self.log.info(
            "node %s started; job names registered: %d",
            self.node_id,
            len(self._registry),
            extra={"event": "node.started", "node_id": self.node_id},
        )
        return self

    def register_node(self, repo: JobRepository) -> None:
        repo.register_node(
            self.node_id, self.node_name, socket.gethostname(), os.getpid(), self.registered_names()
        )

    @property
    def running(self) -> bool:
        return self._state == "running"

    async def shutdown(self, timeout: dt.timedelta | None = None) -> None:
        """Stop claiming, ask running jobs to stop (async jobs' tasks are cancelled), wait up to
        ``shutdown_timeout`` for them, and hand back the ones still running. Records every outcome
        that arrives in time. When it returns, no row is ``running`` under this node's leases.
        Calling it twice is harmless."""
        if self._state == "stopping":
            await self._stopped.wait()
            return
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopping"
        wait = (timeout if timeout is not None else self.config.shutdown_timeout).total_seconds()
        self.log.info("node %s stopping", self.node_id, extra={"event": "node.stopping"})
        try:
            await self.poller.stop()
            await self.listener.stop()
            for running in self.inflight:
                running.stop(StopReason.SHUTDOWN)
            tasks = set(self.workers.tasks.values())
            if tasks:
                await asyncio.wait(tasks, timeout=wait)
            if len(self.inflight):
                await self._release_unfinished()
            await self.heartbeat.stop()
            await self.maintenance.stop()
            for task in list(self._background):
                task.cancel()
            try:
                await self.transaction(lambda repo: repo.deregister_node(self.node_id))
            except (PgSchedulerError, *_RETRYABLE) as exc:
                self.log.warning(
                    "could not deregister node: %s", exc, extra={"event": "node.deregister_failed"}
                )
            self.workers.stop()
        finally:
            self._state = "stopped"
            self._stopped.set()
        self.log.info("node %s stopped", self.node_id, extra={"event": "node.stopped"})

    async def _release_unfinished(self) -> None:
        leftovers = self.inflight.snapshot()
        for running in leftovers:
            # From now on this node no longer owns them: a late outcome must not be written.
            running.stop(StopReason.LEASE_LOST)
        leases = [r.lease_id for r in leftovers]
        result = await self.retry_database(
            "release", lambda repo: repo.release(self.node_id, leases)
        )
        if result is None:
            self.log.error(
                "could not hand back the running jobs (%d); their leases will expire and "
                "another node will rescue them",
                len(leases),
                extra={"event": "job.release_failed"},
            )
            return
        self.log.warning(
            "shutdown timeout: running jobs handed back: %d",
            result.count,
            extra={"event": "job.released", "keys": list(result.pending + result.failed)},
        )

    async def __aenter__(self) -> AsyncScheduler:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def run_pending(self) -> list[RunRecord]:
        """Run what is due, here and now: for tests and scripts, on a scheduler never started.

        As ``Scheduler.run_pending``: writes the recurring jobs declared so far, then claims due
        jobs registered here one at a time and runs each, ``async def`` code in the calling
        loop (synchronous code on a worker thread, as a started node runs it), until none is
        due; writes each outcome and returns the run records of those attempts, in order. On a
        started scheduler it raises ``SchedulerStateError``.
        """
        if self._state != "new":
            raise SchedulerStateError(
                f"run_pending() is for a scheduler that is not started (this one is "
                f"{self._state}): a started node claims and runs due jobs by itself"
            )
        await self._ensure_schema()
        await self._write_declarations()
        ran: list[RunRecord] = []
        try:
            while True:
                names, retries = self.claimable()
                if not names:
                    break
                claimed = await self.transaction(
                    partial(_claim_one, node_id=self.node_id, names=names, retries=retries),
                    autocommit=True,
                )
                if not claimed:
                    break
                run = await self._run_here(claimed[0])
                if run is not None:
                    ran.append(run)
        finally:
            self.workers.stop()  # its threads, if synchronous code ran
        return ran

    async def _run_here(self, claimed: ClaimedJob) -> RunRecord | None:
        """One attempt of ``run_pending``, in the calling loop; its outcome written."""
        job = self.registered_job(claimed.name)
        assert job is not None  # only registered names are claimed
        running = RunningJob(claimed, job, new_context(claimed, self.node_id, self.log))
        self.inflight.add(running)
        try:
            outcome = misfire_outcome(claimed)
            if outcome is None:
                started = time.monotonic()
                error = await self.workers.execute(running)
                duration_ms = int((time.monotonic() - started) * 1000)
                outcome = attempt_outcome(running, error, duration_ms)
            if outcome.status is RunStatus.RELEASED:  # handed back (see ``attempt_outcome``)
                await self.transaction(
                    lambda repo: repo.release(
                        self.node_id, [claimed.lease_id], reason=outcome.error
                    )
                )
            else:
                (result,) = await self.write_outcomes([(claimed, outcome)])
                report_outcome(self.log, claimed, outcome, result)
        finally:
            self.inflight.remove(claimed.lease_id)
        return await self.transaction(lambda repo: repo.run_of_lease(claimed.lease_id))

    def spawn(self, coro: Any, what: str = "task") -> None:
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

    # ------------------------------------------------------------------ running jobs
    def _on_notify(self, payload: str) -> None:
        self.poller.wake()

    def dispatch(self, claimed: ClaimedJob) -> None:
        """Start a claimed job (called by the poller after the claim commits)."""
        self.workers.dispatch(claimed)

    async def write_outcomes(
        self, items: Sequence[tuple[ClaimedJob, Outcome]]
    ) -> Sequence[FinishResult]:
        """Record a group of outcomes (``JobRepository.finish_many``): in autocommit when it is
        one statement (completed one-time runs), else in one transaction."""
        simple = all(shares_one_statement(*item) for item in items)
        return await self.transaction(lambda repo: repo.finish_many(items), autocommit=simple)

    async def retry_database(
        self, what: str, fn: Callable[[JobRepository], T], *, holder: RunningJob | None = None
    ) -> T | None:
        """Run ``fn`` in a transaction until it succeeds, or None once ``OutageRetry`` gives up
        (an outcome write, with ``holder``, is retried for as long as the lease holds)."""
        retry = OutageRetry(self.config.no_heartbeat_timeout, holder)
        while True:
            try:
                return await self.transaction(fn)
            except _RETRYABLE as exc:
                delay = retry.next_delay(exc)
                if delay is None:
                    return None
                self.database_error(what, exc, retry_in=delay)
                await asyncio.sleep(delay)


def _claim_one(
    repo: JobRepository, *, node_id: str, names: list[str], retries: list[int]
) -> list[ClaimedJob]:
    return repo.claim(node_id, names, 1, retries=retries)


def _url(engine: AsyncEngine) -> str:
    return engine.url.render_as_string(hide_password=True)


__all__ = ["AsyncScheduler"]
