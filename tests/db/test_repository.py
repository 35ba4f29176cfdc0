"""``JobRepository`` against real PostgreSQL: fencing and idempotency of outcomes, retries and
backoff, recurring ticks, enqueue and re-scheduling, retention cleanup, the orphan sweep, and the
claim's plan on a million pending rows."""

from __future__ import annotations

import datetime as dt
import statistics
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from pg_scheduler.config import RetryBackoff
from pg_scheduler.cron import CronSchedule
from pg_scheduler.db.records import ClaimedJob, OneTimeSpec, Outcome, RecurringSpec
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.models import Models
from pg_scheduler.naming import Names
from pg_scheduler.states import JobStatus, RunStatus
from tests.support.factories import (
    ago,
    count_jobs,
    db_now,
    make_job,
    make_node,
    make_run,
    repository,
    runs_of,
    snapshot,
    update_job,
)

NODE = "repo-host:1:12345678"
NO_BACKOFF = RetryBackoff(base=dt.timedelta(0), cap=dt.timedelta(0), jitter=0)
EVERY_MINUTE = "* * * * *"


def claim_one(engine: sa.Engine, models: Models, name: str, **kwargs: Any) -> ClaimedJob:
    with repository(engine, models, **kwargs) as repo:
        (claimed,) = repo.claim(NODE, [name], 1)
    return claimed


def running(engine: sa.Engine, models: Models, **columns: Any) -> ClaimedJob:
    """A factory row in ``running`` and the ClaimedJob its holder would have."""
    record = make_job(engine, models, status="running", node_id=NODE, **columns)
    assert record.lease_id is not None
    return ClaimedJob(record, record.lease_id, record.created_at)


def minute_floor(moment: dt.datetime) -> dt.datetime:
    return moment.replace(second=0, microsecond=0)


# --------------------------------------------------------------------------- idempotent outcomes
@pytest.mark.parametrize("status", [RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED])
def test_finish_retried_after_its_commit_landed_is_recognised(
    engine: sa.Engine, models: Models, status: RunStatus
) -> None:
    """The first COMMIT reached the server but the node did not hear back: it writes again."""
    make_job(engine, models, name="acked", max_retries=2)
    claimed = claim_one(engine, models, "acked")
    outcome = Outcome(status, 7, "boom" if status is RunStatus.FAILED else None)
    with repository(engine, models) as repo:
        first = repo.finish(claimed, outcome)
    assert first.applied and not first.already_recorded
    before = snapshot(engine, models)
    with repository(engine, models) as repo:
        again = repo.finish(claimed, outcome)
    assert again.applied and again.already_recorded and again.status == first.status
    assert snapshot(engine, models) == before, "the retry writes nothing"
    # A different outcome for the same lease is not "already recorded": it lost.
    other = RunStatus.COMPLETED if status is not RunStatus.COMPLETED else RunStatus.FAILED
    with repository(engine, models) as repo:
        assert not repo.finish(claimed, Outcome(other, 7)).applied
    assert snapshot(engine, models) == before


def test_finish_still_recognised_after_the_job_moved_on(engine: sa.Engine, models: Models) -> None:
    """Failed with retries left, re-claimed by another node, then the first write is retried."""
    make_job(engine, models, name="moved_on", max_retries=2)
    first = claim_one(engine, models, "moved_on", backoff=NO_BACKOFF)
    with repository(engine, models, backoff=NO_BACKOFF) as repo:
        assert repo.finish(first, Outcome(RunStatus.FAILED, 1, "x")).applied
    second = claim_one(engine, models, "moved_on")
    before = snapshot(engine, models)
    with repository(engine, models) as repo:
        again = repo.finish(first, Outcome(RunStatus.FAILED, 1, "x"))
    assert again.applied and again.already_recorded
    after = snapshot(engine, models)
    assert after == before and after[second.key]["lease_id"] == second.lease_id


# --------------------------------------------------------------------------- attempts and backoff
@pytest.mark.parametrize("retries", [0, 1, 3])
def test_one_time_retries_n_allows_exactly_n_plus_one_attempts(
    engine: sa.Engine, models: Models, retries: int
) -> None:
    with repository(engine, models) as repo:
        key = repo.insert_one_time(OneTimeSpec("flaky", {"n": 1}, retries=retries))
    attempts = 0
    while attempts <= retries + 1:  # one more than allowed, so a bug cannot loop forever
        with repository(engine, models, backoff=NO_BACKOFF) as repo:
            claimed = repo.claim(NODE, ["flaky"], 10)
        if not claimed:
            break
        (job,) = claimed
        attempts += 1
        assert job.key == key and job.job.attempt == attempts
        with repository(engine, models, backoff=NO_BACKOFF) as repo:
            result = repo.finish(job, Outcome(RunStatus.FAILED, 1, f"boom {attempts}"))
        assert result.applied
        expected = JobStatus.PENDING if attempts <= retries else JobStatus.FAILED
        assert result.status is expected
    assert attempts == retries + 1
    with repository(engine, models) as repo:
        final = repo.get(key)
        assert [r.attempt for r in reversed(repo.list_runs(key))] == list(range(1, attempts + 1))
    assert final is not None and final.status is JobStatus.FAILED
    assert final.finished_at is not None and final.next_run is None
    assert final.last_error == f"boom {attempts}" and final.consecutive_failures == attempts


def test_backoff_moves_next_run_into_the_future(engine: sa.Engine, models: Models) -> None:
    backoff = RetryBackoff(base=dt.timedelta(seconds=30), cap=dt.timedelta(minutes=2), jitter=0.1)
    make_job(engine, models, name="backing_off", max_retries=10)
    expected_base = [30, 60, 120, 120]  # base * 2**(n-1), capped
    for attempt, base in enumerate(expected_base, start=1):
        claimed = claim_one(engine, models, "backing_off")
        assert claimed.job.attempt == attempt
        with repository(engine, models, backoff=backoff) as repo:
            result = repo.finish(claimed, Outcome(RunStatus.FAILED, 1, "later"))
            now = repo.now()
        assert result.applied and result.status is JobStatus.PENDING
        job = _get(engine, models, claimed.key)
        assert job.next_run is not None
        delay = (job.next_run - now).total_seconds()
        assert base <= delay <= base * 1.1 + 0.001, (attempt, delay)
        assert job.scheduled_at == claimed.job.scheduled_at, "a retry stays on its tick"
        with repository(engine, models) as repo:
            assert repo.claim(NODE, ["backing_off"], 10) == [], "not due before its backoff"
        update_job(engine, models, claimed.key, next_run=ago(seconds=1))


def _get(engine: sa.Engine, models: Models, key: str) -> Any:
    with repository(engine, models) as repo:
        job = repo.get(key)
    assert job is not None
    return job


# --------------------------------------------------------------------------- recurring ticks
def test_a_cancelled_run_turns_a_recurring_job_off_until_retried(
    engine: sa.Engine, models: Models
) -> None:
    """cancel_job on a running recurring job ends the job as it would a pending one: cancelled,
    no next tick, until retry_job."""
    tick = minute_floor(db_now(engine)) - dt.timedelta(minutes=3)
    claimed = running(
        engine, models, job_type="recurring", cron=EVERY_MINUTE, scheduled_at=tick, attempt=1
    )
    with repository(engine, models) as repo:
        result = repo.finish(claimed, Outcome(RunStatus.CANCELLED, 1, "cancelled on request"))
    assert result.applied and result.status is JobStatus.CANCELLED
    job = _get(engine, models, claimed.key)
    assert (job.status, job.next_run) == (JobStatus.CANCELLED, None)
    with repository(engine, models) as repo:
        assert repo.retry_now(claimed.key).status is JobStatus.PENDING


@pytest.mark.parametrize(
    ("outcome", "attempt", "max_retries"),
    [
        pytest.param(RunStatus.COMPLETED, 1, 0, id="success"),
        pytest.param(RunStatus.FAILED, 3, 2, id="retries-exhausted"),
        pytest.param(RunStatus.SKIPPED, 1, 0, id="skipped"),
    ],
)
def test_recurring_finish_moves_to_the_next_tick_strictly_after_the_tick(
    engine: sa.Engine, models: Models, outcome: RunStatus, attempt: int, max_retries: int
) -> None:
    tick = minute_floor(db_now(engine)) - dt.timedelta(minutes=3)
    claimed = running(
        engine,
        models,
        job_type="recurring",
        cron=EVERY_MINUTE,
        scheduled_at=tick,
        attempt=attempt,
        max_retries=max_retries,
    )
    with repository(engine, models) as repo:
        result = repo.finish(claimed, Outcome(outcome, 1, "err"))
        now = repo.now()
    expected = CronSchedule.parse(EVERY_MINUTE).next_after(max(tick, now))
    assert result.applied and result.status is JobStatus.PENDING
    assert result.next_run == expected
    assert tick < now < expected <= now + dt.timedelta(minutes=1)
    job = _get(engine, models, claimed.key)
    assert (job.status, job.next_run, job.scheduled_at, job.attempt) == (
        JobStatus.PENDING,
        expected,
        expected,
        0,
    ), "a new tick starts with a fresh attempt budget"
    assert job.lease_id is None


def test_recurring_failure_with_retries_left_retries_the_same_tick(
    engine: sa.Engine, models: Models
) -> None:
    tick = minute_floor(db_now(engine)) - dt.timedelta(minutes=3)
    claimed = running(
        engine, models, job_type="recurring", cron=EVERY_MINUTE, scheduled_at=tick, max_retries=1
    )
    backoff = RetryBackoff(base=dt.timedelta(seconds=5), jitter=0)
    with repository(engine, models, backoff=backoff) as repo:
        result = repo.finish(claimed, Outcome(RunStatus.FAILED, 1, "flaky"))
        now = repo.now()
    job = _get(engine, models, claimed.key)
    assert result.applied and job.status is JobStatus.PENDING
    assert job.next_run == now + dt.timedelta(seconds=5)
    assert (job.scheduled_at, job.attempt) == (tick, 1)


def test_recurring_misfire_all_runs_each_missed_tick(engine: sa.Engine, models: Models) -> None:
    tick = minute_floor(db_now(engine)) - dt.timedelta(minutes=10)
    claimed = running(
        engine,
        models,
        job_type="recurring",
        cron=EVERY_MINUTE,
        scheduled_at=tick,
        misfire="all",
        misfire_grace=dt.timedelta(hours=1),
    )
    with repository(engine, models) as repo:
        result = repo.finish(claimed, Outcome(RunStatus.COMPLETED, 1))
    assert result.next_run == tick + dt.timedelta(minutes=1)


def test_rescue_of_a_recurring_job_on_its_last_attempt_reruns_the_tick(
    engine: sa.Engine, models: Models
) -> None:
    """A lost run is not a failure: with retries=0 the tick runs again, same attempt number."""
    tick = minute_floor(db_now(engine)) - dt.timedelta(minutes=3)
    claimed = running(
        engine,
        models,
        job_type="recurring",
        cron=EVERY_MINUTE,
        scheduled_at=tick,
        attempt=1,
        max_retries=0,
        heartbeat_at=ago(hours=1),
    )
    with repository(engine, models) as repo:
        assert repo.rescue_stalled(dt.timedelta(minutes=5)).pending == (claimed.key,)
        now = repo.now()
    job = _get(engine, models, claimed.key)
    assert (job.status, job.next_run, job.scheduled_at, job.attempt, job.lost_leases) == (
        JobStatus.PENDING,
        now,
        tick,
        0,
        1,
    )


def test_rescue_of_a_poisoned_recurring_job_goes_back_to_its_schedule(
    engine: sa.Engine, models: Models
) -> None:
    """The run that reaches ``max_lost_leases`` gives the tick up: the next tick, counts reset."""
    tick = minute_floor(db_now(engine)) - dt.timedelta(minutes=3)
    claimed = running(
        engine,
        models,
        job_type="recurring",
        cron=EVERY_MINUTE,
        scheduled_at=tick,
        attempt=1,
        max_retries=0,
        lost_leases=1,
        heartbeat_at=ago(hours=1),
    )
    with repository(engine, models) as repo:
        taken = repo.rescue_stalled(dt.timedelta(minutes=5), max_lost_leases=2)
        assert taken.pending == (claimed.key,)
        now = repo.now()
    job = _get(engine, models, claimed.key)
    expected = CronSchedule.parse(EVERY_MINUTE).next_after(max(tick, now))
    assert (job.status, job.next_run, job.scheduled_at, job.attempt, job.lost_leases) == (
        JobStatus.PENDING,
        expected,
        expected,
        0,
        0,
    )
    assert job.last_error == "lost its lease 2 times (node died or hung); not retried"


# --------------------------------------------------------------------------- enqueue and schedule
def test_insert_one_time_stores_a_pending_run_request(engine: sa.Engine, models: Models) -> None:
    params = {"to": "a@b.c", "n": [1, 2.5, None, True], "text": "žluťoučký \\u0000 kůň"}
    run_at = db_now(engine) + dt.timedelta(hours=1)
    with repository(engine, models) as repo:
        key = repo.insert_one_time(OneTimeSpec("mail", params, retries=2))
        later = repo.insert_one_time(OneTimeSpec("mail", None, run_at=run_at))
        keys = repo.insert_many([OneTimeSpec("mail", {"i": i}) for i in range(3)])
    name, _, run_id = key.partition("#")
    assert name == "mail" and uuid.UUID(run_id).version == 7
    # Time-ordered: each new key sorts after the ones drawn before it, so the primary key grows
    # at its end (one index page touched per batch, not one random page per row).
    assert [key, later, *keys] == sorted([key, later, *keys])
    job = _get(engine, models, key)
    assert (job.status, job.params, job.max_retries, job.attempt) == (
        JobStatus.PENDING,
        params,
        2,
        0,
    )
    assert _get(engine, models, later).next_run == run_at
    assert len(set(keys)) == 3 and [_get(engine, models, k).params for k in keys] == [
        {"i": 0},
        {"i": 1},
        {"i": 2},
    ]
    with repository(engine, models) as repo:
        claimed = {c.key for c in repo.claim(NODE, ["mail"], 10)}
    assert claimed == {key, *keys}, "a run_at in the future is not due"


def test_upsert_recurring_keeps_next_run_and_never_disturbs_a_lease(
    engine: sa.Engine, models: Models
) -> None:
    spec = RecurringSpec("report", CronSchedule.parse("0 3 * * *"), retries=1)
    with repository(engine, models) as repo:
        first = repo.upsert_recurring(spec)
    with repository(engine, models) as repo:
        again = repo.upsert_recurring(RecurringSpec("report", spec.schedule, retries=4))
    assert again.next_run == first.next_run and again.max_retries == 4
    assert count_jobs(engine, models, name="report") == 1

    changed = RecurringSpec("report", CronSchedule.parse("0 5 * * *"))
    with repository(engine, models) as repo:
        moved = repo.upsert_recurring(changed)
        now = repo.now()
    assert moved.cron == "0 5 * * *"
    assert moved.next_run == changed.schedule.next_after(now)

    claimed = running(
        engine, models, job_type="recurring", cron="*/5 * * * *", name="busy", max_retries=0
    )
    before = snapshot(engine, models, claimed.key)[claimed.key]
    with repository(engine, models) as repo:
        after = repo.upsert_recurring(RecurringSpec("busy", CronSchedule.parse("0 * * * *")))
    assert after.status is JobStatus.RUNNING and after.lease_id == claimed.lease_id
    assert after.next_run == before["next_run"] and after.heartbeat_at == before["heartbeat_at"]
    with repository(engine, models) as repo:
        assert repo.finish(claimed, Outcome(RunStatus.COMPLETED, 1)).applied


def test_a_handed_back_tick_is_kept_by_a_reschedule_and_a_trigger(
    engine: sa.Engine, models: Models
) -> None:
    """A tick handed back (attempt given back: 0) is a run in progress, not a tick still waiting:
    a deploy that changes the cron, or a trigger, must not replace it."""
    tick = minute_floor(db_now(engine)) - dt.timedelta(minutes=3)
    claimed = running(
        engine, models, job_type="recurring", cron=EVERY_MINUTE, name="tock", scheduled_at=tick
    )
    with repository(engine, models) as repo:
        assert repo.release(NODE, [claimed.lease_id]).pending == ("tock",)
    with repository(engine, models) as repo:
        moved = repo.upsert_recurring(RecurringSpec("tock", CronSchedule.parse("0 5 * * *")))
    assert (moved.attempt, moved.scheduled_at) == (0, tick)
    assert moved.next_run is not None and moved.next_run <= db_now(engine), "still due now"
    with repository(engine, models) as repo:
        triggered = repo.trigger("tock")
    assert triggered.scheduled_at == tick


# --------------------------------------------------------------------------- retention cleanup
def test_cleanup_deletes_finished_one_time_jobs_past_retention_only(
    engine: sa.Engine, models: Models
) -> None:
    old = ago(days=2)
    doomed = [
        make_job(engine, models, status=s, finished_at=old).key
        for s in ("completed", "failed", "cancelled")
    ]
    kept = [
        make_job(engine, models, status="completed", finished_at=ago(hours=1)).key,
        make_job(engine, models, status="failed", finished_at=ago(hours=23)).key,
        make_job(
            engine, models, status="cancelled", job_type="recurring", finished_at=ago(days=30)
        ).key,
        make_job(engine, models, job_type="recurring", created_at=ago(days=30)).key,
        make_job(engine, models, created_at=ago(days=30), next_run=ago(days=30)).key,
        make_job(engine, models, status="running", created_at=ago(days=30)).key,
    ]
    recurring = _get(engine, models, kept[3])
    old_run = make_run(engine, models, recurring, started_at=ago(days=3), attempt=1)
    young_run = make_run(engine, models, recurring, started_at=ago(hours=2), attempt=2)
    with repository(engine, models) as repo:
        deleted = repo.cleanup_finished(dt.timedelta(days=1))
    assert deleted == len(doomed)
    assert set(snapshot(engine, models)) == set(kept)
    run_ids = {r["id"] for r in runs_of(engine, models, recurring.key)}
    assert old_run["id"] not in run_ids and young_run["id"] in run_ids
    # The running job's run row (not finished) is history in the making: never pruned.
    assert [r["status"] for r in runs_of(engine, models, kept[5])] == ["running"]


# --------------------------------------------------------------------------- orphan sweep
def test_delete_orphans_uses_the_cluster_wide_view(engine: sa.Engine, models: Models) -> None:
    timeout = dt.timedelta(days=14)
    stale = ago(days=20)
    make_node(engine, models, ["live_name", "shared"])
    make_node(engine, models, ["restarting"], last_seen_at=ago(days=1), stopped_at=ago(days=1))
    dead = make_node(engine, models, ["dead_name", "shared"], last_seen_at=ago(days=20))

    orphans = {
        make_job(engine, models, name="nobody", created_at=stale).key,
        make_job(engine, models, name="nobody", status="failed", created_at=stale).key,
        make_job(engine, models, name="dead_name", created_at=stale).key,
        make_job(engine, models, name="gone_cron", job_type="recurring", created_at=stale).key,
    }
    safe = {
        make_job(engine, models, name="nobody", created_at=ago(days=13)).key,  # fresh
        make_job(engine, models, name="nobody", status="running", created_at=stale).key,
        make_job(engine, models, name="live_name", created_at=stale).key,
        make_job(engine, models, name="live_name", job_type="recurring", created_at=stale).key,
        make_job(engine, models, name="shared", created_at=stale).key,
        make_job(engine, models, name="restarting", created_at=stale).key,
    }
    with repository(engine, models) as repo:
        deleted = repo.delete_orphans(timeout)
        nodes = {n.node_id for n in repo.list_nodes()}
    assert set(deleted) == orphans
    assert set(snapshot(engine, models)) == safe
    assert dead.node_id not in nodes and len(nodes) == 2


def test_delete_orphans_with_no_nodes_keeps_fresh_rows(engine: sa.Engine, models: Models) -> None:
    """The original deleted rows of names not registered *yet* (G3 bug 9)."""
    fresh = make_job(engine, models, name="early_bird")
    with repository(engine, models) as repo:
        assert repo.delete_orphans(dt.timedelta(minutes=1)) == []
    assert set(snapshot(engine, models)) == {fresh.key}


# --------------------------------------------------------------------------- the claim's plan
MILLION = 1_000_000
DUE = 20


def _claim_latency(engine: sa.Engine, models: Models, names: list[str], rounds: int) -> list[float]:
    """Milliseconds per claim of up to 10 rows, each rolled back so the same rows stay due."""
    timings: list[float] = []
    with Session(engine) as session:
        repo = JobRepository(session, models)
        for _ in range(rounds):
            with session.begin():
                started = time.perf_counter()
                repo.claim(NODE, names, 10)
                timings.append((time.perf_counter() - started) * 1000)
                session.rollback()
    return timings


def explain(engine: sa.Engine, stmt: sa.Executable, *, analyze: bool = False) -> str:
    """The plan of exactly ``stmt``; with ``analyze`` it runs, in a transaction rolled back."""
    with engine.connect() as conn:
        sql = stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        prefix = "EXPLAIN (ANALYZE, BUFFERS)" if analyze else "EXPLAIN"
        rows = conn.exec_driver_sql(f"{prefix} {sql}").all()
        conn.rollback()
    return "\n".join(row[0] for row in rows)


@pytest.mark.slow
def test_claim_uses_the_due_index_with_a_million_pending_rows(
    engine: sa.Engine, models: Models, names: Names
) -> None:
    registered = [f"bulk_{i}" for i in range(10)]
    empty = statistics.median(_claim_latency(engine, models, registered, 50))

    jobs = models.jobs
    g = sa.func.generate_series(1, MILLION).table_valued("n").render_derived("g")
    n = g.c.n
    when = sa.case(
        (n <= DUE, sa.func.now() - dt.timedelta(minutes=1)),
        else_=sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, n),
    )
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(jobs).from_select(
                ["key", "name", "job_type", "status", "next_run", "scheduled_at"],
                sa.select(
                    # Zero-padded: keys arrive in index order, so the primary key only appends.
                    sa.literal("bulk#") + sa.func.lpad(sa.cast(n, sa.Text), 7, "0"),
                    sa.literal("bulk_") + sa.cast(n % 50, sa.Text),
                    sa.literal("one_time"),
                    sa.literal("pending"),
                    when,
                    when,
                ),
            )
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        table = conn.dialect.identifier_preparer.format_table(jobs)
        conn.exec_driver_sql(f"ANALYZE {table}")
    filled = time.perf_counter() - started

    with repository(engine, models) as repo:
        stmt = repo.claim_statement(NODE, registered, 10)
    plan = explain(engine, stmt)
    print(f"\nclaim plan with {MILLION:,} pending rows ({DUE} due):\n{plan}")
    assert names.job("due_ix") in plan
    assert "Seq Scan" not in plan
    analyzed = explain(engine, stmt, analyze=True)
    server = [line.strip() for line in analyzed.splitlines() if "Time:" in line]

    timings = _claim_latency(engine, models, registered, 50)
    full = statistics.median(timings)
    with repository(engine, models) as repo:
        taken = repo.claim(NODE, registered, 100)
    assert len(taken) == sum(1 for i in range(1, DUE + 1) if i % 50 < 10)
    print(
        f"claim latency (median of 50, up to 10 rows, rolled back): empty table {empty:.2f} ms; "
        f"{MILLION:,} pending rows {full:.2f} ms (p90 {statistics.quantiles(timings, n=10)[-1]:.2f}"
        f" ms); server side: {', '.join(server)}; filling took {filled:.1f} s"
    )
