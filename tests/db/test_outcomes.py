"""Grouped outcome writes (``JobRepository.finish_many``, ``OutcomeWriter``): the same rows and
the same fencing as one ``finish`` per job, in fewer statements."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import sqlalchemy as sa

from pg_scheduler.db.records import ClaimedJob, FinishResult, Outcome
from pg_scheduler.models import Models
from pg_scheduler.runtime.outcomes import OutcomeWriter
from pg_scheduler.states import JobStatus, RunStatus
from pg_scheduler.testing import wait_until
from tests.support.factories import make_job, repository, runs_of, snapshot

NODE = "outcomes-host:1:12345678"


def claim(engine: sa.Engine, models: Models, name: str, count: int) -> list[ClaimedJob]:
    with repository(engine, models) as repo:
        return repo.claim(NODE, [name], count)


def test_group_matches_one_finish_per_job(engine: sa.Engine, models: Models) -> None:
    for name in ("grouped", "single"):
        for _ in range(3):
            make_job(engine, models, name=name)
    grouped, single = claim(engine, models, "grouped", 3), claim(engine, models, "single", 3)
    with repository(engine, models) as repo:
        results = repo.finish_many([(c, Outcome(RunStatus.COMPLETED, 5)) for c in grouped])
    with repository(engine, models) as repo:
        expected = [repo.finish(c, Outcome(RunStatus.COMPLETED, 5)) for c in single]
    assert [(r.applied, r.status, r.already_recorded) for r in results] == [
        (r.applied, r.status, r.already_recorded) for r in expected
    ]
    rows = snapshot(engine, models)
    volatile = ("key", "name", "created_at", "updated_at", "finished_at", "last_run_at")
    volatile += ("last_success_at", "heartbeat_at", "scheduled_at", "node_id", "_xmin")

    def shape(claimed: ClaimedJob) -> dict[str, object]:
        return {k: v for k, v in rows[claimed.key].items() if k not in volatile}

    assert [shape(c) for c in grouped] == [shape(c) for c in single]
    for claimed in grouped:
        (run,) = runs_of(engine, models, claimed.key)
        assert run["status"] == "completed" and run["duration_ms"] == 5
        assert run["finished_at"] is not None


def test_a_lost_lease_in_a_group_is_not_applied_and_the_others_are(
    engine: sa.Engine, models: Models
) -> None:
    for _ in range(3):
        make_job(engine, models, name="fenced")
    first, lost, third = claim(engine, models, "fenced", 3)
    # Another node took ``lost`` over (rescued, then re-claimed under a new lease).
    with repository(engine, models) as repo:
        repo.release(NODE, [lost.lease_id])
    (retaken,) = claim(engine, models, "fenced", 1)
    assert retaken.key == lost.key and retaken.lease_id != lost.lease_id
    with repository(engine, models) as repo:
        results = repo.finish_many(
            [(c, Outcome(RunStatus.COMPLETED, 1)) for c in (first, lost, third)]
        )
    assert [r.applied for r in results] == [True, False, True]
    row = snapshot(engine, models)[lost.key]
    assert row["status"] == JobStatus.RUNNING.value and row["lease_id"] == retaken.lease_id


def test_a_group_written_twice_reads_as_already_recorded(engine: sa.Engine, models: Models) -> None:
    for _ in range(2):
        make_job(engine, models, name="twice")
    jobs = claim(engine, models, "twice", 2)
    items = [(c, Outcome(RunStatus.COMPLETED, 1)) for c in jobs]
    with repository(engine, models) as repo:
        repo.finish_many(items)
    before = snapshot(engine, models)
    with repository(engine, models) as repo:
        again = repo.finish_many(items)
    assert all(r.applied and r.already_recorded for r in again)
    assert snapshot(engine, models) == before


def test_mixed_group_keeps_order_and_routes_other_outcomes_through_finish(
    engine: sa.Engine, models: Models
) -> None:
    for _ in range(3):
        make_job(engine, models, name="mixed", max_retries=1)
    a, b, c = claim(engine, models, "mixed", 3)
    with repository(engine, models) as repo:
        results = repo.finish_many(
            [
                (a, Outcome(RunStatus.COMPLETED, 1)),
                (b, Outcome(RunStatus.FAILED, 1, "boom")),
                (c, Outcome(RunStatus.COMPLETED, 1)),
            ]
        )
    assert [r.status for r in results] == [
        JobStatus.COMPLETED,
        JobStatus.PENDING,  # a retry is left
        JobStatus.COMPLETED,
    ]
    assert snapshot(engine, models)[b.key]["last_error"] == "boom"


def test_writer_groups_concurrent_outcomes_and_falls_back_on_error() -> None:
    groups: list[int] = []
    release = threading.Event()
    fail = threading.Event()

    def write_group(items: Sequence[tuple[ClaimedJob, Outcome]]) -> list[FinishResult]:
        groups.append(len(items))
        release.wait(5)
        if fail.is_set():
            raise RuntimeError("database went away")
        return [FinishResult(applied=True, status=JobStatus.COMPLETED) for _ in items]

    writer = OutcomeWriter(write_group)
    outcome = Outcome(RunStatus.COMPLETED, 1)
    results: list[FinishResult | None] = []
    lock = threading.Lock()

    def written(result: FinishResult | None) -> None:
        with lock:
            results.append(result)

    def submit() -> None:
        writer.submit(object(), outcome, written)  # type: ignore[arg-type]

    leader = threading.Thread(target=submit)
    leader.start()
    wait_until(lambda: groups == [1], timeout=5)  # the first outcome is being written
    for _ in range(5):
        submit()  # returns at once: a write is in flight, these queue for the next group
    assert results == [] and groups == [1]
    release.set()
    leader.join(5)
    # The leading thread wrote the queued outcomes too, as one group, before it returned.
    assert groups == [1, 5] and len(results) == 6 and all(r and r.applied for r in results)

    fail.set()
    results.clear()
    submit()
    assert results == [None], "a failed group hands every outcome back, unwritten"
