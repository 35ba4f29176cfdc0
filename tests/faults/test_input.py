"""Poison input: unstorable params at the scheduler's boundary, bad cron strings at JobConfig, a
row whose params were corrupted in SQL, rows of job names no node knows.

(The full list of unstorable params at the repository level is in test_params.py; hostile table
prefixes, rejected before any connection, in test_naming.py.)
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from pg_scheduler import Job, JobConfig, JobContext, JobStatus, Scheduler, errors
from pg_scheduler.models import Models
from pg_scheduler.naming import Names
from pg_scheduler.testing import wait_until
from tests.support.factories import ago, count_jobs, make_job, make_node, update_job


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


class Unserialisable:
    pass


@pytest.mark.parametrize(
    ("params", "error", "reason"),
    [
        ({"obj": Unserialisable()}, errors.PayloadNotJSONError, "not JSON-serialisable"),
        ({"tags": {"a", "b"}}, errors.PayloadNotJSONError, "not JSON-serialisable"),
        ({"x": float("nan")}, errors.PayloadNotJSONError, "NaN or infinity"),
        ({"s": "a\x00b"}, errors.PayloadNotJSONError, "NUL"),
        ({"blob": "x" * (10 * 1024 * 1024)}, errors.PayloadTooLargeError, "max_params_bytes"),
        (nested(100_000), errors.PayloadNotJSONError, "nested too deeply"),
    ],
    ids=["object", "set", "nan", "nul", "10mb", "nested-100000"],
)
def test_unstorable_params_raise_a_specific_error_and_write_nothing(
    make_scheduler: Any, engine: sa.Engine, models: Models, params: Any, error: type, reason: str
) -> None:
    s: Scheduler = make_scheduler()
    s.one_time("takes_params")(lambda ctx: None)
    with pytest.raises(error, match=reason):
        s.enqueue("takes_params", params)
    with pytest.raises(error, match=reason):
        s.enqueue_many("takes_params", [{"fine": 1}, params])  # one bad element: none written
    with pytest.raises(error, match=reason):
        JobConfig.one_time("takes_params", params)
    assert count_jobs(engine, models) == 0


# reliability.md §5.5 X8, as croniter 7 treats them, plus the seconds-field cases.
BAD_CRON = [
    "61 * * * *",
    "",
    "@every 5m",
    "*/0 * * * *",
    "1-100000000 * * * *",
    "\u0665 * * * *",  # Arabic-Indic digit five
    "0 0 31 2 *",  # valid syntax, never fires
    "* * * * * * *",  # seven fields (years)
    "60 * * * * *",  # seconds first: 60 is out of range
]


@pytest.mark.parametrize("cron", BAD_CRON)
def test_bad_cron_strings_raise_at_job_config(cron: str) -> None:
    with pytest.raises(errors.InvalidCronError) as caught:
        JobConfig.recurring("bad_cron", cron)
    assert repr(cron.strip()) in str(caught.value)


class Greeter(Job):
    """Expects its params to be an object with a ``who``."""

    def __init__(self, config: JobConfig) -> None:
        super().__init__(config)
        self.greeted: list[str] = []

    def run(self, ctx: JobContext) -> None:
        self.greeted.append(ctx.params["who"])


@pytest.mark.parametrize("corrupt", ['"just a string"', "[1, 2, 3]", "null", '{"whom": 1}'])
def test_a_row_whose_params_were_corrupted_in_sql_fails_alone(
    make_scheduler: Any, engine: sa.Engine, names: Names, corrupt: str
) -> None:
    s: Scheduler = make_scheduler(max_concurrent_jobs=1)
    job = Greeter(JobConfig.one_time("greet"))
    s.register(job)
    bad = s.enqueue("greet", {"who": "bad"})
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {names.jobs_table} SET params = CAST(:p AS jsonb) WHERE key = :k"),
            {"p": corrupt, "k": bad},
        )
    good = s.enqueue("greet", {"who": "good"})
    with s:
        wait_until(lambda: (r := s.get_job(bad)) is not None and r.status is JobStatus.FAILED)
        wait_until(lambda: (r := s.get_job(good)) is not None and r.status is JobStatus.COMPLETED)
    record = s.get_job(bad)
    assert record is not None
    # The job's own error, with its type, is what the operator sees.
    assert (record.last_error or "").split(":")[0] in {"TypeError", "KeyError"}, record.last_error
    assert job.greeted == ["good"]


def test_rows_of_unknown_job_names_are_left_alone_until_the_orphan_rule(
    make_scheduler: Any, engine: sa.Engine, models: Models
) -> None:
    """A row no node registered is never claimed; it is deleted only when it is older than
    orphaned_job_timeout and no node registered its name within that time."""
    s: Scheduler = make_scheduler(orphaned_job_timeout=dt.timedelta(minutes=10))
    s.one_time("known")(lambda ctx: None)
    stranger = make_job(engine, models, name="nobody_knows_me")
    recent = make_job(engine, models, name="nobody_knows_me_either", created_at=ago(minutes=9))
    # Registered by a node seen recently elsewhere: not an orphan even though this node lacks it.
    elsewhere = make_job(engine, models, name="other_nodes_job", created_at=ago(hours=1))
    make_node(engine, models, node_id="other:1:abc", job_names=["other_nodes_job"])
    with s:
        known = s.enqueue("known")
        wait_until(lambda: (r := s.get_job(known)) is not None and r.status is JobStatus.COMPLETED)
        s.maintenance.run_once(cleanup=True)
        for key in (stranger.key, recent.key, elsewhere.key):
            record = s.get_job(key)
            assert record is not None and record.status is JobStatus.PENDING
            assert record.attempt == 0 and record.node_id is None  # never claimed
        update_job(engine, models, stranger.key, created_at=ago(minutes=11))
        # The sweep runs on every pass: this one, or the background's if it came first.
        s.maintenance.run_once()
    assert s.get_job(stranger.key) is None
    assert s.get_job(recent.key) is not None and s.get_job(elsewhere.key) is not None


def test_a_recurring_row_whose_cron_was_corrupted_in_sql_disables_only_itself(
    make_scheduler: Any, engine: sa.Engine, models: Models
) -> None:
    """X8: a bad schedule already in the table (written by hand, or by an older version) must not
    stop the rescue of other stalled jobs, nor the node's loop."""
    s: Scheduler = make_scheduler()
    s.one_time("plain")(lambda ctx: None)
    s.register(Greeter(JobConfig.recurring("broken", "* * * * *")))  # handler only
    broken = make_job(
        engine,
        models,
        status="running",
        job_type="recurring",
        name="broken",
        key="broken",
        heartbeat_at=ago(minutes=5),
    )
    stalled = make_job(
        engine, models, status="running", name="plain", max_retries=1, heartbeat_at=ago(minutes=5)
    )
    update_job(engine, models, broken.key, cron="61 * * * *")
    with s:
        s.maintenance.run_once()
        wait_until(
            lambda: (r := s.get_job(stalled.key)) is not None and r.status is JobStatus.COMPLETED,
            message="the other stalled job rescued and run",
        )
        later = s.enqueue("plain")
        wait_until(lambda: (r := s.get_job(later)) is not None and r.status is JobStatus.COMPLETED)
    record = s.get_job(broken.key)
    assert record is not None and record.status is not JobStatus.RUNNING
    assert "61 * * * *" in (record.last_error or ""), record.last_error


def test_a_cron_corrupted_while_its_job_runs_disables_the_job_at_its_outcome(
    make_scheduler: Any, engine: sa.Engine, models: Models
) -> None:
    s: Scheduler = make_scheduler()

    def corrupt_my_own_row(ctx: JobContext) -> None:
        update_job(engine, models, ctx.job_key, timezone="Mars/Olympus_Mons")

    s.recurring("self_harm", "* * * * * *")(corrupt_my_own_row)
    with s:
        wait_until(
            lambda: (r := s.get_job("self_harm")) is not None and r.status is JobStatus.FAILED,
            message="the job disabled at its outcome write",
        )
        s.one_time("after")(lambda ctx: None)
        later = s.enqueue("after")
        wait_until(lambda: (r := s.get_job(later)) is not None and r.status is JobStatus.COMPLETED)
    record = s.get_job("self_harm")
    assert record is not None and record.lease_id is None
    assert "schedule disabled" in (record.last_error or "") and "Mars" in (record.last_error or "")
