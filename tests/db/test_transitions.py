"""Every (transition, state, job type) triple of the state machine, against the real tables.

For each transition in ``states.TRANSITIONS`` the repository method that implements it is run on a
factory row in every ``JobStatus``, next to a bystander row in the same state. When the state is
one the transition may start from, exactly one row (the target) moves, to the target state the
transition names. Otherwise nothing moves: the method reports so and both rows are byte-for-byte
unchanged (their ``xmin`` too, so not even a same-value UPDATE happened).

Guards other than the status are disarmed on purpose where the schema allows it (every row is
due, non-running rows carry a stale heartbeat) so the status guard is what the test exercises.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from pg_scheduler import migrations, states
from pg_scheduler.config import DEFAULT_MAX_LOST_LEASES
from pg_scheduler.db.records import ClaimedJob, JobRecord, Outcome
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.errors import InvalidStateError
from pg_scheduler.models import Models, build_models
from pg_scheduler.naming import Names
from pg_scheduler.states import JobStatus, JobType, RunStatus, Transition
from pg_scheduler.testing import grant_runtime_privileges
from tests.support.factories import ago, from_now, make_job, repository, runs_of, snapshot

NODE = "transitions-host:1:abcdef01"
STALL_TIMEOUT = dt.timedelta(minutes=5)
BOTH = (JobType.ONE_TIME, JobType.RECURRING)


def claimed(record: JobRecord) -> ClaimedJob:
    """What the holder would have in hand; rows that are not running get a lease nobody holds."""
    return ClaimedJob(record, record.lease_id or uuid.uuid4(), record.created_at)


def refused(action: Callable[[], Any]) -> Any:
    """Operator actions raise ``InvalidStateError`` when the state forbids them: that is 'None'."""
    try:
        return action()
    except InvalidStateError:
        return None


@dataclass(frozen=True)
class Case:
    """How to exercise one transition: the row to start from, the call, what it reports."""

    id: str
    transition: Transition
    act: Callable[[JobRepository, JobRecord], Any]
    moved: Callable[[Any], bool]  # did the call report that it moved the row?
    target: Callable[[JobType], JobStatus]
    job_types: tuple[JobType, ...] = BOTH
    setup: dict[str, Any] = field(default_factory=dict)
    bystander: dict[str, Any] = field(default_factory=dict)  # overrides for the bystander row
    run_status: RunStatus | None = None  # what the run row of a lease taken away must say


def finish_with(status: RunStatus) -> Callable[[JobRepository, JobRecord], Any]:
    def act(repo: JobRepository, record: JobRecord) -> Any:
        return repo.finish(
            claimed(record), Outcome(status, 12, "boom" if status is RunStatus.FAILED else None)
        )

    return act


def applied(result: Any) -> bool:
    return bool(result.applied)


def always(status: JobStatus) -> Callable[[JobType], JobStatus]:
    return lambda _job_type: status


CASES = [
    Case(
        "claim",
        states.CLAIM,
        lambda repo, rec: repo.claim(NODE, [rec.name], 10),
        lambda result: len(result) == 1,
        always(JobStatus.RUNNING),
    ),
    Case(
        "heartbeat",
        states.HEARTBEAT,
        lambda repo, rec: repo.heartbeat(rec.node_id or NODE, [rec.lease_id or uuid.uuid4()]),
        lambda result: len(result) == 1,
        always(JobStatus.RUNNING),
        setup={"node_id": NODE, "heartbeat_at": ago(seconds=30)},
        bystander={"heartbeat_at": ago(seconds=20)},
    ),
    Case(
        "complete",
        states.COMPLETE,
        finish_with(RunStatus.COMPLETED),
        applied,
        always(JobStatus.COMPLETED),
        job_types=(JobType.ONE_TIME,),
        run_status=RunStatus.COMPLETED,
    ),
    Case(
        "reschedule-success",
        states.RESCHEDULE,
        finish_with(RunStatus.COMPLETED),
        applied,
        always(JobStatus.PENDING),
        job_types=(JobType.RECURRING,),
        run_status=RunStatus.COMPLETED,
    ),
    Case(
        "reschedule-exhausted",
        states.RESCHEDULE,
        finish_with(RunStatus.FAILED),
        applied,
        always(JobStatus.PENDING),
        job_types=(JobType.RECURRING,),
        setup={"attempt": 2, "max_retries": 1},
        run_status=RunStatus.FAILED,
    ),
    Case(
        "retry",
        states.RETRY,
        finish_with(RunStatus.FAILED),
        applied,
        always(JobStatus.PENDING),
        setup={"attempt": 1, "max_retries": 2},
        run_status=RunStatus.FAILED,
    ),
    Case(
        "fail",
        states.FAIL,
        finish_with(RunStatus.FAILED),
        applied,
        always(JobStatus.FAILED),
        job_types=(JobType.ONE_TIME,),
        setup={"attempt": 3, "max_retries": 2},
        run_status=RunStatus.FAILED,
    ),
    Case(
        "abort",
        states.ABORT,
        finish_with(RunStatus.CANCELLED),
        applied,
        always(JobStatus.CANCELLED),  # a recurring job too: off until retry_job
        setup={"cancel_requested": True, "max_retries": 3},
        run_status=RunStatus.CANCELLED,
    ),
    Case(
        "rescue-retry",
        states.RESCUE,
        lambda repo, rec: repo.rescue_stalled(STALL_TIMEOUT),
        lambda result: result.count == 1,
        always(JobStatus.PENDING),
        setup={"heartbeat_at": ago(hours=1), "max_retries": 1},
        bystander={"heartbeat_at": ago(seconds=1)},
        run_status=RunStatus.LOST,
    ),
    Case(
        "rescue-last-attempt",
        states.RESCUE,
        lambda repo, rec: repo.rescue_stalled(STALL_TIMEOUT),
        lambda result: result.count == 1,
        # A lost run is not a failure: it runs again whatever its retries.
        always(JobStatus.PENDING),
        setup={"heartbeat_at": ago(hours=1), "attempt": 1, "max_retries": 0},
        bystander={"heartbeat_at": ago(seconds=1)},
        run_status=RunStatus.LOST,
    ),
    Case(
        "rescue-poisoned",
        states.RESCUE,
        lambda repo, rec: repo.rescue_stalled(STALL_TIMEOUT),
        lambda result: result.count == 1,
        # Its runs lost their lease max_lost_leases times: given up (recurring: the next tick).
        lambda t: JobStatus.FAILED if t is JobType.ONE_TIME else JobStatus.PENDING,
        setup={
            "heartbeat_at": ago(hours=1),
            "attempt": 1,
            "max_retries": 5,
            "lost_leases": DEFAULT_MAX_LOST_LEASES - 1,
        },
        bystander={"heartbeat_at": ago(seconds=1)},
        run_status=RunStatus.LOST,
    ),
    Case(
        "release-retry",
        states.RELEASE,
        lambda repo, rec: repo.release(rec.node_id or NODE, [rec.lease_id or uuid.uuid4()]),
        lambda result: result.count == 1,
        always(JobStatus.PENDING),
        setup={"node_id": NODE, "max_retries": 1},
        run_status=RunStatus.RELEASED,
    ),
    Case(
        "release-exhausted",
        states.RELEASE,
        lambda repo, rec: repo.release(rec.node_id or NODE, [rec.lease_id or uuid.uuid4()]),
        lambda result: result.count == 1,
        # Its node shut down; the job did not fail, so it goes back whatever its attempts.
        always(JobStatus.PENDING),
        setup={"node_id": NODE, "attempt": 1, "max_retries": 0},
        run_status=RunStatus.RELEASED,
    ),
    Case(
        "cancel",
        states.CANCEL,
        lambda repo, rec: refused(lambda: repo.cancel(rec.key)),
        lambda result: result is not None and result.cancelled,
        always(JobStatus.CANCELLED),
    ),
    Case(
        "request-cancel",
        states.REQUEST_CANCEL,
        lambda repo, rec: refused(lambda: repo.cancel(rec.key)),
        lambda result: result is not None and result.requested,
        always(JobStatus.RUNNING),
    ),
    Case(
        "trigger",
        states.TRIGGER,
        lambda repo, rec: refused(lambda: repo.trigger(rec.key)),
        lambda result: result is not None,
        always(JobStatus.PENDING),
        setup={"next_run": from_now(hours=1)},
    ),
    Case(
        "retry-now",
        states.RETRY_NOW,
        lambda repo, rec: refused(lambda: repo.retry_now(rec.key)),
        lambda result: result is not None,
        always(JobStatus.PENDING),
    ),
]

#: Transitions carried out by the same repository method: when a state is not a source of the
#: transition under test, another transition of the same call may legitimately apply.
SIBLINGS = {
    "cancel": states.REQUEST_CANCEL,
    "request-cancel": states.CANCEL,
}

PARAMS = [
    pytest.param(case, status, job_type, id=f"{case.id}-{status.value}-{job_type.value}")
    for case in CASES
    for status in JobStatus
    for job_type in case.job_types
]


@pytest.fixture(scope="module")
def shared_models(
    pg_scheduler_engine: sa.Engine, pg_scheduler_runtime_role: str | None
) -> Iterator[Models]:
    """One installation for the whole table (installing one per case would dominate the time)."""
    names = Names(prefix=f"tr{uuid.uuid4().hex[:8]}_")
    migrations.upgrade(pg_scheduler_engine, names=names)
    if pg_scheduler_runtime_role is not None:  # PG_SCHEDULER_TEST_ROLE=runtime
        with pg_scheduler_engine.begin() as conn:
            grant_runtime_privileges(conn, names, pg_scheduler_runtime_role)
    yield build_models(names)
    migrations.downgrade(pg_scheduler_engine, names=names)


@pytest.fixture
def table(pg_scheduler_engine: sa.Engine, shared_models: Models) -> Models:
    """The shared installation, emptied: each case sees only its own two rows."""
    with pg_scheduler_engine.begin() as conn:
        conn.execute(sa.delete(shared_models.runs))
        conn.execute(sa.delete(shared_models.jobs))
    return shared_models


P, R = JobStatus.PENDING, JobStatus.RUNNING
C, F, X = JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED

#: The transitions that need a lease: the holder's own, or for a take-back the one read under lock.
#: A cancel request is an operator's: it holds none, and only flags the row.
FENCED = {"heartbeat", "complete", "reschedule", "retry", "fail", "abort", "rescue", "release"}

#: DESIGN.md §4, written out independently of ``states``: the table the cases above derive their
#: expectations from must itself say this, or widening a source set would go unnoticed.
DESIGNED = {
    "enqueue": (set(), {P}),
    "claim": ({P}, {R}),
    "heartbeat": ({R}, {R}),
    "complete": ({R}, {C}),
    "reschedule": ({R}, {P}),
    "retry": ({R}, {P}),
    "fail": ({R}, {F}),
    "abort": ({R}, {X}),
    "rescue": ({R}, {P, F}),
    "release": ({R}, {P}),
    "next_tick": ({P}, {P}),
    "disable": ({P}, {F}),
    "cancel": ({P}, {X}),
    "request_cancel": ({R}, {R}),
    "trigger": ({P}, {P}),
    "retry_now": ({F, X}, {P}),
}


def test_the_transition_table_is_the_designed_one() -> None:
    table = {t.name: (set(t.source), set(t.targets)) for t in states.TRANSITIONS}
    assert table == DESIGNED
    fenced = {t.name for t in states.TRANSITIONS if t.fenced}
    assert fenced == FENCED


#: Transitions no repository call carries out on its own: inserts, and the second step of a rescue
#: that gave up a recurring job's tick (test_lost_leases and faults/test_input cover those).
NOT_ALONE = {states.ENQUEUE, states.NEXT_TICK, states.DISABLE}


def test_every_transition_has_a_case() -> None:
    assert {case.transition for case in CASES} == set(states.TRANSITIONS) - NOT_ALONE


def make_row(
    engine: sa.Engine, models: Models, status: JobStatus, job_type: JobType, columns: dict[str, Any]
) -> JobRecord:
    # Disarm every guard but the status: non-running rows are overdue and look stalled too.
    base: dict[str, Any] = {"next_run": ago(minutes=1), "scheduled_at": ago(minutes=1)}
    if status is not JobStatus.RUNNING:
        base["heartbeat_at"] = ago(hours=1)
        base["node_id"] = NODE
    base.update(columns)
    return make_job(engine, models, status=status, job_type=job_type, **base)


@pytest.mark.parametrize(("case", "status", "job_type"), PARAMS)
def test_transition(
    engine: sa.Engine, table: Models, case: Case, status: JobStatus, job_type: JobType
) -> None:
    target = make_row(engine, table, status, job_type, case.setup)
    bystander = make_row(engine, table, status, job_type, {**case.setup, **case.bystander})
    before = snapshot(engine, table)

    with repository(engine, table) as repo:
        result = case.act(repo, target)

    after = snapshot(engine, table)
    changed = {key for key in before if before[key] != after[key]}
    sibling = SIBLINGS.get(case.id)

    if case.transition.allows(status):
        assert case.moved(result), result
        assert changed == {target.key}, "exactly the target row moves"
        new = after[target.key]
        expected = case.target(job_type)
        assert new["status"] == expected.value
        assert JobStatus(new["status"]) in case.transition.targets
        check_effects(engine, table, case, target, before[target.key], new)
    elif sibling is not None and sibling.allows(status):
        # The same call carried out the other transition; the one under test did not happen.
        assert not case.moved(result), result
        assert changed == {target.key}
        assert after[target.key]["status"] != case.target(job_type).value or (
            case.transition is states.REQUEST_CANCEL and not after[target.key]["cancel_requested"]
        )
    else:
        assert not case.moved(result), result
        assert changed == set(), "a forbidden transition writes nothing"
        assert after == before
    assert after[bystander.key] == before[bystander.key], "the bystander never moves"


def check_effects(
    engine: sa.Engine,
    models: Models,
    case: Case,
    record: JobRecord,
    old: dict[str, Any],
    new: dict[str, Any],
) -> None:
    """The columns each move must set, beyond the status."""
    t = case.transition
    if t is states.CLAIM:
        assert new["lease_id"] is not None and new["node_id"] == NODE
        assert new["attempt"] == old["attempt"] + 1
        (run,) = runs_of(engine, models, record.key)
        assert (run["lease_id"], run["status"]) == (new["lease_id"], RunStatus.RUNNING.value)
    if JobStatus.RUNNING in t.source and JobStatus.RUNNING not in t.targets:
        # Leaving running: the lease is gone, and the lease's run row tells how it ended.
        assert new["lease_id"] is None and new["heartbeat_at"] is None
        assert not new["cancel_requested"]
        (run,) = runs_of(engine, models, record.key)
        assert run["lease_id"] == old["lease_id"]
        assert case.run_status is not None and run["status"] == case.run_status.value
        assert run["finished_at"] is not None
    if new["status"] == JobStatus.PENDING.value:
        assert new["next_run"] is not None
    if new["status"] in {s.value for s in states.TERMINAL_STATUSES}:
        assert new["next_run"] is None
        if record.job_type is JobType.ONE_TIME:
            assert new["finished_at"] is not None
    if t is states.RESCHEDULE:
        assert new["attempt"] == 0
        assert new["next_run"] == new["scheduled_at"] > old["scheduled_at"]
    if t is states.RETRY:
        assert new["attempt"] == old["attempt"]
        assert new["scheduled_at"] == old["scheduled_at"]
        assert new["next_run"] > old["heartbeat_at"]
    if t is states.HEARTBEAT:
        assert new["lease_id"] == old["lease_id"]
        assert new["heartbeat_at"] > old["heartbeat_at"]
    if t is states.REQUEST_CANCEL:
        assert new["cancel_requested"] is True
        assert new["lease_id"] == old["lease_id"]
    if t is states.TRIGGER:
        assert new["next_run"] < old["next_run"]
    if t is states.RETRY_NOW:
        assert new["attempt"] == 0 and new["finished_at"] is None
    if t in (states.RESCUE, states.RELEASE):
        lost = t is states.RESCUE
        poisoned = lost and old["lost_leases"] + 1 >= DEFAULT_MAX_LOST_LEASES
        if record.job_type is JobType.RECURRING and poisoned:
            # Its runs keep being lost: back to the schedule, not a rerun of the tick.
            assert new["attempt"] == 0 and new["lost_leases"] == 0
            assert new["next_run"] > old["scheduled_at"]
        elif poisoned:
            assert new["attempt"] == old["attempt"], "given up: its last attempt stays shown"
            assert new["last_error"] == (
                f"lost its lease {DEFAULT_MAX_LOST_LEASES} times (node died or hung); not retried"
            )
        else:
            assert new["attempt"] == max(old["attempt"] - 1, 0), "no attempt used up"
            assert new["lost_leases"] == old["lost_leases"] + lost
            assert new["next_run"] is not None
