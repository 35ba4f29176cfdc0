"""``Scheduler``: a pg_scheduler node on worker threads, for synchronous applications.

A thin facade: what a node does is ``pg_scheduler.node.Node``, written once for both runtimes;
this class runs it on the thread runtime (``pg_scheduler.runtime.threads``), where each call
blocks until it is done.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from pg_scheduler import migrations
from pg_scheduler.config import SchedulerConfig
from pg_scheduler.db.records import CancelResult, JobRecord, NodeRecord, OneTimeSpec, RunRecord
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.db.sessions import SyncDatabase
from pg_scheduler.errors import PgSchedulerError
from pg_scheduler.jobs import FunctionJob, Job, JobConfig
from pg_scheduler.node.node import Node, make_node_id
from pg_scheduler.runtime.threads import ThreadRuntime, drive
from pg_scheduler.states import JobStatus, JobType

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


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
        self.node_id = make_node_id(config.node_name)
        self.session_factory: Callable[[], Session] = config.session_factory or sessionmaker(
            self.engine, expire_on_commit=False
        )
        self.database = SyncDatabase(
            self.engine,
            self.session_factory,
            config,
            repository=lambda session, direct=False: self.node.repository(session, direct=direct),
            not_installed=lambda: migrations.not_installed(config.names),
            node_id=self.node_id,
        )
        self.runtime = ThreadRuntime(config, self.engine, self.database)
        self.node = Node(config, self.runtime, facade="Scheduler", node_id=self.node_id)
        self.log = self.node.log
        self.models = self.node.models
        self.inflight = self.node.inflight
        self.poller = self.node.poller
        self.listener = self.runtime.listener
        self.heartbeat = _Blocking(self.node.heartbeat)
        self.maintenance = _Blocking(self.node.maintenance)

    def transaction(self) -> contextlib.AbstractContextManager[JobRepository]:
        """A repository in a new transaction of the session factory, committed on success."""
        return self.database.transaction()

    # ------------------------------------------------------------------ registry
    def register(self, job: Job) -> Job:
        """Make this node able to run jobs named ``job.name`` (enqueues nothing).

        Registering the same name again with a job of the same class keeps the first instance; a
        different class is an error.
        """
        return self.node.register(job)

    def registered_names(self) -> list[str]:
        return self.node.registry.names()

    def registered_job(self, name: str) -> Job | None:
        return self.node.registry.get(name)

    def schedule_job(self, job: Job) -> str:
        """Register ``job`` and schedule it. Returns the job key.

        A recurring job is a declaration: before ``start()`` it is only recorded (no database
        needed: a module of declarations imports while the database is down), and ``start()``
        writes its row; once started, its row is created or updated at once. A one-time job is
        enqueued at once with its config's params (an enqueue, which needs the database).
        """
        return drive(self.node.schedule_job(job))

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
            name, cron, timezone=timezone, retries=retries, misfire=misfire,
            misfire_grace=misfire_grace,
        )  # fmt: skip

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
        if session is not None:
            spec = OneTimeSpec(name, params, retries, run_at)
            return self.node.repository(session).insert_one_time(spec)
        return drive(self.node.enqueue(name, params, retries, run_at))

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
        if session is not None:
            specs = [OneTimeSpec(name, params, retries, run_at) for params in params_list]
            return self.node.repository(session).insert_many(specs)
        return drive(self.node.enqueue_many(name, params_list, retries, run_at))

    def get_job(self, key: str) -> JobRecord | None:
        """The job row with this key, or None."""
        return drive(self.node.get_job(key))

    def list_jobs(
        self,
        *,
        name: str | None = None,
        status: JobStatus | str | None = None,
        job_type: JobType | str | None = None,
        limit: int = 100,
    ) -> list[JobRecord]:
        return drive(self.node.list_jobs(name=name, status=status, job_type=job_type, limit=limit))

    def list_runs(self, key: str, *, limit: int = 100) -> list[RunRecord]:
        """The attempts of one job, newest first."""
        return drive(self.node.list_runs(key, limit=limit))

    def list_nodes(self, *, live_within: dt.timedelta | None = None) -> list[NodeRecord]:
        return drive(self.node.list_nodes(live_within=live_within))

    def cancel_job(self, key: str) -> CancelResult:
        """Cancel a pending job; for a running one, ask its node to stop it (cooperatively)."""
        return drive(self.node.cancel_job(key))

    def trigger(self, key: str) -> JobRecord:
        """Run a pending job now (for a recurring job: once, outside its schedule)."""
        return drive(self.node.trigger(key))

    def retry_job(self, key: str) -> JobRecord:
        """Re-queue a failed or cancelled job to run now."""
        return drive(self.node.retry_job(key))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Scheduler:
        """Check (or, with ``create_schema``, install) the schema, register this node, write the
        rows of the recurring jobs declared so far, and start claiming. Raises if already
        started."""
        drive(self.node.start())
        return self

    @property
    def running(self) -> bool:
        return self.node.running

    def shutdown(self, timeout: dt.timedelta | None = None) -> None:
        """Stop claiming, ask running jobs to stop, wait up to ``shutdown_timeout`` for them, and
        hand back the ones still running. Records every outcome that arrives in time. When it
        returns, no row is ``running`` under this node's leases. Calling it twice is harmless: a
        call made while another is still stopping the node waits for that one to finish."""
        drive(self.node.shutdown(timeout))

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

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
        return drive(self.node.run_pending())


class _Blocking:
    """A node service whose ``run_once`` blocks until the pass is done (tests run passes)."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def run_once(self, **options: Any) -> Any:
        return drive(self.service.run_once(**options))

    @property
    def passes(self) -> int:
        return int(self.service.passes)


__all__ = ["Scheduler", "make_node_id"]
