"""``AsyncScheduler``'s background services: poller, heartbeat and maintenance as asyncio tasks.

Each pass decides exactly what the threaded service decides, by calling the same functions
(``poller.claim_due``, ``heartbeat.renew``/``settle``, ``maintenance.rescue``/``sweep``/``clean``)
through ``AsyncScheduler.transaction``, i.e. ``AsyncSession.run_sync`` on the shared ``JobRepository``.
Only the waiting differs: ``asyncio.Event`` instead of ``threading.Event``.

Stopping a service lets its current pass finish instead of cancelling it: a claim whose commit was
interrupted could leave leased rows that no task runs until their lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from pg_scheduler.db.records import ClaimedJob
from pg_scheduler.node.heartbeat import HeartbeatResult, renew, settle
from pg_scheduler.node.maintenance import (
    MaintenanceResult,
    clean,
    pass_interval,
    plan,
    rescue,
    sweep,
)
from pg_scheduler.node.poller import PollResult, claim_due, failure_delay, sleep_after

from .workers import running_loop

if TYPE_CHECKING:
    from pg_scheduler.aio import AsyncScheduler

#: How long ``stop()`` lets a pass in progress finish before cancelling it.
STOP_GRACE_SECONDS = 10.0


class _Service:
    """A loop on the scheduler's event loop that can be woken early and stopped between passes."""

    name = "service"

    def __init__(self, scheduler: AsyncScheduler) -> None:
        self.scheduler = scheduler
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _start(self, body: Coroutine[Any, Any, None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(body, name=f"pg_scheduler-{self.name}")

    def wake(self) -> None:
        """End the current sleep now (callable from any thread)."""
        loop = self._loop
        if loop is None or running_loop() is loop:
            self._wake.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def _sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``, less if woken or stopped."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=STOP_GRACE_SECONDS)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class AsyncPoller(_Service):
    """Claims due jobs while slots are free, then sleeps until the next due time (or a wake-up)."""

    name = "poller"

    async def run_once(self) -> PollResult:
        """Claim as many due jobs as there are free slots and start them."""
        s = self.scheduler
        free = s.inflight.free_slots(s.config.max_concurrent_jobs)  # jobs still in their code
        names, retries = s.claimable()
        if free <= 0 or not names:
            return PollResult(0, max(free, 0), None)
        # Autocommit, as in the threaded poller: the claim commits as it returns, so its jobs
        # start at once (their tasks run when this one next yields), before the next-due look-up.
        claimed, wait = await s.transaction(
            lambda repo: claim_due(
                repo, s.node_id, names, free, on_claimed=self._dispatch, retries=retries
            ),
            autocommit=True,
        )
        return PollResult(len(claimed), free, wait)

    def _dispatch(self, claimed: list[ClaimedJob]) -> None:
        for job in claimed:
            self.scheduler.dispatch(job)

    def start(self, *, immediately: bool) -> None:
        if immediately:
            self._wake.set()
        self._start(self._run())

    async def _run(self) -> None:
        s = self.scheduler
        interval = s.config.job_check_interval.total_seconds()
        await self._sleep(interval)
        failures = 0
        while not self._stopping:
            # Clear before polling: a wake-up that arrives during the pass is kept for the next.
            self._wake.clear()
            try:
                result = await self.run_once()
                failures = 0
            except Exception as exc:
                failures += 1
                delay = failure_delay(failures, interval)
                s.database_error("poll", exc, retry_in=delay)
                await self._sleep(delay)
                continue
            await self._sleep(sleep_after(result, interval))


class AsyncHeartbeat(_Service):
    """Renews this node's leases in one statement, on a connection of its own, so that neither busy
    jobs nor an exhausted pool can starve it; stops the jobs whose lease was lost."""

    name = "heartbeat"

    def __init__(self, scheduler: AsyncScheduler) -> None:
        super().__init__(scheduler)
        self._conn: AsyncConnection | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> AsyncConnection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = await self.scheduler.engine.connect()
            label = f"pg_scheduler:{self.scheduler.node_id}:heartbeat"[:63]
            await self._conn.execute(
                sa.select(sa.func.set_config("application_name", label, False))
            )
            await self._conn.commit()
        return self._conn

    async def run_once(self) -> HeartbeatResult:
        """Renew this node's leases and mark the node alive; act on lost leases and cancel requests."""
        s = self.scheduler
        async with self._lock:
            running = s.inflight.snapshot()
            leases = [r.lease_id for r in running]
            try:
                held, requested = await s.transaction(
                    lambda repo: renew(
                        repo, s.node_id, leases, s.registered_names(), s.register_node
                    ),
                    connection=await self._connection(),
                )
            except Exception:
                await self._discard()
                raise
        return settle(running, held, requested, inflight=s.inflight, node_id=s.node_id, log=s.log)

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
                await conn.close()

    def start(self) -> None:
        self._start(self._run())

    async def _run(self) -> None:
        interval = self.scheduler.config.heartbeat_interval.total_seconds()
        await self._sleep(interval)
        while not self._stopping:
            try:
                await self.run_once()
                await self._sleep(interval)
            except Exception as exc:
                # Retry soon: a few missed beats are fine, the lease is several intervals long.
                retry = min(1.0, interval)
                self.scheduler.database_error("heartbeat", exc, retry_in=retry)
                await self._sleep(retry)

    async def stop(self) -> None:
        await super().stop()
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()


class AsyncMaintenance(_Service):
    """Stall rescue, the orphan sweep and cleanup of finished one-time jobs, on every node."""

    name = "maintenance"

    def __init__(self, scheduler: AsyncScheduler) -> None:
        super().__init__(scheduler)
        self._last_cleanup = float("-inf")
        self.passes = 0
        """Passes run so far (tests wait on it)."""

    async def run_once(self, *, cleanup: bool | None = None) -> MaintenanceResult:
        """One pass: the stall rescue and the orphan sweep (both held back for a while after a
        database error), and the cleanup of finished jobs when its interval has passed (or when
        ``cleanup`` says so)."""
        s = self.scheduler
        cfg = s.config
        now = time.monotonic()
        cleanup, skip_rescue = plan(
            cfg, now - self._last_cleanup, s.seconds_since_database_error(), cleanup
        )
        rescued = failed = cleaned = orphans = 0
        if not skip_rescue:
            rescued, failed = await s.transaction(lambda repo: rescue(repo, cfg, s.log))
            orphans = await s.transaction(lambda repo: sweep(repo, cfg, s.log))
        if cleanup:
            cleaned = await s.transaction(lambda repo: clean(repo, cfg, s.log))
            self._last_cleanup = now
        self.passes += 1
        return MaintenanceResult(rescued, failed, cleaned, orphans, skip_rescue)

    def start(self) -> None:
        self._start(self._run())

    async def _run(self) -> None:
        interval, first = pass_interval(self.scheduler.config)
        await self._sleep(first)
        while not self._stopping:
            try:
                await self.run_once()
            except Exception as exc:
                self.scheduler.database_error("maintenance", exc, retry_in=interval)
            await self._sleep(interval)
