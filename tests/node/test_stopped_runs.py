"""What happens to a run that is asked to stop (README "Outcomes"), and to the node around it.

- ``cancel_job``: the run ends ``cancelled`` whether its code returns or raises; never re-run.
- Shutdown (or a lost lease): code that raises the cancellation (``ctx.raise_if_cancelled()``, or
  ``asyncio.CancelledError``) hands the run back: ``pending``, runnable at once, no attempt used
  up. Code that returns completes; code that raises something else fails the attempt.
- ``ctx.cancel_reason`` tells job code which of these it is.
- Under the threaded ``Scheduler``, no ``async def`` job can wedge the node's event loop.
- A second ``shutdown()`` waits for the first.

Tests that take ``make_node`` run on ``Scheduler`` and ``AsyncScheduler`` alike
(``tests/node/conftest.py``); the threaded event loop's are about ``Scheduler`` only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

from pg_scheduler import CancelReason, JobContext, JobStatus, RunStatus, Scheduler
from pg_scheduler.naming import Names
from pg_scheduler.testing import wait_until
from tests.support.runtimes import Node, Nodes

FOREVER = 30.0


def status(s: Node | Scheduler, key: str) -> JobStatus | None:
    record = s.get_job(key)
    return record.status if record else None


def attempts(s: Node | Scheduler, key: str) -> list[tuple[int, RunStatus]]:
    """The job's runs, oldest first: (attempt, outcome)."""
    return [(r.attempt, r.status) for r in reversed(s.list_runs(key))]


def running_rows(engine: sa.Engine, names: Names) -> int:
    with engine.connect() as conn:
        count = conn.execute(
            sa.text(f"SELECT count(*) FROM {names.jobs_table} WHERE status = 'running'")
        ).scalar_one()
    return int(count)


# ---------------------------------------------------------------------- shutdown: handed back
@pytest.mark.parametrize("code", ["raise_if_cancelled", "async CancelledError"])
def test_a_run_stopped_by_shutdown_that_raises_the_cancellation_is_handed_back(
    make_node: Nodes, code: str
) -> None:
    """retries=0, and still the run goes back to pending, due now, with its attempt not used."""
    s = make_node()
    entered = threading.Event()
    reasons: list[CancelReason | None] = []

    if code == "raise_if_cancelled":

        def job(ctx: JobContext) -> None:
            entered.set()
            ctx.cancelled.wait(FOREVER)
            reasons.append(ctx.cancel_reason)
            ctx.raise_if_cancelled()

    else:

        async def job(ctx: JobContext) -> None:  # type: ignore[misc]
            entered.set()
            try:
                await asyncio.sleep(FOREVER)
            except asyncio.CancelledError:
                reasons.append(ctx.cancel_reason)
                raise

    s.one_time("stopped")(job)
    key = s.enqueue("stopped")
    s.start()
    assert entered.wait(10)
    s.shutdown()
    assert reasons == [CancelReason.SHUTDOWN]
    record = s.get_job(key)
    assert record is not None and record.status is JobStatus.PENDING
    assert (record.attempt, record.max_retries, record.lost_leases) == (0, 0, 0)
    assert record.next_run is not None and record.next_run <= record.updated_at, "due at once"
    assert record.last_error is None, "handing back is not a failure"
    assert attempts(s, key) == [(1, RunStatus.RELEASED)]

    # Another node runs it at once, as the same attempt.
    again = make_node()
    ran: list[int] = []
    again.one_time("stopped")(lambda ctx: ran.append(ctx.attempt))
    with again:
        wait_until(lambda: status(again, key) is JobStatus.COMPLETED, message="re-run")
    assert ran == [1]
    assert attempts(again, key) == [(1, RunStatus.RELEASED), (1, RunStatus.COMPLETED)]


@pytest.mark.parametrize(
    ("ending", "expected"),
    [("returns", JobStatus.COMPLETED), ("raises another error", JobStatus.FAILED)],
)
def test_a_run_stopped_by_shutdown_that_does_not_raise_the_cancellation_is_recorded(
    make_node: Nodes, ending: str, expected: JobStatus
) -> None:
    """Returning completes the run, even when it was asked to stop (which is why the examples use
    ``raise_if_cancelled()``); raising anything else fails the attempt."""
    s = make_node()
    entered = threading.Event()

    def job(ctx: JobContext) -> None:
        entered.set()
        ctx.cancelled.wait(FOREVER)
        if ending != "returns":
            raise ValueError("could not finish")

    s.one_time("stopped")(job)
    key = s.enqueue("stopped")
    s.start()
    assert entered.wait(10)
    s.shutdown()
    assert status(s, key) is expected


# ---------------------------------------------------------------------- cancel_job: cancelled
@pytest.mark.parametrize(
    "ending", ["returns", "raises", "raise_if_cancelled", "async returns from CancelledError"]
)
@pytest.mark.parametrize("asked_by", ["this node", "another process"])
def test_a_run_stopped_by_cancel_job_ends_cancelled_whatever_its_code_does(
    make_node: Nodes, ending: str, asked_by: str
) -> None:
    s = make_node()
    entered = threading.Event()
    reasons: list[CancelReason | None] = []

    if ending.startswith("async"):

        async def victim(ctx: JobContext) -> None:
            entered.set()
            try:
                await asyncio.sleep(FOREVER)
            except asyncio.CancelledError:
                reasons.append(ctx.cancel_reason)
                return  # returns: completed, unless cancel_job asked

    else:

        def victim(ctx: JobContext) -> None:  # type: ignore[misc]
            entered.set()
            ctx.cancelled.wait(FOREVER)
            reasons.append(ctx.cancel_reason)
            if ending == "raises":
                raise RuntimeError("interrupted")
            if ending == "raise_if_cancelled":
                ctx.raise_if_cancelled()

    s.one_time("victim")(victim)
    key = s.enqueue("victim", retries=2)
    with s:
        assert entered.wait(10)
        # Another process (never started, as `pg-scheduler jobs cancel`): the node hears of it
        # at its next heartbeat.
        canceller = s if asked_by == "this node" else make_node()
        assert canceller.cancel_job(key).requested
        wait_until(lambda: status(s, key) is JobStatus.CANCELLED, message="cancelled")
        time.sleep(0.3)  # a re-run would be claimed within a poll; none may happen
    assert reasons == [CancelReason.CANCEL_JOB]
    assert attempts(s, key) == [(1, RunStatus.CANCELLED)]


def test_a_lost_lease_tells_the_code_why(make_node: Nodes, engine: sa.Engine, names: Names) -> None:
    s = make_node(
        heartbeat_interval=dt.timedelta(seconds=30), no_heartbeat_timeout=dt.timedelta(minutes=5)
    )
    entered = threading.Event()
    reasons: list[CancelReason | None] = []

    def job(ctx: JobContext) -> None:
        entered.set()
        ctx.cancelled.wait(FOREVER)
        reasons.append(ctx.cancel_reason)
        ctx.raise_if_cancelled()

    s.one_time("taken")(job)
    key = s.enqueue("taken")
    with s:
        assert entered.wait(10)
        with engine.begin() as conn:  # as if another node had rescued it
            conn.execute(
                sa.text(
                    f"UPDATE {names.jobs_table} SET lease_id = gen_random_uuid() WHERE key = :k"
                ),
                {"k": key},
            )
        assert len(s.call(lambda n: n.heartbeat.run_once()).lost) == 1
        wait_until(lambda: reasons == [CancelReason.LEASE_LOST], message="the code saw why")


# ---------------------------------------------------------------------- the threaded event loop
@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt])
def test_an_async_job_raising_a_base_exception_fails_and_the_node_goes_on(
    make_scheduler: Any, engine: sa.Engine, names: Names, exc: type[BaseException]
) -> None:
    s = make_scheduler(max_concurrent_jobs=1)

    async def raiser(ctx: JobContext) -> None:
        await asyncio.sleep(0)
        raise exc()

    async def fine(ctx: JobContext) -> None:
        await asyncio.sleep(0)

    s.one_time("raiser")(raiser)
    s.one_time("fine")(fine)
    with s:
        bad = s.enqueue("raiser")
        wait_until(lambda: status(s, bad) is JobStatus.FAILED, message="the attempt failed")
        good = s.enqueue("fine")
        wait_until(lambda: status(s, good) is JobStatus.COMPLETED, message="later async jobs run")
    record = s.get_job(bad)
    assert record is not None and exc.__name__ in (record.last_error or "")
    assert running_rows(engine, names) == 0


def test_an_event_loop_that_dies_anyway_hands_its_runs_back_and_is_restarted(
    make_scheduler: Any,
    engine: sa.Engine,
    names: Names,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A job makes a loop callback raise SystemExit (asyncio lets it out of run_forever): every
    run on that loop is handed back and runs again, at once, on a new loop."""
    s = make_scheduler()
    waiting = threading.Event()
    runs_of: dict[str, int] = {"killer": 0, "bystander": 0}

    async def bystander(ctx: JobContext) -> None:
        runs_of["bystander"] += 1
        waiting.set()
        if runs_of["bystander"] == 1:
            await asyncio.sleep(FOREVER)  # still on the loop when it dies

    async def killer(ctx: JobContext) -> None:
        runs_of["killer"] += 1
        if runs_of["killer"] == 1:
            asyncio.get_running_loop().call_soon(sys.exit, 3)
            await asyncio.sleep(FOREVER)

    s.one_time("bystander")(bystander)
    s.one_time("killer")(killer)
    with caplog.at_level(logging.ERROR, logger="pg_scheduler"), s:
        calm = s.enqueue("bystander")
        assert waiting.wait(10)
        fatal = s.enqueue("killer")
        for key in (calm, fatal):
            wait_until(lambda k=key: status(s, k) is JobStatus.COMPLETED, message="re-run")
            assert attempts(s, key) == [(1, RunStatus.RELEASED), (1, RunStatus.COMPLETED)]
        assert running_rows(engine, names) == 0
    assert runs_of == {"killer": 2, "bystander": 2}
    assert "worker.loop_died" in [getattr(r, "event", "") for r in caplog.records]


# ---------------------------------------------------------------------- shutdown twice
def test_a_second_shutdown_waits_for_the_first(make_node: Nodes) -> None:
    s = make_node(shutdown_timeout=dt.timedelta(seconds=10))
    entered, finished = threading.Event(), threading.Event()

    def slow(ctx: JobContext) -> None:
        entered.set()
        time.sleep(1.5)  # ignores cancellation; ends within the shutdown timeout
        finished.set()

    s.one_time("slow")(slow)
    key = s.enqueue("slow")
    s.start()
    assert entered.wait(10)
    first = threading.Thread(target=s.shutdown)
    first.start()
    wait_until(lambda: not s.running, message="the first shutdown is stopping the node")
    s.shutdown()
    assert finished.is_set(), "the second shutdown returned before the node had stopped"
    assert status(s, key) is JobStatus.COMPLETED
    first.join(10)
    assert not first.is_alive()
