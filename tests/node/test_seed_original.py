"""The original Go library's own tests (G1 suite, plus the G3/PGLN cases that apply), in our API.

Where the original asserted behaviour that was a bug, the test asserts the corrected behaviour and
a comment says what the original expected and why it was wrong. ``TestCalculateNextRun`` lives in
``tests/unit/test_cron.py``.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

from pg_scheduler import Job, JobConfig, JobContext, JobStatus, JobType, Names, errors
from pg_scheduler.models import Models
from pg_scheduler.testing import wait_until


class Noop(Job):
    def run(self, ctx: JobContext) -> None:
        time.sleep(0.02)  # long enough for a non-zero execution time


class Failing(Job):
    def run(self, ctx: JobContext) -> None:
        raise RuntimeError("always fails")


def set_columns(engine: sa.Engine, models: Models, key: str, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(sa.update(models.jobs).where(models.jobs.c.key == key).values(**values))


def test_new_scheduler_table_name() -> None:
    # TestNewScheduler / TestNewSchedulerWithCustomSchema
    assert Names("test_").jobs_table == "test_scheduled_jobs"
    assert Names("test_", "custom_schema").qualified("test_scheduled_jobs") == (
        "custom_schema.test_scheduled_jobs"
    )
    assert Names().jobs_table == "scheduled_jobs"  # the original's name for the empty prefix


def test_schedule_job_creates_one_row(make_scheduler: Any) -> None:
    # TestScheduleJob: scheduling `* * * * *` twice still gives exactly one row for the name.
    s = make_scheduler()
    s.schedule_job(Noop(JobConfig.recurring("every_minute", "* * * * *")))
    s.schedule_job(Noop(JobConfig.recurring("every_minute", "* * * * *")))
    with s:  # declarations are written by start()
        s.schedule_job(Noop(JobConfig.recurring("every_minute", "* * * * *")))
        rows = s.list_jobs(name="every_minute")
    assert len(rows) == 1 and rows[0].key == "every_minute"


def test_acquire_and_run_two_recurring_jobs(make_scheduler: Any) -> None:
    # TestAcquireLockAndRun: two due recurring jobs are both claimed and run.
    s = make_scheduler()
    with s:
        for name in ("first", "second"):
            s.schedule_job(Noop(JobConfig.recurring(name, "0 0 1 1 *")))
            s.trigger(name)
        wait_until(
            lambda: all(
                (r := s.get_job(n)) is not None and r.last_success_at is not None
                for n in ("first", "second")
            )
        )


def test_check_and_reset_timed_out_jobs(
    make_scheduler: Any, engine: sa.Engine, models: Models
) -> None:
    # TestCheckAndResetTimedOutJobs: a running one-time job whose heartbeat is 5 minutes old is
    # reset to pending. The original also decremented its "remaining retries" (2 -> 1); here a
    # lost run is not a failure and uses up no attempt: attempts_left stays 3 (of retries=2), the
    # loss is counted in lost_leases instead (bounded by max_lost_leases).
    s = make_scheduler(no_heartbeat_timeout=dt.timedelta(minutes=1))
    s.register(Noop(JobConfig.one_time("stalled")))
    key = s.enqueue("stalled", retries=2)
    with engine.begin() as conn:
        conn.execute(
            sa.update(models.jobs)
            .where(models.jobs.c.key == key)
            .values(
                status="running",
                lease_id=sa.func.gen_random_uuid(),
                node_id="some-dead-node",
                heartbeat_at=sa.func.now() - dt.timedelta(minutes=5),
                attempt=1,
            )
        )
    assert s.maintenance.run_once(cleanup=False).rescued == 1
    record = s.get_job(key)
    assert record is not None and record.status is JobStatus.PENDING and record.lease_id is None
    assert (record.attempts_left, record.lost_leases) == (3, 1)


def test_job_config_constructors() -> None:
    # TestNewRecurringJobConfig / TestNewOneTimeJobConfig
    recurring = JobConfig.recurring("r", "*/5 * * * *")
    assert (recurring.name, recurring.cron, recurring.job_type) == (
        "r",
        "*/5 * * * *",
        JobType.RECURRING,
    )
    one = JobConfig.one_time("o", {"key1": "value1", "key2": 42}, retries=5)
    assert (one.name, one.cron, one.job_type, one.retries) == ("o", None, JobType.ONE_TIME, 5)
    assert one.params == {"key1": "value1", "key2": 42}
    with pytest.raises(errors.ConfigError, match="retries"):
        JobConfig.one_time("o", retries=-1)
    with pytest.raises(errors.InvalidJobNameError, match="empty"):
        JobConfig.one_time("")
    with pytest.raises(errors.InvalidCronError):
        JobConfig.recurring("r", "invalid cron")


def test_job_keys(make_scheduler: Any) -> None:
    # TestGetJobKey: a recurring key is its name; a one-time key is name#uuid (ours: version 7).
    s = make_scheduler()
    assert s.schedule_job(Noop(JobConfig.recurring("rec", "* * * * *"))) == "rec"
    key = s.schedule_job(Noop(JobConfig.one_time("one_time_job")))
    assert key.startswith("one_time_job#") and len(key) == len("one_time_job") + 1 + 36


def test_run_recurring_job(make_scheduler: Any) -> None:
    # TestRunJob: after a run the job is pending again, unclaimed, next run in the future, with an
    # execution time and a success time.
    s = make_scheduler()
    with s:
        s.schedule_job(Noop(JobConfig.recurring("runner", "0 0 1 1 *")))
        s.trigger("runner")
        wait_until(lambda: (r := s.get_job("runner")) is not None and r.last_success_at is not None)
    record = s.get_job("runner")
    assert record is not None
    assert record.status is JobStatus.PENDING and record.lease_id is None
    assert record.next_run is not None and record.last_success_at is not None
    assert record.next_run > record.last_success_at
    assert record.execution_time_ms is not None and record.execution_time_ms > 0


def test_mark_job_failed(make_scheduler: Any) -> None:
    # TestMarkJobFailed. The original expected a failed recurring job to end in status 'failed' —
    # and it then never ran again (bug G1-1). Ours goes back to its schedule, counting the failure.
    s = make_scheduler()
    with s:
        s.schedule_job(Failing(JobConfig.recurring("bad_recurring", "0 0 1 1 *")))
        s.trigger("bad_recurring")
        wait_until(
            lambda: (r := s.get_job("bad_recurring")) is not None and r.consecutive_failures == 1
        )
        s.register(Failing(JobConfig.one_time("bad_one_time")))
        key = s.enqueue("bad_one_time", retries=2)
        wait_until(lambda: (r := s.get_job(key)) is not None and r.status is JobStatus.FAILED)
    recurring = s.get_job("bad_recurring")
    assert recurring is not None and recurring.status is JobStatus.PENDING
    assert recurring.last_failure_at is not None and recurring.next_run is not None
    one = s.get_job(key)
    assert one is not None and one.consecutive_failures == 3 and one.attempt == 3


def test_update_heartbeat(make_scheduler: Any) -> None:
    # TestUpdateHeartbeat: a running job's heartbeat moves forward.
    s = make_scheduler()
    gate = threading.Event()

    def wait_for_gate(ctx: JobContext) -> None:
        gate.wait(10)

    s.one_time("beating")(wait_for_gate)
    with s:
        key = s.enqueue("beating")
        wait_until(lambda: (r := s.get_job(key)) is not None and r.heartbeat_at is not None)
        first = s.get_job(key)
        assert first is not None and first.heartbeat_at is not None
        wait_until(
            lambda: (
                (r := s.get_job(key)) is not None
                and r.heartbeat_at is not None
                and r.heartbeat_at > first.heartbeat_at
            )  # type: ignore[operator]
        )
        gate.set()


def test_shutdown_keeps_this_instances_registry(make_scheduler: Any) -> None:
    # TestShutdown expected the registry to be empty after Shutdown: the original's registry was a
    # process-wide global wiped by any instance's Shutdown (bug G1-12). Ours belongs to the instance.
    s = make_scheduler()
    s.schedule_job(Noop(JobConfig.recurring("kept", "* * * * *")))
    s.start()
    s.shutdown()
    assert s.registered_names() == ["kept"]
    other = make_scheduler()
    assert other.registered_names() == []


def test_failed_one_time_job_cleaner(
    make_scheduler: Any, engine: sa.Engine, models: Models
) -> None:
    # TestFailedOneTimeJobCleaner: a failed one-time row is deleted by the cleaner. The original
    # deleted it within the hour whatever its age (no retention, bug G1-11); ours keeps it for
    # finished_job_retention.
    s = make_scheduler(finished_job_retention=dt.timedelta(hours=1))
    s.register(Failing(JobConfig.one_time("doomed")))
    old = s.enqueue("doomed")
    young = s.enqueue("doomed")
    for key, age in ((old, dt.timedelta(hours=2)), (young, dt.timedelta(minutes=5))):
        set_columns(
            engine, models, key, status="failed", next_run=None, finished_at=sa.func.now() - age
        )
    assert s.maintenance.run_once(cleanup=True).cleaned == 1
    assert s.get_job(old) is None and s.get_job(young) is not None


def test_process_recurring_and_one_time_jobs(make_scheduler: Any) -> None:
    # TestProcessJobs: one recurring and one one-time job (retries 1) both run.
    s = make_scheduler()
    with s:
        s.schedule_job(Noop(JobConfig.recurring("rec", "0 0 1 1 *")))
        s.trigger("rec")
        key = s.schedule_job(Noop(JobConfig.one_time("one", retries=1)))
        wait_until(lambda: (r := s.get_job(key)) is not None and r.status is JobStatus.COMPLETED)
        wait_until(lambda: (r := s.get_job("rec")) is not None and r.last_success_at is not None)


def test_orphaned_job_monitor(make_scheduler: Any, engine: sa.Engine, models: Models) -> None:
    # TestOrphanedJobMonitor: an old row of a name nobody registered is deleted; a registered job
    # is kept. The original decided from the sweeping node's own registry, so a job registered on
    # only some nodes was deleted by the others (and, in G3, brand-new rows too); ours asks every
    # node that was alive within the timeout.
    s = make_scheduler(
        orphaned_job_timeout=dt.timedelta(hours=1), no_heartbeat_timeout=dt.timedelta(seconds=2)
    )
    s.register(Noop(JobConfig.one_time("known")))
    with s:
        known = s.enqueue("known", run_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1))
        orphan = s.enqueue(
            "forgotten", run_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
        )
        fresh = s.enqueue("forgotten_too")
        for key in (known, orphan):
            set_columns(engine, models, key, created_at=sa.func.now() - dt.timedelta(hours=2))
        s.maintenance.run_once()  # the sweep runs on every pass (the background's may come first)
    assert s.get_job(orphan) is None
    assert s.get_job(known) is not None and s.get_job(fresh) is not None


def test_register_duplicate_job(make_scheduler: Any) -> None:
    # G3 TestRegisterDuplicateJob: another job under a taken name is refused.
    s = make_scheduler()
    s.register(Noop(JobConfig.one_time("dup")))
    with pytest.raises(errors.DuplicateJobError, match="already registered"):
        s.register(Failing(JobConfig.one_time("dup")))


def test_cancel_non_existent_job(make_scheduler: Any) -> None:
    # G3 TestCancelNonExistentJob
    with pytest.raises(errors.JobNotFoundError):
        make_scheduler().cancel_job("missing#00000000-0000-0000-0000-000000000000")


def test_max_running_jobs(make_scheduler: Any) -> None:
    # G3 TestSchedulerMaxRunningJobs: limit 2, four jobs of 0.5 s: exactly 2 run at first, never
    # more than 2, and all four succeed.
    s = make_scheduler(max_concurrent_jobs=2)
    running = 0
    peak = 0
    lock = threading.Lock()

    def work(ctx: JobContext) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.5)
        with lock:
            running -= 1

    s.one_time("work")(work)
    keys = s.enqueue_many("work", [{}] * 4)
    with s:
        wait_until(lambda: peak == 2)
        wait_until(
            lambda: all(
                (r := s.get_job(k)) is not None and r.status is JobStatus.COMPLETED for k in keys
            ),
            timeout=15,
        )
    assert peak == 2 and running == 0
