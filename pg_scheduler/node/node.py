"""``Node``: one pg_scheduler node, written once for both runtimes.

It holds what a node is (its identity, its job registry, the runs it holds leases for) and what it
does: start, stop, enqueue, inspect, cancel and hand back. Every method that waits is a coroutine;
``Scheduler`` drives them on worker threads and ``AsyncScheduler`` awaits them (see
``pg_scheduler.node.runtime``). The node never writes SQL: every statement is a ``JobRepository``
method, run by the runtime in a short transaction or a single autocommit statement. No transaction
stays open while job code runs: claim, commit, run, then write the outcome, fenced by the lease.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, TypeVar

import sqlalchemy as sa

from pg_scheduler import migrations
from pg_scheduler.config import SchedulerConfig
from pg_scheduler.db.outages import DatabaseErrors, OutageRetry, is_duplicate_key, unavailable
from pg_scheduler.db.records import (
    CancelResult,
    ClaimedJob,
    JobRecord,
    NodeRecord,
    OneTimeSpec,
    RunRecord,
)
from pg_scheduler.db.repository import JobRepository, new_key
from pg_scheduler.errors import (
    DatabaseUnavailableError,
    MigrationError,
    PgSchedulerError,
    SchedulerStateError,
)
from pg_scheduler.jobs import Job, JobConfig
from pg_scheduler.models import Models, build_models
from pg_scheduler.node.attempt import Attempts
from pg_scheduler.node.heartbeat import Heartbeat
from pg_scheduler.node.inflight import Inflight
from pg_scheduler.node.maintenance import Maintenance
from pg_scheduler.node.poller import Poller
from pg_scheduler.node.registry import JobRegistry, schedule
from pg_scheduler.node.running import StopReason
from pg_scheduler.node.runtime import Runtime, Stream
from pg_scheduler.states import JobStatus, JobType

T = TypeVar("T")

RETRYABLE = (DatabaseUnavailableError, sa.exc.DBAPIError, OSError)  # asyncpg: OSError on connect


def make_node_id(node_name: str | None = None) -> str:
    """``host:pid:random``: unique even for processes sharing a host name (or a node_name)."""
    return f"{node_name or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Node:
    """A node's state and behaviour; ``runtime`` says how it waits and runs code."""

    def __init__(
        self, config: SchedulerConfig, runtime: Runtime, *, facade: str, node_id: str
    ) -> None:
        self.config = config
        self.facade = facade  # the public class, for messages
        self.runtime = runtime
        self.names = config.names
        self.models: Models = build_models(self.names)
        self.log: logging.Logger | logging.LoggerAdapter[Any] = config.logger or logging.getLogger(
            "pg_scheduler"
        )
        self.node_name = config.node_name or socket.gethostname()
        self.node_id = node_id
        self.registry = JobRegistry()
        self.errors = DatabaseErrors(self.log)
        self._emptied = runtime.wakeup()
        self.inflight = Inflight(on_empty=self._emptied.set)
        # Recurring jobs declared before start(): start() writes their rows (see schedule_job).
        # The lock makes "record it, or see that start() is done and write it" atomic for
        # declarations made from other threads.
        self._declared: list[JobConfig] = []
        self._lock = threading.Lock()
        self.state = "new"  # new -> starting -> running -> stopping -> stopped
        self._stopped = runtime.wakeup()
        self._schema_ok = False
        runtime.on_schema_missing = self._schema_missing
        self.attempts = Attempts(
            runtime,
            self.inflight,
            node_id=self.node_id,
            log=self.log,
            slot_freed=self._slot_freed,
            retry_database=self.retry_database,
        )
        self.poller = Poller(
            runtime,
            node_id=self.node_id,
            registry=self.registry,
            inflight=self.inflight,
            cap=config.max_concurrent_jobs,
            interval=config.job_check_interval.total_seconds(),
            dispatch=self.dispatch,
            errors=self.errors,
        )
        self.heartbeat = Heartbeat(
            runtime,
            node_id=self.node_id,
            inflight=self.inflight,
            job_names=self.registry.names,
            register_node=self.register_node,
            interval=config.heartbeat_interval.total_seconds(),
            errors=self.errors,
            log=self.log,
        )
        self.maintenance = Maintenance(runtime, config=config, errors=self.errors, log=self.log)

    # ------------------------------------------------------------------ database
    def repository(self, session: Any, *, direct: bool = False) -> JobRepository:
        """A repository on ``session`` (a synchronous Session or Connection; the caller owns its
        transaction). ``direct``: one of the node's own autocommit connections (the fast path)."""
        return JobRepository(
            session,
            self.models,
            backoff=self.config.retry_backoff,
            max_params_bytes=self.config.max_params_bytes,
            direct=direct,
        )

    def _schema_missing(self) -> None:
        self._schema_ok = False

    async def ensure_schema(self) -> None:
        """Check the tables (or, with ``create_schema``, install them), once per node."""
        if self._schema_ok:
            return
        names = self.names
        try:
            if self.config.create_schema:
                await self.runtime.on_connection(
                    lambda conn: migrations.upgrade(conn, names=names), commit=True
                )
            else:
                await self.runtime.on_connection(
                    lambda conn: migrations.check_schema(conn, names), commit=False
                )
        except MigrationError as exc:
            # A migration that could not reach the database is an outage, like any other.
            cause = exc.__cause__
            if isinstance(cause, sa.exc.OperationalError | sa.exc.InterfaceError | OSError):
                raise unavailable(cause, self.config.engine.url) from cause
            raise
        except (sa.exc.OperationalError, sa.exc.InterfaceError, OSError) as exc:
            raise unavailable(exc, self.config.engine.url) from exc
        self._schema_ok = True

    async def retry_database(
        self,
        what: str,
        fn: Callable[[JobRepository], T],
        *,
        lease_lost: Callable[[], bool] | None = None,
    ) -> T | None:
        """Run ``fn`` in a transaction until it succeeds, or None once ``OutageRetry`` gives up
        (an outcome write, with ``lease_lost``, is retried for as long as the lease holds)."""
        retry = OutageRetry(self.config.no_heartbeat_timeout, lease_lost)
        while True:
            try:
                return await self.runtime.db(fn)
            except RETRYABLE as exc:
                delay = retry.next_delay(exc)
                if delay is None:
                    return None
                self.errors.report(what, exc, retry_in=delay)
                await self.runtime.sleep(delay)

    # ------------------------------------------------------------------ registry
    def register(self, job: Job) -> Job:
        """Make this node able to run jobs named ``job.name`` (enqueues nothing)."""
        job = self.registry.add(job)
        if self.state == "running":
            self.poller.wake()
        return job

    def declare(self, config: JobConfig) -> bool:
        """Record a recurring job's declaration for ``start()``; False when there is nothing to
        record (a one-time job) or ``start()`` has written its declarations already."""
        if config.job_type is not JobType.RECURRING:
            return False
        with self._lock:
            if self.state in ("new", "starting"):
                self._declared.append(config)
                return True
        return False

    async def schedule_job(self, job: Job) -> str:
        """Register ``job`` and schedule it (see ``Scheduler.schedule_job``)."""
        self.register(job)
        if self.declare(job.config):
            return job.name  # a recurring job's key is its name
        return await self.schedule_now(job.config)

    async def schedule_now(self, config: JobConfig) -> str:
        await self.ensure_schema()
        return await self.runtime.db(lambda repo: schedule(repo, config))

    async def _write_declarations(self, *, then: str | None = None) -> None:
        """Write the rows of the recurring jobs declared so far, and of those declared meanwhile
        (from this thread or another); with ``then``, enter that state once none is left."""
        while True:
            with self._lock:
                if not self._declared:
                    if then is not None and self.state == "starting":
                        self.state = then
                    return
                config = self._declared[0]
            await self.runtime.db(partial(schedule, config=config))
            with self._lock:
                self._declared.pop(0)

    def register_node(self, repo: JobRepository) -> None:
        repo.register_node(
            self.node_id, self.node_name, socket.gethostname(), os.getpid(), self.registry.names()
        )

    # ------------------------------------------------------------------ enqueue and inspect
    async def enqueue(
        self, name: str, params: Any, retries: int | None, run_at: dt.datetime | None
    ) -> str:
        spec = OneTimeSpec(name, params, retries, run_at)
        key = new_key(spec.name)
        await self.ensure_schema()
        await self._insert(lambda repo: [repo.insert_one_time(spec, key=key)], [key])
        return key

    async def enqueue_many(
        self,
        name: str,
        params_list: Iterable[Any],
        retries: int | None,
        run_at: dt.datetime | None,
    ) -> list[str]:
        specs = [OneTimeSpec(name, params, retries, run_at) for params in params_list]
        keys = [new_key(spec.name) for spec in specs]
        await self.ensure_schema()
        return await self._insert(lambda repo: repo.insert_many(specs, keys=keys), keys)

    async def _insert(
        self, insert: Callable[[JobRepository], list[str]], keys: list[str]
    ) -> list[str]:
        """Run an enqueue's one statement (insert and NOTIFY) on the enqueue stream. A connection
        can die between two enqueues without its socket showing it yet: the statement is then
        sent once more, on a fresh connection, with the same keys; if the first did commit, the
        second meets its own rows (a duplicate key), and the enqueue happened exactly once."""
        try:
            return await self.runtime.db(insert, Stream.ENQUEUE)
        except (DatabaseUnavailableError, sa.exc.InterfaceError, OSError) as exc:
            self.log.debug(
                "enqueue failed (%s); sending it again on a new connection",
                exc,
                extra={"event": "job.enqueue_retried"},
            )
        try:
            return await self.runtime.db(insert, Stream.AUTOCOMMIT)
        except sa.exc.IntegrityError as exc:
            if not is_duplicate_key(exc, self.names):
                raise
            return keys

    async def get_job(self, key: str) -> JobRecord | None:
        return await self.runtime.db(lambda repo: repo.get(key))

    async def list_jobs(
        self,
        *,
        name: str | None = None,
        status: JobStatus | str | None = None,
        job_type: JobType | str | None = None,
        limit: int = 100,
    ) -> list[JobRecord]:
        return await self.runtime.db(
            lambda repo: repo.list_jobs(name=name, status=status, job_type=job_type, limit=limit)
        )

    async def list_runs(self, key: str, *, limit: int = 100) -> list[RunRecord]:
        return await self.runtime.db(lambda repo: repo.list_runs(key, limit=limit))

    async def list_nodes(self, *, live_within: dt.timedelta | None = None) -> list[NodeRecord]:
        return await self.runtime.db(lambda repo: repo.list_nodes(live_within=live_within))

    async def cancel_job(self, key: str) -> CancelResult:
        """Cancel a pending job; for a running one, ask its node to stop it (here: at once;
        on another node: at that node's next heartbeat)."""
        result = await self.runtime.db(lambda repo: repo.cancel(key))
        if result.requested:
            for running in self.inflight:
                if running.claimed.key == key:
                    running.stop(StopReason.CANCEL_JOB)
        return result

    async def trigger(self, key: str) -> JobRecord:
        return await self.runtime.db(lambda repo: repo.trigger(key))

    async def retry_job(self, key: str) -> JobRecord:
        return await self.runtime.db(lambda repo: repo.retry_now(key))

    # ------------------------------------------------------------------ running jobs
    def dispatch(self, claimed: ClaimedJob) -> None:
        """Start a claimed job (called by the poller once the claim has committed)."""
        job = self.registry.get(claimed.name)
        if job is None:  # pragma: no cover - names are never unregistered; kept as a guard
            self.runtime.launch(self._release(claimed), "pg_scheduler:release")
            return
        self.attempts.start(claimed, job)

    async def _release(self, claimed: ClaimedJob) -> None:
        await self.runtime.db(lambda repo: repo.release(self.node_id, [claimed.lease_id]))

    def _slot_freed(self) -> None:
        self.poller.slot_freed()

    def on_notify(self, payload: str) -> None:
        self.poller.wake()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Check (or install) the schema, register this node, write the rows of the recurring
        jobs declared so far, and start claiming. Raises if already started."""
        with self._lock:
            if self.state in ("starting", "running"):
                raise SchedulerStateError("the scheduler is already running")
            if self.state != "new":
                raise SchedulerStateError(
                    f"this scheduler was shut down; create a new {self.facade} to start again"
                )
            self.state = "starting"
        try:
            await self.ensure_schema()
            await self.runtime.db(self.register_node)
            self.runtime.start()
            # Running once no declaration is left: one made later is written at once.
            await self._write_declarations(then="running")
        except BaseException:
            with self._lock:
                if self.state == "starting":
                    self.state = "new"
            await self.runtime.close()
            raise
        if self.state != "running":  # shutdown() was called while this start ran
            await self.runtime.close()
            raise SchedulerStateError("the scheduler was shut down while it was starting")
        if self.config.listen:
            self.runtime.start_listener(self.on_notify)
        self.heartbeat.start()
        self.maintenance.start()
        self.poller.start(immediately=self.config.run_immediately)
        self.log.info(
            "node %s started; job names registered: %d",
            self.node_id,
            len(self.registry),
            extra={"event": "node.started", "node_id": self.node_id},
        )

    @property
    def running(self) -> bool:
        return self.state == "running"

    async def shutdown(self, timeout: dt.timedelta | None = None) -> None:
        """Stop claiming, ask running jobs to stop, wait up to ``shutdown_timeout`` for them, and
        hand back the ones still running. When it returns, no row is ``running`` under this
        node's leases. A call made while another is stopping the node waits for that one."""
        with self._lock:
            state = self.state
            if state == "running":
                self.state = "stopping"
            elif state != "stopping":
                self.state = "stopped"
        if state == "stopping":
            await self._stopped.wait(None)
            return
        if state != "running":
            await self.runtime.close()  # a producer-only node may hold kept connections
            return
        try:
            await self._stop(timeout)
        finally:
            with self._lock:
                self.state = "stopped"
            self._stopped.set()

    async def _stop(self, timeout: dt.timedelta | None) -> None:
        wait = (timeout if timeout is not None else self.config.shutdown_timeout).total_seconds()
        self.log.info("node %s stopping", self.node_id, extra={"event": "node.stopping"})
        await self.poller.stop()
        await self.runtime.stop_listener()
        for running in self.inflight:
            running.stop(StopReason.SHUTDOWN)
        if not await self._wait_inflight_empty(wait):
            await self._release_unfinished()
        await self.heartbeat.stop()
        await self.maintenance.stop()
        try:
            await self.runtime.db(lambda repo: repo.deregister_node(self.node_id))
        except (PgSchedulerError, *RETRYABLE) as exc:
            self.log.warning(
                "could not deregister node: %s", exc, extra={"event": "node.deregister_failed"}
            )
        await self.runtime.close()
        self.log.info("node %s stopped", self.node_id, extra={"event": "node.stopped"})

    async def _wait_inflight_empty(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            # Clear, then look, then wait: the last run ending after the look is not missed.
            self._emptied.clear()
            if not len(self.inflight):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await self._emptied.wait(left)

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

    async def run_pending(self) -> list[RunRecord]:
        """Run what is due, here and now, on a node never started (see
        ``Scheduler.run_pending``)."""
        with self._lock:
            if self.state != "new":
                raise SchedulerStateError(
                    f"run_pending() is for a scheduler that is not started (this one is "
                    f"{self.state}): a started node claims and runs due jobs by itself"
                )
        await self.ensure_schema()
        await self._write_declarations()
        ran: list[RunRecord] = []
        try:
            while True:
                names, retries = self.registry.claimable()
                if not names:
                    break
                claimed = await self.runtime.db(
                    partial(_claim_one, self.node_id, names, retries), Stream.CLAIM
                )
                if not claimed:
                    break
                job = self.registry.get(claimed[0].name)
                assert job is not None  # only registered names are claimed
                await self.attempts.run(self.attempts.running(claimed[0], job), here=True)
                run = await self.runtime.db(
                    partial(_run_of_lease, claimed[0].lease_id), Stream.AUTOCOMMIT
                )
                if run is not None:
                    ran.append(run)
        finally:
            await self.runtime.after_pending()
        return ran


def _claim_one(
    node_id: str, names: list[str], retries: list[int], repo: JobRepository
) -> list[ClaimedJob]:
    return repo.claim(node_id, names, 1, retries=retries)


def _run_of_lease(lease_id: uuid.UUID, repo: JobRepository) -> RunRecord | None:
    return repo.run_of_lease(lease_id)
