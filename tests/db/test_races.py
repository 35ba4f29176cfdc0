"""Races made deterministic: barriers line threads up, and transactions are held open on purpose.

Each test drives real PostgreSQL sessions (one connection each) into the interleaving a race would
need, instead of hoping a scheduler run hits it: a claim against a claim, a rescue against a
completion or a heartbeat, a lease holder that was too slow, a claim against a locked row.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from pg_scheduler.db.records import ClaimedJob, Outcome
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.errors import InvalidStateError
from pg_scheduler.models import Models
from pg_scheduler.states import JobStatus, RunStatus
from pg_scheduler.testing import wait_until
from tests.support.factories import (
    ago,
    make_job,
    make_jobs,
    repository,
    runs_of,
    snapshot,
    update_job,
)

T = TypeVar("T")
NODE_A = "host-a:1:aaaaaaaa"
NODE_B = "host-b:2:bbbbbbbb"
STALL = dt.timedelta(minutes=5)
#: How long a statement may wait for a row lock before the test calls it "blocked".
LOCK_TIMEOUT = "2s"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=8) as executor:
        yield executor


class Held:
    """A repository in a transaction that stays open until ``commit()`` or ``rollback()``."""

    def __init__(self, engine: sa.Engine, models: Models) -> None:
        self.session = Session(engine)
        self.session.begin()
        self.repo = JobRepository(self.session, models)
        self.pid = int(self.session.execute(sa.select(sa.func.pg_backend_pid())).scalar_one())

    def commit(self) -> None:
        self.session.commit()
        self.session.close()

    def rollback(self) -> None:
        self.session.rollback()
        self.session.close()


@pytest.fixture
def held(engine: sa.Engine, models: Models) -> Iterator[Callable[[], Held]]:
    opened: list[Held] = []

    def open_() -> Held:
        opened.append(Held(engine, models))
        return opened[-1]

    yield open_
    for h in opened:
        h.session.close()


def no_wait(session: Session) -> None:
    """Make this transaction fail instead of waiting long for a lock: a wait is a test failure."""
    session.execute(sa.select(sa.func.set_config("lock_timeout", LOCK_TIMEOUT, True)))


def waiting_on_lock(engine: sa.Engine, pid: int) -> bool:
    with engine.connect() as conn:
        event = conn.execute(
            sa.text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
        ).scalar()
    return event == "Lock"


def claim_one(engine: sa.Engine, models: Models, name: str, node: str = NODE_A) -> ClaimedJob:
    with repository(engine, models) as repo:
        (claimed,) = repo.claim(node, [name], 1)
    return claimed


# --------------------------------------------------------------------------- claim vs claim
ROUNDS = 1000


def test_two_claimers_never_get_the_same_job(engine: sa.Engine, models: Models) -> None:
    """R2: two nodes claim the one due job at the same instant, 1000 times: exactly one wins.

    Round ``i`` has its own job name, so the two claimers only wait for each other at the start
    of each round (one barrier), not for a writer between rounds.
    """
    names = [f"contended_{i}" for i in range(ROUNDS)]
    jobs = models.jobs
    with engine.begin() as conn:
        conn.execute(
            sa.insert(jobs),
            [
                {
                    "key": f"{name}#{uuid.uuid4()}",
                    "name": name,
                    "job_type": "one_time",
                    "status": "pending",
                    "next_run": dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc),
                    "scheduled_at": dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc),
                }
                for name in names
            ],
        )
    keys = {row["name"]: row["key"] for row in snapshot(engine, models).values()}
    start = threading.Barrier(2, timeout=30)
    got: list[list[list[str]]] = [[], []]

    def claimer(index: int, node: str) -> None:
        with Session(engine) as session:
            repo = JobRepository(session, models)
            for name in names:
                start.wait()
                with session.begin():
                    got[index].append([c.key for c in repo.claim(node, [name], 1)])

    with ThreadPoolExecutor(max_workers=2) as executor:
        futures = [executor.submit(claimer, 0, NODE_A), executor.submit(claimer, 1, NODE_B)]
        try:
            for future in futures:
                future.result(timeout=300)
        finally:
            start.abort()  # a claimer that failed must not leave the other one waiting
    for round_, name in enumerate(names):
        a, b = got[0][round_], got[1][round_]
        assert sorted(a + b) == [keys[name]], f"round {round_}: A got {a}, B got {b}"
    # Every job was claimed exactly once: one attempt, one run row.
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(jobs.c.status, jobs.c.attempt, sa.func.count()).group_by(
                jobs.c.status, jobs.c.attempt
            )
        ).all()
        runs = conn.execute(sa.select(sa.func.count()).select_from(models.runs)).scalar_one()
    assert [tuple(r) for r in rows] == [("running", 1, ROUNDS)]
    assert runs == ROUNDS
    wins = sum(1 for a in got[0] if a)
    print(f"\n{ROUNDS} rounds: node A won {wins}, node B won {ROUNDS - wins}")


def test_claim_never_returns_more_than_its_limit(engine: sa.Engine, models: Models) -> None:
    make_jobs(engine, models, 60, name="many")
    for limit in (1, 2, 5, 13, 59, 60, 61, 100, 1000):
        with Session(engine) as session, session.begin():
            claimed = JobRepository(session, models).claim(NODE_A, ["many"], limit)
            assert len(claimed) == min(limit, 60), limit
            assert len({c.key for c in claimed}) == len(claimed)
            session.rollback()  # leave the 60 rows due for the next limit
    for limit in (0, -1):
        with repository(engine, models) as repo:
            assert repo.claim(NODE_A, ["many"], limit) == []


def test_concurrent_claimers_respect_limits_and_share_nothing(
    engine: sa.Engine, models: Models, pool: ThreadPoolExecutor
) -> None:
    total, limit, workers = 200, 3, 6
    make_jobs(engine, models, total, name="shared")
    barrier = threading.Barrier(workers)

    def worker(index: int) -> list[list[str]]:
        batches: list[list[str]] = []
        node = f"host-{index}:1:0000000{index}"
        with Session(engine) as session:
            repo = JobRepository(session, models)
            barrier.wait()
            while True:
                with session.begin():
                    batch = [c.key for c in repo.claim(node, ["shared"], limit)]
                if batch:
                    batches.append(batch)
                    continue
                # Empty can mean "the others hold the rest locked": stop only when none is left.
                with session.begin():
                    left = repo.count_by_status().get("pending", 0)
                if not left:
                    return batches

    futures = [pool.submit(worker, i) for i in range(workers)]
    batches = [batch for f in futures for batch in f.result(timeout=60)]
    assert all(1 <= len(batch) <= limit for batch in batches)
    claimed = [key for batch in batches for key in batch]
    assert len(claimed) == len(set(claimed)) == total


# --------------------------------------------------------------------------- what the claim sees
def test_claim_only_returns_registered_names(engine: sa.Engine, models: Models) -> None:
    for name in ("alpha", "beta", "gamma"):
        make_jobs(engine, models, 3, name=name)
    before = snapshot(engine, models)
    with repository(engine, models) as repo:
        assert repo.claim(NODE_A, [], 10) == []
        claimed = repo.claim(NODE_A, ["alpha", "gamma", "unknown"], 100)
    assert sorted(c.name for c in claimed) == ["alpha"] * 3 + ["gamma"] * 3
    after = snapshot(engine, models)
    betas = [key for key, row in before.items() if row["name"] == "beta"]
    assert {k: after[k] for k in betas} == {k: before[k] for k in betas}


def test_expired_leases_do_not_count_against_free_slots(engine: sa.Engine, models: Models) -> None:
    """R4 (pgqueuer #475/#630): running rows whose leases expired must not use up the limit."""
    make_jobs(
        engine, models, 25, name="busy", status="running", heartbeat_at=ago(hours=2), max_retries=1
    )
    due = make_jobs(engine, models, 12, name="busy")
    with repository(engine, models) as repo:
        claimed = repo.claim(NODE_A, ["busy"], 5)
    assert len(claimed) == 5
    assert {c.key for c in claimed} <= {j.key for j in due}
    # And once the rescuer has taken the dead leases back, they are claimable like any other.
    with repository(engine, models) as repo:
        assert repo.rescue_stalled(STALL).count == 25
    with repository(engine, models) as repo:
        assert len(repo.claim(NODE_A, ["busy"], 100)) == 25 + 12 - 5


def test_a_locked_row_is_skipped_not_waited_for(
    engine: sa.Engine, models: Models, held: Callable[[], Held]
) -> None:
    jobs = make_jobs(engine, models, 5, name="locky")
    locked = jobs[2]
    other = held()
    other.session.execute(
        sa.select(models.jobs.c.key).where(models.jobs.c.key == locked.key).with_for_update()
    )
    started = time.monotonic()
    with Session(engine) as session, session.begin():
        no_wait(session)  # if the claim waited for the lock, this would raise instead of hang
        claimed = JobRepository(session, models).claim(NODE_A, ["locky"], 10)
    elapsed = time.monotonic() - started
    assert sorted(c.key for c in claimed) == sorted(j.key for j in jobs if j.key != locked.key)
    print(f"\nclaim past a locked row took {elapsed * 1000:.1f} ms")
    other.rollback()
    with repository(engine, models) as repo:
        assert [c.key for c in repo.claim(NODE_A, ["locky"], 10)] == [locked.key]


def test_an_uncommitted_claim_hides_the_job_from_other_claimers(
    engine: sa.Engine, models: Models, held: Callable[[], Held]
) -> None:
    """P2: a claim that never commits (its node died before COMMIT) consumes no attempt."""
    job = make_job(engine, models, name="half")
    first = held()
    (mine,) = first.repo.claim(NODE_A, ["half"], 1)
    with Session(engine) as session, session.begin():
        no_wait(session)
        assert JobRepository(session, models).claim(NODE_B, ["half"], 1) == []
    first.rollback()  # the node "died" between UPDATE ... RETURNING and COMMIT
    claimed = claim_one(engine, models, "half", NODE_B)
    assert claimed.key == job.key and claimed.job.attempt == 1
    assert claimed.lease_id != mine.lease_id


# --------------------------------------------------------------------------- rescue vs completion
def test_rescuer_never_resurrects_a_completed_job(
    engine: sa.Engine, models: Models, held: Callable[[], Held]
) -> None:
    """R1 (River #1302): the completion is in flight while the rescuer looks at the job."""
    make_job(engine, models, name="slowpoke", max_retries=3)
    claimed = claim_one(engine, models, "slowpoke")
    update_job(engine, models, claimed.key, heartbeat_at=ago(hours=1))  # looks stalled

    completion = held()
    result = completion.repo.finish(claimed, Outcome(RunStatus.COMPLETED, 5))
    assert result.applied  # written, not yet committed
    with Session(engine) as session, session.begin():
        no_wait(session)
        rescued = JobRepository(session, models).rescue_stalled(STALL)
    assert rescued.count == 0, "the rescuer skips the row the completion holds"
    completion.commit()
    with repository(engine, models) as repo:
        assert repo.rescue_stalled(STALL).count == 0
        job = repo.get(claimed.key)
    assert job is not None and job.status is JobStatus.COMPLETED
    assert [r["status"] for r in runs_of(engine, models, claimed.key)] == ["completed"]


def test_a_completion_after_the_rescue_is_fenced_off(
    engine: sa.Engine, models: Models, held: Callable[[], Held], pool: ThreadPoolExecutor
) -> None:
    """R1, the other order: the rescue holds the row, the completion waits, then matches nothing."""
    make_job(engine, models, name="laggard", max_retries=3)
    claimed = claim_one(engine, models, "laggard")
    update_job(engine, models, claimed.key, heartbeat_at=ago(hours=1))

    rescuer = held()
    assert rescuer.repo.rescue_stalled(STALL).pending == (claimed.key,)
    finisher = held()
    pending: Future[Any] = pool.submit(
        finisher.repo.finish, claimed, Outcome(RunStatus.COMPLETED, 5)
    )
    wait_until(lambda: waiting_on_lock(engine, finisher.pid), message="the finish to block")
    assert not pending.done()
    rescuer.commit()
    result = pending.result(timeout=10)
    finisher.commit()
    assert not result.applied and not result.already_recorded
    with repository(engine, models) as repo:
        job = repo.get(claimed.key)
    assert job is not None and job.status is JobStatus.PENDING and job.lease_id is None
    assert [r["status"] for r in runs_of(engine, models, claimed.key)] == ["lost"]


def test_rescuer_skips_a_row_whose_heartbeat_is_in_flight(
    engine: sa.Engine, models: Models, held: Callable[[], Held]
) -> None:
    make_job(engine, models, name="beating")
    claimed = claim_one(engine, models, "beating")
    update_job(engine, models, claimed.key, heartbeat_at=ago(hours=1))
    beat = held()
    assert beat.repo.heartbeat(NODE_A, [claimed.lease_id]) == {claimed.lease_id}
    with Session(engine) as session, session.begin():
        no_wait(session)
        assert JobRepository(session, models).rescue_stalled(STALL).count == 0
    beat.commit()
    with repository(engine, models) as repo:
        assert repo.rescue_stalled(STALL).count == 0
        assert repo.heartbeat(NODE_A, [claimed.lease_id]) == {claimed.lease_id}


def test_rescue_never_touches_a_live_lease(engine: sa.Engine, models: Models) -> None:
    live = make_jobs(engine, models, 3, name="live", status="running", heartbeat_at=ago(minutes=4))
    dead = make_job(
        engine, models, name="live", status="running", heartbeat_at=ago(minutes=6), max_retries=1
    )
    before = snapshot(engine, models, *(j.key for j in live))
    with repository(engine, models) as repo:
        assert repo.rescue_stalled(STALL).pending == (dead.key,)
    assert snapshot(engine, models, *(j.key for j in live)) == before


# --------------------------------------------------------------------------- stale leases
def test_a_stale_lease_can_neither_heartbeat_nor_finish(engine: sa.Engine, models: Models) -> None:
    """P6: node A paused past its lease; the job was rescued and re-claimed by node B."""
    make_job(engine, models, name="paused", max_retries=5)
    stale = claim_one(engine, models, "paused", NODE_A)
    update_job(engine, models, stale.key, heartbeat_at=ago(hours=1))
    with repository(engine, models) as repo:
        assert repo.rescue_stalled(STALL).count == 1

    # Between the rescue and the next claim: the row is pending and A's lease names nothing.
    before = snapshot(engine, models, stale.key)
    with repository(engine, models) as repo:
        assert repo.heartbeat(NODE_A, [stale.lease_id]) == set()
        assert not repo.finish(stale, Outcome(RunStatus.COMPLETED, 1)).applied
    assert snapshot(engine, models, stale.key) == before

    # After B's claim: A's late writes still match nothing, for every outcome.
    fresh = claim_one(engine, models, "paused", NODE_B)
    # The lost run used up no attempt: the rerun has the same number.
    assert fresh.lease_id != stale.lease_id and fresh.job.attempt == 1
    before = snapshot(engine, models, stale.key)
    for status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.SKIPPED):
        with repository(engine, models) as repo:
            assert repo.heartbeat(NODE_A, [stale.lease_id]) == set()
            result = repo.finish(stale, Outcome(status, 1, "late"))
            assert not result.applied and not result.already_recorded, status
    with repository(engine, models) as repo:
        # The same node id with the old lease is no better than another node.
        assert repo.heartbeat(NODE_B, [stale.lease_id]) == set()
        assert repo.release(NODE_A, [stale.lease_id]).count == 0
    assert snapshot(engine, models, stale.key) == before
    with repository(engine, models) as repo:
        assert repo.heartbeat(NODE_B, [fresh.lease_id]) == {fresh.lease_id}
        assert repo.finish(fresh, Outcome(RunStatus.COMPLETED, 1)).applied
    runs = runs_of(engine, models, stale.key)
    assert [(r["lease_id"], r["status"]) for r in runs] == [
        (stale.lease_id, "lost"),
        (fresh.lease_id, "completed"),
    ]


def test_heartbeat_renews_only_the_leases_it_names(engine: sa.Engine, models: Models) -> None:
    mine = [claim_one(engine, models, make_job(engine, models).name) for _ in range(3)]
    unnamed = claim_one(engine, models, make_job(engine, models).name)  # node A's, not passed
    theirs = claim_one(engine, models, make_job(engine, models).name, NODE_B)
    for c in [*mine, unnamed, theirs]:
        update_job(engine, models, c.key, heartbeat_at=ago(minutes=1))
    leases = {c.lease_id for c in mine}
    with repository(engine, models) as repo:
        held_now = repo.heartbeat(NODE_A, [*leases, theirs.lease_id, uuid.uuid4()])
        db_now = repo.now()
    assert held_now == leases
    with repository(engine, models) as repo:
        for c in mine:
            job = repo.get(c.key)
            assert job is not None and job.heartbeat_at == db_now
        for c in (unnamed, theirs):
            other = repo.get(c.key)
            assert other is not None and other.heartbeat_at is not None
            assert other.heartbeat_at < db_now
        assert repo.heartbeat(NODE_A, []) == set()


def test_a_node_that_reclaimed_its_job_cannot_use_the_old_lease(
    engine: sa.Engine, models: Models
) -> None:
    """The same node id holds the job again under a new lease: only the new lease is honoured."""
    make_job(engine, models, name="again", max_retries=3)
    old = claim_one(engine, models, "again", NODE_A)
    update_job(engine, models, old.key, heartbeat_at=ago(hours=1))
    with repository(engine, models) as repo:
        assert repo.rescue_stalled(STALL).count == 1
    new = claim_one(engine, models, "again", NODE_A)
    before = snapshot(engine, models, old.key)
    with repository(engine, models) as repo:
        assert repo.heartbeat(NODE_A, [old.lease_id]) == set()
        assert not repo.finish(old, Outcome(RunStatus.COMPLETED, 1)).applied
        assert repo.release(NODE_A, [old.lease_id]).count == 0
    assert snapshot(engine, models, old.key) == before
    with repository(engine, models) as repo:
        assert repo.heartbeat(NODE_A, [new.lease_id]) == {new.lease_id}


# --------------------------------------------------------------------------- cancel vs claim
@pytest.mark.parametrize("first", ["cancel", "claim"])
def test_cancel_racing_a_claim_has_one_outcome(
    engine: sa.Engine, models: Models, held: Callable[[], Held], first: str
) -> None:
    """R6: either the job is cancelled and never claimed, or it is claimed and the cancel is a
    request to its holder; never both."""
    job = make_job(engine, models, name="wavering")
    holder = held()
    if first == "cancel":
        assert holder.repo.cancel(job.key).cancelled
        with Session(engine) as session, session.begin():
            no_wait(session)
            assert JobRepository(session, models).claim(NODE_A, ["wavering"], 1) == []
        holder.commit()
        with repository(engine, models) as repo:
            assert repo.claim(NODE_A, ["wavering"], 1) == []
            final = repo.get(job.key)
        assert final is not None and final.status is JobStatus.CANCELLED
    else:
        (claimed,) = holder.repo.claim(NODE_A, ["wavering"], 1)
        holder.commit()
        with repository(engine, models) as repo:
            result = repo.cancel(job.key)
        assert (result.cancelled, result.requested, result.node_id) == (False, True, NODE_A)
        with repository(engine, models) as repo:
            assert repo.cancel_requested([claimed.lease_id]) == {claimed.lease_id}
            assert repo.finish(claimed, Outcome(RunStatus.CANCELLED, 3)).applied
            final = repo.get(job.key)
            with pytest.raises(InvalidStateError):
                repo.cancel(job.key)
        assert final is not None and final.status is JobStatus.CANCELLED
