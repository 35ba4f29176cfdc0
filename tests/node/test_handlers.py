"""Handlers and declarations (issue 18, items 3-5), on ``Scheduler`` and ``AsyncScheduler`` alike.

- What an ``enqueue`` leaves unsaid (``retries``) is stored as NULL and resolved from the handler
  by the node that runs the job; explicit arguments win.
- ``run_pending()`` on a scheduler that was never started claims and runs what is due, in the
  calling thread (or loop), and returns the runs it recorded.
- Declaring jobs (``register``, the decorators, ``schedule_job`` of a recurring job) never touches
  the database before ``start()``, which writes them.

Tests that take ``make_node`` run on both runtimes (``tests/node/conftest.py``); the others are
about one of them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from pg_scheduler import (
    Job,
    JobConfig,
    JobContext,
    JobStatus,
    RetryBackoff,
    RunStatus,
    Scheduler,
    SchedulerConfig,
    errors,
)
from pg_scheduler.aio import AsyncScheduler
from pg_scheduler.cli import views
from pg_scheduler.naming import Names
from pg_scheduler.testing import wait_until
from tests.support.runtimes import Nodes, node, until

#: An engine that cannot connect (nothing listens on port 1): "the database is down".
DOWN_URL = "postgresql+psycopg://nobody@127.0.0.1:1/nowhere"
#: A retry waits an hour: run_pending() runs only the first attempt.
SLOW_RETRIES = RetryBackoff(base=dt.timedelta(hours=1), jitter=0)


def always_fails(ctx: JobContext) -> None:
    raise ValueError(f"boom on attempt {ctx.attempt}")


# ---------------------------------------------------------------------- 3. handler defaults


def test_the_runners_handler_decides_the_retries_of_a_job_enqueued_without_it(
    make_node: Nodes,
) -> None:
    web = make_node()  # registers nothing: a web process
    worker = make_node()
    attempts: list[int] = []

    def greet(ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        assert ctx.max_retries == 2
        raise ValueError("boom")

    worker.one_time("greet", retries=2)(worker.code(greet))
    key = web.enqueue("greet", {"to": "a"})
    explicit = web.enqueue("greet", {"to": "b"}, retries=0)  # said at enqueue: it wins
    explicit_one = web.enqueue("greet", {"to": "d"}, retries=1)
    many = web.enqueue_many("greet", [{"to": "c"}])
    stored = web.get_job(key)
    assert stored is not None and stored.max_retries is None  # left to the handler
    assert web.get_job(explicit).max_retries == 0
    assert web.get_job(many[0]).max_retries is None
    with worker:
        for k in (key, explicit, explicit_one, many[0]):
            wait_until(lambda k=k: web.status(k) is JobStatus.FAILED, message=f"{k} failed")
    assert len(web.list_runs(key)) == 3
    assert len(web.list_runs(many[0])) == 3
    assert len(web.list_runs(explicit)) == 1
    assert len(web.list_runs(explicit_one)) == 2
    done = web.get_job(key)
    assert done is not None and done.max_retries == 2 and done.attempt == 3


def test_an_enqueue_in_the_callers_session_leaves_the_retries_to_the_handler(
    make_scheduler: Any, engine: sa.Engine
) -> None:
    web = make_scheduler()
    with sessionmaker(engine).begin() as session:
        key = web.enqueue("greet", session=session)
    worker = make_scheduler(retry_backoff=SLOW_RETRIES)
    worker.one_time("greet", retries=1)(always_fails)
    assert [run.status for run in worker.run_pending()] == [RunStatus.FAILED]
    record = web.get_job(key)
    assert record is not None and record.max_retries == 1 and record.status is JobStatus.PENDING


def test_jobs_list_shows_the_handlers_retries_as_such(make_node: Nodes) -> None:
    web = make_node()
    key = web.enqueue("greet")
    record = web.get_job(key)
    assert record is not None
    assert views.attempts_text(record) == "0/handler's"
    assert record.attempts_left is None
    worker = make_node(retry_backoff=SLOW_RETRIES)
    worker.one_time("greet", retries=3)(always_fails)
    worker.run_pending()
    record = web.get_job(key)
    assert record is not None and views.attempts_text(record) == "1/4"
    assert record.attempts_left == 3


# ---------------------------------------------------------------------- 4. run_pending


def test_run_pending_runs_due_jobs_in_the_caller_on_a_scheduler_never_started(
    make_node: Nodes,
) -> None:
    """In the calling thread (``Scheduler``: sync and async code alike), or the calling loop
    (``AsyncScheduler``: async code; sync code on a worker thread)."""
    s = make_node()
    sync_threads: list[int] = []
    async_callers: list[tuple[int, asyncio.AbstractEventLoop]] = []

    @s.one_time("in_thread")
    def in_thread(ctx: JobContext) -> None:
        sync_threads.append(threading.get_ident())

    @s.one_time("async_in_thread")
    async def async_in_thread(ctx: JobContext) -> None:
        async_callers.append((threading.get_ident(), asyncio.get_running_loop()))

    s.one_time("fails")(always_fails)
    keys = [s.enqueue("in_thread", {"n": n}) for n in range(2)]
    keys.append(s.enqueue("async_in_thread"))
    failing = s.enqueue("fails")
    later = s.enqueue("in_thread", run_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    not_mine = s.enqueue("no_handler_here")

    runs = s.run_pending()

    if s.loop is None:
        caller = threading.get_ident()
        assert sync_threads == [caller] * 2
        assert [thread for thread, _ in async_callers] == [caller]
    else:
        assert len(sync_threads) == 2
        assert [loop for _, loop in async_callers] == [s.loop.loop]  # the calling loop
    assert sorted((r.job_key, r.status) for r in runs) == sorted(
        [(k, RunStatus.COMPLETED) for k in keys] + [(failing, RunStatus.FAILED)]
    )
    failed_run = next(r for r in runs if r.job_key == failing)
    assert failed_run.error is not None and "boom on attempt 1" in failed_run.error
    for key in keys:
        assert s.status(key) is JobStatus.COMPLETED
    assert s.status(failing) is JobStatus.FAILED
    assert s.status(later) is JobStatus.PENDING
    assert s.status(not_mine) is JobStatus.PENDING
    assert s.run_pending() == []
    assert not s.running and s.list_nodes() == []  # it never became a node
    with s, pytest.raises(errors.SchedulerStateError, match="not started"):
        s.run_pending()


def test_run_pending_writes_the_declared_recurring_jobs_first(make_node: Nodes) -> None:
    s = make_node()
    ticks: list[dt.datetime] = []

    @s.recurring("every_hour", "@hourly")
    def every_hour(ctx: JobContext) -> None:
        ticks.append(ctx.scheduled_at)

    assert s.run_pending() == []  # written, not due
    s.trigger("every_hour")
    runs = s.run_pending()
    assert [(r.job_key, r.status) for r in runs] == [("every_hour", RunStatus.COMPLETED)]
    assert len(ticks) == 1


# ---------------------------------------------------------------------- 5. declarations


JOBS_MODULE = """
import sqlalchemy as sa
from pg_scheduler import Job, JobConfig, Scheduler, SchedulerConfig

engine = sa.create_engine({url!r})
scheduler = Scheduler(SchedulerConfig(engine=engine, table_prefix="app_"))


class Cleanup(Job):
    def run(self, ctx):
        pass


@scheduler.recurring("report", "*/5 * * * *", retries=1)
def report(ctx):
    pass


@scheduler.one_time("greet", retries=2)
def greet(ctx):
    pass


scheduler.register(Cleanup(JobConfig.one_time("cleanup_once")))
KEY = scheduler.schedule_job(Cleanup(JobConfig.recurring("cleanup", "@daily")))
"""


def test_importing_a_jobs_module_works_while_the_database_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "downjobs.py").write_text(JOBS_MODULE.format(url=DOWN_URL))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = importlib.import_module("downjobs")
        scheduler: Scheduler = module.scheduler
        assert module.KEY == "cleanup"
        assert sorted(scheduler.registered_names()) == [
            "cleanup",
            "cleanup_once",
            "greet",
            "report",
        ]
        with pytest.raises(errors.DatabaseUnavailableError):
            scheduler.start()
    finally:
        sys.modules.pop("downjobs", None)


def test_async_declarations_need_no_database(names: Names) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    async def main() -> None:
        engine = create_async_engine(DOWN_URL.replace("psycopg", "psycopg_async"))
        s = AsyncScheduler(SchedulerConfig(engine=engine, table_prefix=names.prefix))
        s.recurring("report", "*/5 * * * *")(always_fails)
        s.one_time("greet")(always_fails)
        key = await s.schedule_job(Job_(JobConfig.recurring("cleanup", "@daily")))
        assert key == "cleanup"
        with pytest.raises(errors.DatabaseUnavailableError):
            await s.start()
        await engine.dispose()

    asyncio.run(main())


class Job_(Job):
    def run(self, ctx: JobContext) -> None:
        pass


def test_declarations_are_written_by_start(make_node: Nodes) -> None:
    s = make_node()
    s.recurring("report", "*/5 * * * *", retries=1)(always_fails)
    assert s.schedule_job(Job_(JobConfig.recurring("cleanup", "@daily"))) == "cleanup"
    other = make_node()  # looks at the tables
    assert other.list_jobs() == []
    with s:
        assert sorted(j.key for j in other.list_jobs()) == ["cleanup", "report"]
        assert other.get_job("report").max_retries == 1
        # Once started, a declaration is written at once.
        assert s.schedule_job(Job_(JobConfig.recurring("late", "@daily"))) == "late"
        assert other.get_job("late") is not None


def test_async_declarations_from_another_thread_after_start_run(
    async_url: str, names: Names
) -> None:
    async def main() -> None:
        async with node(async_url, names) as s:
            ran: list[str] = []
            async with s:
                errors_seen: list[BaseException] = []

                def declare() -> None:
                    try:

                        @s.recurring("from_thread", "* * * * * *")
                        async def from_thread(ctx: JobContext) -> None:
                            ran.append("decorated")

                        # schedule_job awaited on a loop of that thread's own
                        job = Job_(JobConfig.recurring("from_thread_loop", "@daily"))
                        asyncio.run(s.schedule_job(job))
                    except BaseException as exc:
                        errors_seen.append(exc)

                thread = threading.Thread(target=declare)
                thread.start()
                await asyncio.get_running_loop().run_in_executor(None, thread.join)
                assert errors_seen == []
                await until(lambda: ran, message="the job declared from a thread ran")
                assert await s.get_job("from_thread_loop") is not None

    asyncio.run(main())


def test_async_declaration_whose_loop_is_gone_raises_a_clear_error(
    async_url: str, names: Names
) -> None:
    made: list[AsyncScheduler] = []

    async def main() -> None:
        async with node(async_url, names) as s, s:
            made.append(s)

    asyncio.run(main())  # that loop is closed now
    with pytest.raises(errors.SchedulerStateError, match="event loop is not running"):
        made[0].recurring("too_late", "@daily")(always_fails)


def test_run_pending_also_runs_what_its_jobs_enqueue(make_node: Nodes) -> None:
    s = make_node()
    order: list[str] = []

    if s.loop is None:

        @s.one_time("first")
        def first(ctx: JobContext) -> None:
            order.append("first")
            s.enqueue("second")

    else:

        @s.one_time("first")
        async def first_async(ctx: JobContext) -> None:
            order.append("first")
            await s.scheduler.enqueue("second")

    @s.one_time("second")
    def second(ctx: JobContext) -> None:
        order.append("second")

    key = s.enqueue("first")
    runs = s.run_pending()
    assert order == ["first", "second"]
    assert [r.name for r in runs] == ["first", "second"] and runs[0].job_key == key
    assert all(r.status is RunStatus.COMPLETED for r in runs)
