"""Quickstart: the original PGScheduler README's examples, in Python.

A recurring job on a cron schedule (``*/5 * * * *``, every five minutes), one that runs every
second so you can see it work (six fields: seconds first), and a one-time job that receives JSON
parameters and may be retried three times.

    python examples/quickstart.py

Uses ``PG_SCHEDULER_DATABASE_URL`` if set, else an embedded PostgreSQL in ``./.pg_scheduler``
(``pip install 'sqlalchemy-pg-scheduler[embedded]'``). Runs for a few seconds, checks what happened, exits 0.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
from collections.abc import Iterator

import sqlalchemy as sa

from pg_scheduler import Job, JobConfig, JobContext, JobStatus, Scheduler, SchedulerConfig

PREFIX = os.environ.get("PG_SCHEDULER_TABLE_PREFIX", "quickstart_")
TIMEOUT = 60.0  # seconds: the example fails rather than hang


class MyRecurringJob(Job):
    """A job class implements run(); init() and shutdown() run before and after every run."""

    def init(self, ctx: JobContext) -> None:
        ctx.logger.debug("initialising %s", ctx.job_name)

    def run(self, ctx: JobContext) -> None:
        print(f"{ctx.job_name}: tick {ctx.scheduled_at:%H:%M:%S} on {ctx.node_id}")

    def shutdown(self, ctx: JobContext) -> None:
        ctx.logger.debug("cleaning up after %s", ctx.job_name)


class EverySecond(Job):
    def __init__(self, config: JobConfig) -> None:
        super().__init__(config)
        self.ticks: list[dt.datetime] = []
        self.three = threading.Event()

    def run(self, ctx: JobContext) -> None:
        print(f"{ctx.job_name}: tick {ctx.scheduled_at:%H:%M:%S}")
        self.ticks.append(ctx.scheduled_at)
        if len(self.ticks) >= 3:
            self.three.set()


class MyOneTimeJob(Job):
    def __init__(self, config: JobConfig) -> None:
        super().__init__(config)
        self.received: list[object] = []
        self.done = threading.Event()

    def run(self, ctx: JobContext) -> None:
        # The parameters given when the job was scheduled, as JSON: {"key1": "value1", "key2": 42}
        print(f"{ctx.job_name}: attempt {ctx.attempt}, job parameters: {ctx.params}")
        self.received.append(ctx.params)
        self.done.set()


@contextlib.contextmanager
def database() -> Iterator[str]:
    """``PG_SCHEDULER_DATABASE_URL``, or an embedded PostgreSQL kept in ./.pg_scheduler."""
    url = os.environ.get("PG_SCHEDULER_DATABASE_URL")
    if url:
        yield url
        return
    from pg_scheduler import embedded

    server = embedded.start(".pg_scheduler")
    try:
        yield server.url
    finally:
        server.stop()


def main() -> None:
    every_second = EverySecond(JobConfig.recurring("every_second", "* * * * * *"))
    one_time = MyOneTimeJob(
        JobConfig.one_time("my_one_time_job", {"key1": "value1", "key2": 42}, retries=3)
    )
    with database() as url:
        engine = sa.create_engine(url)
        config = SchedulerConfig(
            engine=engine,
            table_prefix=PREFIX,
            max_concurrent_jobs=10,
            job_check_interval=dt.timedelta(minutes=1),
            create_schema=True,  # run pg_scheduler's migrations at start (the seed's CreateSchema)
        )
        with Scheduler(config) as scheduler:
            every_five_minutes = JobConfig.recurring("my_recurring_job", "*/5 * * * *")
            scheduler.schedule_job(MyRecurringJob(every_five_minutes))
            scheduler.schedule_job(every_second)
            key = scheduler.schedule_job(one_time)  # enqueued once, with its parameters

            assert one_time.done.wait(TIMEOUT), "the one-time job did not run"
            assert every_second.three.wait(TIMEOUT), "the per-second job did not run three times"
        # shutdown() has returned: every outcome is recorded and nothing is left running.
        job = scheduler.get_job(key)
        recurring = scheduler.get_job("my_recurring_job")
        engine.dispose()

    assert job is not None and job.status is JobStatus.COMPLETED, job
    assert one_time.received == [{"key1": "value1", "key2": 42}], one_time.received
    assert len(set(every_second.ticks)) == len(every_second.ticks), "a tick ran twice"
    assert recurring is not None and recurring.next_run is not None
    assert recurring.next_run.minute % 5 == 0 and recurring.next_run.second == 0
    print(f"ok: {key} completed; every_second ran {len(every_second.ticks)} ticks")
    print(f"    my_recurring_job runs next at {recurring.next_run:%H:%M:%S} UTC")
    print(f"    look around: pg-scheduler jobs list --url URL --table-prefix {PREFIX}")


if __name__ == "__main__":
    main()
