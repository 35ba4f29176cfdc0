"""Jobs that misbehave: a job that hangs and ignores cancellation, and exceptions outside the
``Exception`` hierarchy from async jobs. (Exception, KeyboardInterrupt and SystemExit from sync
jobs are in tests/node/test_contract.py.)

Documented behaviour for a hung job: Python cannot kill a thread, so while its node lives the job
keeps its worker slot and its heartbeat keeps its lease (a hang is not a crash; there is no
per-job timeout). Shutdown still returns within ``shutdown_timeout`` and hands the job back, so
another node takes it at once; when the hung code finally returns, its outcome is dropped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from typing import Any

import pytest

from pg_scheduler import Job, JobConfig, JobContext, JobStatus, Scheduler
from pg_scheduler.testing import wait_until


class Hang(Job):
    """Blocks until the test lets it go, ignoring ``ctx.cancelled`` entirely."""

    def __init__(self, config: JobConfig, gate: threading.Event) -> None:
        super().__init__(config)
        self.gate = gate
        self.started = threading.Event()

    def run(self, ctx: JobContext) -> None:
        self.started.set()
        self.gate.wait()


class Quick(Job):
    """Records how many copies of itself run at once on this node."""

    def __init__(self, config: JobConfig) -> None:
        super().__init__(config)
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def run(self, ctx: JobContext) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.15)
        with self.lock:
            self.running -= 1


def status(s: Scheduler, key: str) -> JobStatus | None:
    record = s.get_job(key)
    return record.status if record else None


def test_a_hung_job_keeps_its_slot_and_shutdown_hands_it_to_another_node(
    make_scheduler: Any,
) -> None:
    gate = threading.Event()
    try:
        a: Scheduler = make_scheduler(max_concurrent_jobs=2, node_name="hang_a")
        hang = Hang(JobConfig.one_time("hang"), gate)
        quick = Quick(JobConfig.one_time("quick"))
        a.register(hang)
        a.register(quick)
        a.start()
        key = a.enqueue("hang")
        assert hang.started.wait(10)
        quick_keys = [a.enqueue("quick") for _ in range(6)]
        wait_until(lambda: all(status(a, k) is JobStatus.COMPLETED for k in quick_keys))
        # Its slot stayed counted: the node never ran more than max_concurrent_jobs - 1 others.
        assert quick.most == 1
        # While the node lives, the hung job's lease is renewed, not rescued.
        first = a.get_job(key)
        assert first is not None and first.heartbeat_at is not None
        wait_until(
            lambda: (r := a.get_job(key)) is not None and r.heartbeat_at > first.heartbeat_at
        )
        assert status(a, key) is JobStatus.RUNNING

        b: Scheduler = make_scheduler(node_name="hang_b")
        finished_by_b = threading.Event()
        b.one_time("hang")(lambda ctx: finished_by_b.set())
        b.start()
        started = time.monotonic()
        a.shutdown(dt.timedelta(seconds=1))
        shutdown_s = time.monotonic() - started
        assert shutdown_s < 1 + 5, shutdown_s  # its timeout, plus slack for a loaded machine
        assert finished_by_b.wait(15), "the handed-back job was not taken by the other node"
        taken_over_s = time.monotonic() - started
        wait_until(lambda: status(b, key) is JobStatus.COMPLETED)
        runs = [(r.attempt, r.status.value) for r in reversed(b.list_runs(key))]
        assert runs == [(1, "released"), (1, "completed")]  # the hand-back used no attempt
        print(f"[measured] hung job: shutdown_s={shutdown_s:.2f} taken_over_s={taken_over_s:.2f}")
    finally:
        gate.set()  # the hung thread ends; its late outcome is dropped (lease lost)
    record = b.get_job(key)
    assert record is not None and record.status is JobStatus.COMPLETED and record.attempt == 1


@pytest.mark.parametrize(
    "raise_it",
    [
        pytest.param(lambda: asyncio.current_task().cancel(), id="cancels-itself"),  # type: ignore[union-attr]
        pytest.param(lambda: (_ for _ in ()).throw(asyncio.CancelledError()), id="CancelledError"),
        pytest.param(lambda: (_ for _ in ()).throw(GeneratorExit()), id="GeneratorExit"),
    ],
)
def test_async_jobs_raising_base_exceptions_are_recorded_and_the_node_goes_on(
    make_scheduler: Any, raise_it: Any
) -> None:
    s: Scheduler = make_scheduler(max_concurrent_jobs=1)

    async def misbehave(ctx: JobContext) -> None:
        raise_it()
        await asyncio.sleep(5)

    s.one_time("misbehave")(misbehave)
    s.one_time("fine")(lambda ctx: None)
    with s:
        bad = s.enqueue("misbehave")
        wait_until(lambda: status(s, bad) in {JobStatus.FAILED, JobStatus.CANCELLED}, timeout=15)
        good = s.enqueue("fine")
        wait_until(lambda: status(s, good) is JobStatus.COMPLETED, timeout=15)
    record = s.get_job(bad)
    assert record is not None and record.lease_id is None and record.last_error
