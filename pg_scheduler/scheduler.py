"""``Scheduler``: one node. Composes the poller, workers, heartbeat, maintenance and listener.

The scheduler never writes SQL: every statement is a ``JobRepository`` method called inside a
short transaction of the application's session factory. No transaction stays open while job code
runs: claim, commit, run, then write the outcome in a new transaction, fenced by the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from . import migrations
from .config import SchedulerConfig
from .db.connections import (
    KeptConnection,
    connect,
    lost_connection,
    past_dead_connections,
    switch_to_autocommit,
)
from .db.records import (
    CancelResult,
    ClaimedJob,
    FinishResult,
    JobRecord,
    NodeRecord,
    OneTimeSpec,
    Outcome,
    RunRecord,
)
from .db.repository import JobRepository, new_key, shares_one_statement
from .db.timeouts import Deadlines, set_local_timeouts
from .errors import (
    DatabaseUnavailableError,
    PgSchedulerError,
    SchedulerStateError,
    SchemaNotInstalledError,
)
from .jobs import FunctionJob, Job, JobConfig
from .models import Models, build_models
from .naming import Names
from .node.heartbeat import Heartbeat
from .node.maintenance import Maintenance
from .node.poller import Poller
from .node.registry import Claimable, JobRegistry, schedule
from .runtime.listen import Listener
from .runtime.outcomes import OutcomeWriter
from .runtime.workers import (
    EventLoopThread,
    Inflight,
    RunningJob,
    StopReason,
    WorkerPool,
    attempt_outcome,
    execute,
    misfire_outcome,
    new_context,
    report_dropped,
    report_outcome,
    running_loop,
)
from .states import JobStatus, JobType, RunStatus

F = TypeVar("F", bound=Callable[..., Any])

_UNDEFINED_TABLE = "42P01"
_UNIQUE_VIOLATION = "23505"

#: At most one "database unavailable" line per service per this many seconds.
DB_ERROR_LOG_SECONDS = 10.0


def make_node_id(node_name: str | None = None) -> str:
    """``host:pid:random``: unique even for processes sharing a host name (or a node_name)."""
    return f"{node_name or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Scheduler:
    """A pg_scheduler node. Use it as a context manager, or call ``start()`` and ``shutdown()``."""

    def __init__(self, config: SchedulerConfig) -> None:
        if not isinstance(config, SchedulerConfig):
            raise TypeError(f"Scheduler needs a SchedulerConfig, got {type(config).__name__}")
        if not isinstance(config.engine, sa.Engine):
            raise PgSchedulerError(
                "Scheduler needs a synchronous Engine; for an AsyncEngine use AsyncScheduler"
            )
        self.config = config
        self.engine: sa.Engine = config.engine
        self.names = config.names
        self.models: Models = build_models(self.names)
        self.log: logging.Logger | logging.LoggerAdapter[Any] = config.logger or logging.getLogger(
            "pg_scheduler"
        )
        self.node_name = config.node_name or socket.gethostname()
        self.node_id = make_node_id(self.node_name)
        self.session_factory: Callable[[], Session] = config.session_factory or sessionmaker(
            self.engine, expire_on_commit=False
        )
        self.inflight = Inflight()
        self._registry = JobRegistry()
        # Recurring jobs declared before start(): start() writes their rows (see schedule_job).
        self._declared: list[JobConfig] = []
        self._state = "new"  # new -> running -> stopping -> stopped
        self._state_lock = threading.Lock()
        self._stopped = threading.Event()  # set when a shutdown() has finished stopping the node
        # One kept autocommit connection per stream of the node's own statements.
        self.claim_connection = KeptConnection(self.engine)
        self.outcome_connection = KeptConnection(self.engine)
        self.enqueue_connection = KeptConnection(self.engine)
        self._schema_ok = False
        self.db_errors = DatabaseErrors(self.log)
        self._pool: WorkerPool | None = None
        self._loop: EventLoopThread | None = None
        self.deadlines = Deadlines(config.statement_timeout)
        self.poller = Poller(self)
        self.outcomes = OutcomeWriter(self._write_outcomes)
        self.heartbeat = Heartbeat(self)
        self.maintenance = Maintenance(self)
        self.listener = Listener(self.engine, self.names.channel, self._on_notify, log=self.log)

    # ------------------------------------------------------------------ database access
    @contextlib.contextmanager
    def transaction(self) -> Iterator[JobRepository]:
        """A repository in a new transaction of the session factory, committed on success."""
        try:
            with self.session_factory() as session, session.begin():
                # Take the connection now, so the whole transaction runs under the deadline.
                conn = past_dead_connections(session.connection, self.engine.pool)
                try:
                    with self.deadlines.guard(conn.connection.dbapi_connection, "a transaction"):
                        set_local_timeouts(conn, self.config)
                        yield self.repository(session)
                except OSError:
                    conn.invalidate()  # see ``_Autocommit.__exit__``
                    raise
        except sa.exc.DBAPIError as exc:
            error = self._database_error(exc)
            if error is None:
                raise
            raise error from exc
        except OSError as exc:
            raise unavailable(exc, self.engine.url) from exc

    def autocommit(self, kept: KeptConnection | None = None) -> _Autocommit:
        """A repository on a connection in autocommit: each statement is its own transaction,
        with no BEGIN and COMMIT round trips. Only for callers that run one atomic statement (an
        enqueue, a claim, a group of completions) or only read.

        With ``kept``, that stream's kept connection (see ``connections``) when it is free, else
        a pooled connection."""
        return _Autocommit(self, kept)

    def _database_error(self, exc: sa.exc.DBAPIError) -> PgSchedulerError | None:
        """What ``exc`` means for the caller (``translate_error``), noting a missing schema."""
        error = translate_error(exc, self.names, self.engine.url)
        if isinstance(error, SchemaNotInstalledError):
            self._schema_ok = False
        return error

    def close_autocommit_connections(self) -> None:
        """Give the kept autocommit connections back to the pool (``shutdown`` does this)."""
        for kept in (self.claim_connection, self.outcome_connection, self.enqueue_connection):
            kept.close()

    def repository(
        self, session: Session | sa.Connection, *, direct: bool = False
    ) -> JobRepository:
        """A repository on ``session`` (the caller owns its transaction). ``direct``: ``session``
        is one of the scheduler's own autocommit connections (see ``pg_scheduler.direct``)."""
        return JobRepository(
            session,
            self.models,
            backoff=self.config.retry_backoff,
            max_params_bytes=self.config.max_params_bytes,
            direct=direct,
        )

    def name_connection(self, conn: sa.Connection, role: str) -> None:
        """Tag a dedicated connection in pg_stat_activity (``pg_scheduler:<node>:<role>``)."""
        label = f"pg_scheduler:{self.node_id}:{role}"[:63]
        conn.execute(sa.select(sa.func.set_config("application_name", label, False)))

    def database_error(self, service: str, exc: BaseException, *, retry_in: float) -> None:
        """A background service could not reach the database; it retries by itself."""
        self.db_errors.report(service, exc, retry_in=retry_in)

    def seconds_since_database_error(self) -> float:
        return self.db_errors.seconds_since_last()

    def _ensure_schema(self) -> None:
        if self._schema_ok:
            return
        try:
            if self.config.create_schema:
                migrations.upgrade(self.engine, names=self.names)
            else:
                migrations.check_schema(self.engine, self.names)
        except sa.exc.DBAPIError as exc:
            error = translate_error(exc, self.names, self.engine.url)
            if not isinstance(error, DatabaseUnavailableError):
                raise
            raise error from exc
        self._schema_ok = True

    # ------------------------------------------------------------------ registry
    def register(self, job: Job) -> Job:
        """Make this node able to run jobs named ``job.name`` (enqueues nothing).

        Registering the same name again with a job of the same class keeps the first instance; a
        different class is an error.
        """
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

    def schedule_job(self, job: Job) -> str:
        """Register ``job`` and schedule it. Returns the job key.

        A recurring job is a declaration: before ``start()`` it is only recorded (no database
        needed: a module of declarations imports while the database is down), and ``start()``
        writes its row; once started, its row is created or updated at once. A one-time job is
        enqueued at once with its config's params (an enqueue, which needs the database).
        """
        self.register(job)
        if job.config.job_type is JobType.RECURRING:
            with self._state_lock:
                if self._state == "new":
                    self._declared.append(job.config)
                    return job.name  # a recurring job's key is its name
        self._ensure_schema()
        with self.transaction() as repo:
            return schedule(repo, job.config)

    def _write_declarations(self) -> None:
        """Write the rows of the recurring jobs declared so far (under ``_state_lock``)."""
        if not self._declared:
            return
        declared = list(self._declared)
        with self.transaction() as repo:
            for config in declared:
                schedule(repo, config)
        del self._declared[: len(declared)]

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
        declaration, as ``schedule_job``: its row is written by ``start()`` (at once if started)."""
        config = JobConfig.recurring(
            name,
            cron,
            timezone=timezone,
            retries=retries,
            misfire=misfire,
            misfire_grace=misfire_grace,
        )

        def decorate(fn: F) -> F:
            self.schedule_job(FunctionJob(config, fn))
            return fn

        return decorate

    def one_time(self, name: str, *, retries: int = 0) -> Callable[[F], F]:
        """Decorator: register a plain function ``fn(ctx)`` (sync or async) as the handler of
        one-time jobs named ``name``; enqueue runs with ``scheduler.enqueue(name, params)``."""
        config = JobConfig.one_time(name, retries=retries)

        def decorate(fn: F) -> F:
            self.register(FunctionJob(config, fn))
            return fn

        return decorate

    # ------------------------------------------------------------------ enqueue and inspect
    def enqueue(
        self,
        name: str,
        params: Any = None,
        *,
        retries: int | None = None,
        run_at: dt.datetime | None = None,
        session: Session | None = None,
    ) -> str:
        """Enqueue one run of the one-time job ``name`` with JSON ``params``; returns its key.

        With ``session``, the insert joins that session's transaction: the job exists if and only
        if the caller commits. ``retries`` left unsaid (None) is stored as NULL and resolved from
        the handler by the node that claims the job (this process needs no handler); an explicit
        value wins. Nodes are woken by NOTIFY when the transaction commits.
        """
        spec = self._registry.one_time_spec(name, params, retries, run_at)
        if session is not None:
            return self.repository(session).insert_one_time(spec)
        self._ensure_schema()
        key = new_key(spec.name)
        self._insert(lambda repo: [repo.insert_one_time(spec, key=key)], [key])
        return key

    def enqueue_many(
        self,
        name: str,
        params_list: Iterable[Any],
        *,
        retries: int | None = None,
        run_at: dt.datetime | None = None,
        session: Session | None = None,
    ) -> list[str]:
        """Enqueue one run of ``name`` per element of ``params_list`` in one batched INSERT."""
        first = self._registry.one_time_spec(name, None, retries, run_at)  # resolves retries
        specs = [OneTimeSpec(name, params, first.retries, run_at) for params in params_list]
        if session is not None:
            return self.repository(session).insert_many(specs)
        self._ensure_schema()
        keys = [new_key(spec.name) for spec in specs]
        return self._insert(lambda repo: repo.insert_many(specs, keys=keys), keys)

    def _insert(self, insert: Callable[[JobRepository], list[str]], keys: list[str]) -> list[str]:
        """Run an enqueue's one statement (the insert and its NOTIFY) in autocommit, on the kept
        enqueue connection when it is free.

        A connection can die between two enqueues (a restart, a terminated backend) without its
        socket showing it yet. The statement is then sent once more, on a fresh connection, with
        the same keys: if the first one did commit before the connection died, the second
        meets its own rows (a duplicate key) and the enqueue has happened exactly once."""
        try:
            with self.autocommit(self.enqueue_connection) as repo:
                return insert(repo)
        except (DatabaseUnavailableError, sa.exc.InterfaceError, OSError) as exc:
            self.log.debug(
                "enqueue failed (%s); sending it again on a new connection",
                exc,
                extra={"event": "job.enqueue_retried"},
            )
        try:
            with self.autocommit() as repo:
                return insert(repo)
        except sa.exc.IntegrityError as exc:
            if not is_duplicate_key(exc, self.names):
                raise
            return keys

    def get_job(self, key: str) -> JobRecord | None:
        """The job row with this key, or None."""
        with self.transaction() as repo:
            return repo.get(key)

    def list_jobs(
        self,
        *,
        name: str | None = None,
        status: JobStatus | str | None = None,
        job_type: JobType | str | None = None,
        limit: int = 100,
    ) -> list[JobRecord]:
        with self.transaction() as repo:
            return repo.list_jobs(name=name, status=status, job_type=job_type, limit=limit)

    def list_runs(self, key: str, *, limit: int = 100) -> list[RunRecord]:
        """The attempts of one job, newest first."""
        with self.transaction() as repo:
            return repo.list_runs(key, limit=limit)

    def list_nodes(self, *, live_within: dt.timedelta | None = None) -> list[NodeRecord]:
        with self.transaction() as repo:
            return repo.list_nodes(live_within=live_within)

    def cancel_job(self, key: str) -> CancelResult:
        """Cancel a pending job; for a running one, ask its node to stop it (cooperatively)."""
        with self.transaction() as repo:
            result = repo.cancel(key)
        if result.requested:
            for running in self.inflight:
                if running.claimed.key == key:
                    running.stop(StopReason.CANCEL_JOB)
        return result

    def trigger(self, key: str) -> JobRecord:
        """Run a pending job now (for a recurring job: once, outside its schedule)."""
        with self.transaction() as repo:
            return repo.trigger(key)

    def retry_job(self, key: str) -> JobRecord:
        """Re-queue a failed or cancelled job to run now."""
        with self.transaction() as repo:
            return repo.retry_now(key)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Scheduler:
        """Check (or, with ``create_schema``, install) the schema, register this node, write the
        rows of the recurring jobs declared so far, and start claiming. Raises if already
        started."""
        with self._state_lock:
            if self._state == "running":
                raise SchedulerStateError("the scheduler is already running")
            if self._state == "stopped":
                raise SchedulerStateError(
                    "this scheduler was shut down; create a new Scheduler to start again"
                )
            self._ensure_schema()
            self._write_declarations()
            with self.transaction() as repo:
                self.register_node(repo)
            # Twice the slots: a thread whose job has ended stays with it while its outcome is
            # written (grouped with others'), and its slot already runs the next job meanwhile.
            self._pool = WorkerPool(2 * self.config.max_concurrent_jobs, "pg_scheduler")
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

    def shutdown(self, timeout: dt.timedelta | None = None) -> None:
        """Stop claiming, ask running jobs to stop, wait up to ``shutdown_timeout`` for them, and
        hand back the ones still running. Records every outcome that arrives in time. When it
        returns, no row is ``running`` under this node's leases. Calling it twice is harmless: a
        call made while another is still stopping the node waits for that one to finish."""
        with self._state_lock:
            if self._state == "stopping":
                stopping = True
            elif self._state != "running":
                self._state = "stopped"
                self.close_autocommit_connections()  # a producer-only scheduler may hold one
                return
            else:
                stopping = False
                self._state = "stopping"
        if stopping:
            self._stopped.wait()
            return
        try:
            self._stop(timeout)
        finally:
            with self._state_lock:
                self._state = "stopped"
            self._stopped.set()

    def _stop(self, timeout: dt.timedelta | None) -> None:
        wait = (timeout if timeout is not None else self.config.shutdown_timeout).total_seconds()
        self.log.info("node %s stopping", self.node_id, extra={"event": "node.stopping"})
        self.poller.stop()
        self.listener.stop()
        for running in self.inflight:
            running.stop(StopReason.SHUTDOWN)
        if not self.inflight.wait_empty(wait):
            self._release_unfinished()
        self.heartbeat.stop()
        self.maintenance.stop()
        try:
            with self.transaction() as repo:
                repo.deregister_node(self.node_id)
        except PgSchedulerError as exc:
            self.log.warning(
                "could not deregister node: %s", exc, extra={"event": "node.deregister_failed"}
            )
        if self._pool is not None:
            self._pool.stop()
        if self._loop is not None:
            self._loop.stop()
        self.close_autocommit_connections()
        self.log.info("node %s stopped", self.node_id, extra={"event": "node.stopped"})

    def _release_unfinished(self) -> None:
        leftovers = self.inflight.snapshot()
        for running in leftovers:
            # From now on this node no longer owns them: a late outcome must not be written.
            running.stop(StopReason.LEASE_LOST)
        leases = [r.lease_id for r in leftovers]

        def release() -> None:
            with self.transaction() as repo:
                result = repo.release(self.node_id, leases)
            self.log.warning(
                "shutdown timeout: running jobs handed back: %d",
                result.count,
                extra={"event": "job.released", "keys": list(result.pending + result.failed)},
            )

        if not self._retry_database("release", release):
            self.log.error(
                "could not hand back the running jobs (%d); their leases will expire and "
                "another node will rescue them",
                len(leases),
                extra={"event": "job.release_failed"},
            )

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ running jobs
    def _on_notify(self, payload: str) -> None:
        self.poller.wake()

    def dispatch(self, claimed: ClaimedJob) -> None:
        """Run a claimed job on a worker thread (called by the poller after the claim commits)."""
        job = self.registered_job(claimed.name)
        ctx = new_context(claimed, self.node_id, self.log)
        if job is None:  # pragma: no cover - names are never unregistered; kept as a guard
            with self.transaction() as repo:
                repo.release(self.node_id, [claimed.lease_id])
            return
        running = RunningJob(claimed, job, ctx)
        self.inflight.add(running)
        assert self._pool is not None
        self._pool.submit(lambda: self._run(running))

    def _event_loop(self) -> EventLoopThread:
        with self._state_lock:
            if self._loop is None or not self._loop.alive:  # a dead loop's runs were handed back
                self._loop = EventLoopThread("pg_scheduler")
            return self._loop

    def _run(self, running: RunningJob) -> None:
        claimed, ctx = running.claimed, running.ctx
        handed_over = False
        try:
            outcome = misfire_outcome(claimed)
            if outcome is None:
                if self.log.isEnabledFor(logging.DEBUG):
                    self.log.debug(
                        "job %r attempt %d started",
                        claimed.key,
                        ctx.attempt,
                        extra={"event": "job.claimed", "job_key": claimed.key},
                    )
                started = time.monotonic()
                loop = self._event_loop() if running.job.is_async else None
                error = execute(running, loop)
                duration_ms = int((time.monotonic() - started) * 1000)
                outcome = attempt_outcome(running, error, duration_ms)
            self.inflight.end_code(running)
            self.poller.slot_freed()  # the lease stays in flight until its outcome is written
            handed_over = self._finish(running, outcome)
        finally:
            if not handed_over:
                self._done(running)

    def _done(self, running: RunningJob) -> None:
        """The attempt's outcome is written (or given up): the lease leaves the node. (Its slot
        was freed when its code ended; a node holding ``2 * max_concurrent_jobs`` leases waits
        for this to claim again.)"""
        self.inflight.remove(running.lease_id)
        self.poller.slot_freed()

    def _finish(self, running: RunningJob, outcome: Outcome) -> bool:
        """Write the attempt's outcome, or hand it to the grouped writer (returns True: the
        writer's callback finishes the attempt)."""
        claimed = running.claimed
        if running.stop_reason is StopReason.LEASE_LOST:
            report_dropped(self.log, claimed.key)
            return False
        if outcome.status is RunStatus.RELEASED:  # handed back (see ``attempt_outcome``)

            def release() -> None:
                with self.transaction() as repo:
                    repo.release(self.node_id, [claimed.lease_id], reason=outcome.error)

            self._retry_database("release", release)
            return False

        def written(result: FinishResult | None) -> None:
            if result is None:  # the group failed: write it alone, with retries, off this thread
                assert self._pool is not None
                self._pool.submit(lambda: self._write_alone(running, outcome))
                return
            report_outcome(self.log, claimed, outcome, result)
            self._done(running)

        self.outcomes.submit(claimed, outcome, written)
        return True

    def _write_alone(self, running: RunningJob, outcome: Outcome) -> None:
        claimed = running.claimed
        result_box: list[FinishResult] = []

        def write() -> None:
            with self.transaction() as repo:
                result_box.append(repo.finish(claimed, outcome))

        try:
            written = self._retry_database("record outcome", write, holder=running)
            if not written and lease_lost(running):  # the heartbeat said so while we retried
                report_dropped(self.log, claimed.key)
                return
            report_outcome(self.log, claimed, outcome, result_box[0] if written else None)
        finally:
            self._done(running)

    def _write_outcomes(
        self, items: Sequence[tuple[ClaimedJob, Outcome]]
    ) -> Sequence[FinishResult]:
        if all(shares_one_statement(*item) for item in items):
            # One atomic statement (two when a lease was lost): in autocommit, without the BEGIN,
            # set_config and COMMIT round trips of a transaction.
            with self.autocommit(self.outcome_connection) as repo:
                return repo.finish_many(items)
        with self.transaction() as repo:
            return repo.finish_many(items)

    def _retry_database(
        self, what: str, fn: Callable[[], None], *, holder: RunningJob | None = None
    ) -> bool:
        """Run ``fn`` until it succeeds or ``OutageRetry`` gives up (see there)."""
        retry = OutageRetry(self.config.no_heartbeat_timeout, holder)
        while True:
            try:
                fn()
                return True
            except (DatabaseUnavailableError, sa.exc.DBAPIError) as exc:
                delay = retry.next_delay(exc)
                if delay is None:
                    return False
                self.database_error(what, exc, retry_in=delay)
                time.sleep(delay)

    def run_pending(self) -> list[RunRecord]:
        """Run what is due, here and now: for tests and scripts, on a scheduler never started.

        Writes the recurring jobs declared so far (as ``start()`` would), then claims due jobs
        whose names are registered here, one at a time, and runs each in the calling thread
        (``async def`` code on an event loop of that thread), until none is due; jobs that fall
        due meanwhile (one enqueued by a job, a retry whose backoff has passed) run too. Each
        outcome is written as a node writes it. Returns the run records of those attempts, in
        the order they ran. A started node claims due jobs by itself: there this raises
        ``SchedulerStateError``.
        """
        with self._state_lock:
            if self._state != "new":
                raise SchedulerStateError(
                    f"run_pending() is for a scheduler that is not started (this one is "
                    f"{self._state}): a started node claims and runs due jobs by itself"
                )
            self._ensure_schema()
            self._write_declarations()
        ran: list[RunRecord] = []
        loop: EventLoopThread | None = None
        try:
            while True:
                names, retries = self.claimable()
                if not names:
                    break
                with self.autocommit(self.claim_connection) as repo:
                    claimed = repo.claim(self.node_id, names, 1, retries=retries)
                if not claimed:
                    break
                job = self.registered_job(claimed[0].name)
                assert job is not None  # only registered names are claimed
                if job.is_async and loop is None:
                    loop = CallingThreadLoop() if running_loop() is None else self._own_loop()
                run = self._run_here(
                    RunningJob(claimed[0], job, new_context(claimed[0], self.node_id, self.log)),
                    loop,
                )
                if run is not None:
                    ran.append(run)
        finally:
            if loop is not None:
                loop.stop()
            # A test's scheduler is seldom shut down: hold no pooled connection after the call.
            self.close_autocommit_connections()
        return ran

    def _own_loop(self) -> EventLoopThread:
        """``run_pending``'s loop when the calling thread runs one already (it cannot run two)."""
        return EventLoopThread("pg_scheduler-run_pending")

    def _run_here(self, running: RunningJob, loop: EventLoopThread | None) -> RunRecord | None:
        """One attempt of ``run_pending``, in the calling thread; its outcome written."""
        claimed = running.claimed
        if isinstance(loop, CallingThreadLoop) and running.job.is_async:
            running.on_stop = loop.cancel_current  # cancel_job from another thread
        self.inflight.add(running)
        try:
            outcome = misfire_outcome(claimed)
            if outcome is None:
                started = time.monotonic()
                error = execute(running, loop if running.job.is_async else None)
                duration_ms = int((time.monotonic() - started) * 1000)
                outcome = attempt_outcome(running, error, duration_ms)
            if outcome.status is RunStatus.RELEASED:  # handed back (see ``attempt_outcome``)
                with self.transaction() as repo:
                    repo.release(self.node_id, [claimed.lease_id], reason=outcome.error)
            else:
                (result,) = self._write_outcomes([(claimed, outcome)])
                report_outcome(self.log, claimed, outcome, result)
        finally:
            self.inflight.remove(claimed.lease_id)
        with self.autocommit() as repo:
            return repo.run_of_lease(claimed.lease_id)


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


class _Autocommit:
    """``Scheduler.autocommit``'s context. It wraps every enqueue, claim pass and group of
    outcomes, so it is written out as one class: as nested generator contexts (the kept
    connection, the deadline, an exit stack) it cost more CPU than the statement's own trip
    through psycopg. On the kept connection the repository is built once per connection."""

    __slots__ = ("conn", "kept", "scheduler", "watch")

    def __init__(self, scheduler: Scheduler, kept: KeptConnection | None) -> None:
        self.scheduler = scheduler
        self.kept = kept
        self.conn: sa.Connection | None = None
        self.watch: Any = None

    def __enter__(self) -> JobRepository:
        s = self.scheduler
        kept = self.kept
        try:
            conn = kept.acquire() if kept is not None else None
            if conn is None:
                self.kept = kept = None
                conn = connect(s.engine)
                try:
                    switch_to_autocommit(conn)
                except BaseException:
                    conn.close()
                    raise
        except sa.exc.DBAPIError as exc:
            error = s._database_error(exc)
            if error is None:
                raise
            raise error from exc
        self.conn = conn
        try:
            # The client-side deadline only: a transaction-local statement_timeout would end
            # with the first statement.
            dbapi_connection = conn.connection.dbapi_connection
            self.watch = s.deadlines.watch(dbapi_connection, "an autocommit statement")
            if kept is None:
                return s.repository(conn, direct=True)
            repo: JobRepository | None = kept.attached
            if repo is None or repo.session is not conn:
                repo = kept.attached = s.repository(conn, direct=True)
            return repo
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        s = self.scheduler
        s.deadlines.unwatch(self.watch)
        if self.kept is not None:
            self.kept.release(failed=exc is not None)
        elif self.conn is not None:
            if isinstance(exc, OSError):
                # pg8000 lets a reset socket's error out of a statement's first read unwrapped:
                # SQLAlchemy does not know the connection is gone and would pool it again.
                self.conn.invalidate()
            self.conn.close()
        if isinstance(exc, sa.exc.DBAPIError):
            error = s._database_error(exc)
            if error is not None:
                raise error from exc
        elif isinstance(exc, OSError):
            raise unavailable(exc, s.engine.url) from exc


def translate_error(exc: sa.exc.DBAPIError, names: Names, url: sa.URL) -> PgSchedulerError | None:
    """Our error for a driver error that means "not installed" or "unreachable", else None."""
    if isinstance(exc, sa.exc.ProgrammingError) and _sqlstate(exc) == _UNDEFINED_TABLE:
        return migrations.not_installed(names)
    if isinstance(exc, sa.exc.OperationalError) or lost_connection(exc):
        return unavailable(exc, url)
    return None


# SQLSTATE classes and codes that mean "the database is away or cannot write for now" (connection
# exceptions, operator intervention, insufficient resources, read-only transaction, statement
# timeout): worth retrying for as long as the lease holds. Anything else is a bug or bad data.
_OUTAGE_CLASSES = ("08", "53", "57")
_OUTAGE_CODES = ("25006", "40001", "40P01", "55P03")


class DatabaseErrors:
    """A node's database failures: when the last one happened (maintenance holds back rescues
    after one), and their log lines. The first failure of each service is logged at once, then
    at most one line per ``DB_ERROR_LOG_SECONDS`` with the count of failures in between: a
    database that stays down or read-only for hours must not flood the log from every retry of
    every service."""

    def __init__(self, log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.log = log
        self._last = float("-inf")
        self._reports: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def report(self, service: str, exc: BaseException, *, retry_in: float) -> None:
        now = time.monotonic()
        with self._lock:
            if holds_back_rescues(exc):
                self._last = now
            last, suppressed = self._reports.get(service, (float("-inf"), 0))
            if now - last < DB_ERROR_LOG_SECONDS:
                self._reports[service] = (last, suppressed + 1)
                return
            self._reports[service] = (now, 0)
        self.log.warning(
            "%s failed (%s); retrying in %.1fs%s",
            service,
            _first_line(exc),
            retry_in,
            f" ({suppressed} more failures since the last report)" if suppressed else "",
            extra={"event": "db.unavailable", "service": service, "suppressed": suppressed},
        )

    def seconds_since_last(self) -> float:
        return time.monotonic() - self._last


class OutageRetry:
    """When a write that failed on the database is tried again, and when it is given up.

    A plain write is retried for up to ``budget`` (``no_heartbeat_timeout``: after that the lease
    has expired anyway). With ``holder`` (an outcome write), an outage is retried for as long as
    this node holds the job's lease, however long the database is away: the job stays in flight
    meanwhile, so the heartbeat renews its lease as soon as the database answers and no node
    rescues a job whose outcome is on its way. The retries end when the heartbeat reports the
    lease lost or shutdown hands the job back."""

    def __init__(self, budget: dt.timedelta, holder: RunningJob | None = None) -> None:
        self.deadline = time.monotonic() + budget.total_seconds()
        self.holder = holder
        self.delay = 0.05

    def next_delay(self, exc: BaseException) -> float | None:
        """Seconds to wait before the next try, or None: give up."""
        if self.holder is not None and lease_lost(self.holder):
            return None
        keep_trying = self.holder is not None and is_outage(exc)
        if not keep_trying and time.monotonic() + self.delay > self.deadline:
            return None
        delay, self.delay = self.delay, min(self.delay * 2, 2.0)
        return delay


def lease_lost(running: RunningJob) -> bool:
    return running.stop_reason is StopReason.LEASE_LOST


# A lost race (serialization failure, deadlock, lock timeout) is retried like an outage, but it
# is no sign that heartbeats were failing.
_LOST_RACE_CODES = ("40001", "40P01", "55P03")


def holds_back_rescues(exc: BaseException) -> bool:
    """True when ``exc`` means this node could not reach (or write to) the database, so the other
    nodes' heartbeats were probably failing too. Lost races and bugs do not count: a node seeing a
    deadlock every second must not hold back rescues forever (seen in the soak: recoveries of
    13-26 s while heartbeats and group outcome writes deadlocked)."""
    cause = exc.__cause__ if isinstance(exc, DatabaseUnavailableError) else exc
    if isinstance(cause, sa.exc.DBAPIError) and _sqlstate(cause) in _LOST_RACE_CODES:
        return False
    return is_outage(exc)


def is_outage(exc: BaseException) -> bool:
    """True for an error that a later retry can outlive (the database restarting, unreachable,
    read-only, or too slow), False for one that would fail the same way every time."""
    if isinstance(exc, DatabaseUnavailableError | sa.exc.OperationalError | sa.exc.InterfaceError):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        code = _sqlstate(exc) or ""
        return code[:2] in _OUTAGE_CLASSES or code in _OUTAGE_CODES
    return False


def unavailable(exc: BaseException, url: sa.URL) -> DatabaseUnavailableError:
    database = url.render_as_string(hide_password=True)
    return DatabaseUnavailableError(f"database unavailable ({database}): {_first_line(exc)}")


def _sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code is None and orig is not None and orig.args and isinstance(orig.args[0], dict):
        code = orig.args[0].get("C")  # pg8000
    return code


def is_duplicate_key(exc: sa.exc.DBAPIError, names: Names) -> bool:
    """Whether ``exc`` is a unique violation of the jobs table's primary key."""
    return _sqlstate(exc) == _UNIQUE_VIOLATION and names.job("pkey") in str(exc.orig)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


__all__ = ["Scheduler", "make_node_id"]
