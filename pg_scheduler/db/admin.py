"""The statements that move jobs from outside their run: taking leases back (the stall rescue,
a node's release at shutdown), operator actions (cancel, trigger, retry) and housekeeping
(retention, orphans). Built from the model tables, as ``queries`` (its module docstring
holds for these too); ``JobRepository`` runs them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from pg_scheduler import states
from pg_scheduler.models import Models
from pg_scheduler.states import JobStatus, JobType, RunStatus, Transition

from .queries import guard, in_source, now, waiting_for_tick


# ---------------------------------------------------------------- taking leases back
def take_back(
    models: Models,
    condition: sa.ColumnElement[bool],
    transition: Transition,
    reason: str,
    limit: int,
    *,
    max_lost_leases: int,
) -> sa.Select[Any]:
    """Move running jobs matching ``condition`` back to ``pending`` through ``transition``
    (``RESCUE``: their node stopped heartbeating; ``RELEASE``: handed back by their node), and
    finish their run rows, in one statement. Returns each moved job's row (new values) and
    ``old_lease``. A rescue that brings a job's ``lost_leases`` to ``max_lost_leases`` ends a
    one-time job ``failed``; a recurring job is left pending for the caller to move to its next
    tick (``NEXT_TICK``)."""
    jobs, runs = models.jobs, models.runs
    j, r = jobs.c, runs.c
    lost = transition is states.RESCUE
    run_status = RunStatus.LOST if lost else RunStatus.RELEASED
    # The rescuer skips rows locked by someone else (a heartbeat or an outcome write in
    # flight): it looks again next pass. A release must wait for them instead: skipping a row
    # that our own heartbeat happens to be renewing would leave it running under a dead node.
    victims = (
        sa.select(j.key, j.lease_id)
        .where(in_source(jobs, transition), condition)
        .order_by(j.heartbeat_at)
        .limit(limit)
        .with_for_update(skip_locked=lost)
        .cte("victims")
        .prefix_with("MATERIALIZED")
    )
    # Neither a lost nor a released run uses up an attempt: the claim counted one, give it
    # back (the rerun has the same attempt number). A lost run counts in ``lost_leases``, and
    # the one that reaches ``max_lost_leases`` ends a one-time job (``failed``); a recurring
    # job then waits for its next tick (the caller).
    poisoned = sa.and_(sa.literal(lost), j.lost_leases + 1 >= max_lost_leases)
    one_time_poisoned = sa.and_(poisoned, j.job_type == JobType.ONE_TIME.value)
    values: dict[str, Any] = {}
    if lost:
        values = {
            "status": sa.case(
                (one_time_poisoned, transition.to(JobStatus.FAILED).value),
                else_=transition.to(JobStatus.PENDING).value,
            ),
            "lost_leases": j.lost_leases + 1,
            "last_error": sa.case(
                (
                    poisoned,
                    sa.func.concat(
                        "lost its lease ",
                        sa.cast(j.lost_leases + 1, sa.Text),
                        " times (node died or hung); not retried",
                    ),
                ),
                else_=reason,
            ),
            "last_failure_at": sa.case((one_time_poisoned, now()), else_=j.last_failure_at),
            "consecutive_failures": sa.case(
                (one_time_poisoned, j.consecutive_failures + 1),
                else_=j.consecutive_failures,
            ),
        }
    else:
        values = {"status": transition.target.value}
    moved = (
        sa.update(jobs)
        .where(
            j.key == victims.c.key,
            guard(jobs, transition, lease_id=victims.c.lease_id),
        )
        .values(
            next_run=sa.case((one_time_poisoned, sa.null()), else_=now()),
            finished_at=sa.case((one_time_poisoned, now()), else_=sa.null()),
            # A job given up keeps its last attempt, as its run rows show it.
            attempt=sa.case(
                (one_time_poisoned, j.attempt), else_=sa.func.greatest(j.attempt - 1, 0)
            ),
            lease_id=None,
            heartbeat_at=None,
            cancel_requested=False,
            updated_at=now(),
            **values,
        )
        .returning(*jobs.c, victims.c.lease_id.label("old_lease"))
        .cte("moved")
    )
    record_runs = (
        sa.update(runs)
        .where(r.lease_id == moved.c.old_lease)
        .values(status=run_status.value, finished_at=now(), error=reason)
        .cte("record_runs")
    )
    return sa.select(moved).add_cte(record_runs)


def next_tick(models: Models, key: str, tick: dt.datetime) -> sa.Update:
    """``NEXT_TICK``: a recurring job gives up the tick its runs kept being lost in."""
    jobs = models.jobs
    return (
        sa.update(jobs)
        .where(jobs.c.key == key, guard(jobs, states.NEXT_TICK))
        .values(
            status=states.NEXT_TICK.target.value,
            next_run=tick,
            scheduled_at=tick,
            attempt=0,
            lost_leases=0,
            updated_at=now(),
        )
    )


def disable(models: Models, key: str, reason: str) -> sa.Update:
    """``DISABLE``: a pending recurring job whose stored schedule yields no next tick."""
    jobs = models.jobs
    return (
        sa.update(jobs)
        .where(jobs.c.key == key, guard(jobs, states.DISABLE))
        .values(
            status=states.DISABLE.target.value,
            next_run=None,
            finished_at=now(),
            last_error=reason,
            updated_at=now(),
        )
    )


# ---------------------------------------------------------------- operator actions
def cancel(models: Models, key: str) -> sa.Update:
    """``CANCEL`` a pending job; returns its key."""
    jobs = models.jobs
    return (
        sa.update(jobs)
        .where(jobs.c.key == key, guard(jobs, states.CANCEL))
        .values(
            status=states.CANCEL.target.value,
            next_run=None,
            finished_at=now(),
            last_error="cancelled",
            updated_at=now(),
        )
        .returning(jobs.c.key)
    )


def request_cancel(models: Models, key: str) -> sa.Update:
    """``REQUEST_CANCEL``: flag a running job (its status stays, the transition's one target);
    only the lease holder writes a running row's outcome. Returns the holder's node."""
    jobs = models.jobs
    assert states.REQUEST_CANCEL.target is JobStatus.RUNNING  # the status is left as it is
    return (
        sa.update(jobs)
        .where(jobs.c.key == key, guard(jobs, states.REQUEST_CANCEL))
        .values(cancel_requested=True, updated_at=now())
        .returning(jobs.c.node_id)
    )


def trigger(models: Models, key: str) -> sa.Update:
    """``TRIGGER``: make a pending job due now; returns the row."""
    jobs = models.jobs
    j = jobs.c
    manual_tick = sa.and_(j.job_type == JobType.RECURRING.value, waiting_for_tick(j))
    return (
        sa.update(jobs)
        .where(j.key == key, guard(jobs, states.TRIGGER))
        .values(
            status=states.TRIGGER.target.value,
            next_run=now(),
            scheduled_at=sa.case((manual_tick, now()), else_=j.scheduled_at),
            updated_at=now(),
        )
        .returning(*jobs.c)
    )


def retry_now(models: Models, key: str) -> sa.Update:
    """``RETRY_NOW``: re-queue a failed or cancelled job, with a fresh attempt budget; returns
    the row."""
    jobs = models.jobs
    return (
        sa.update(jobs)
        .where(jobs.c.key == key, guard(jobs, states.RETRY_NOW))
        .values(
            status=states.RETRY_NOW.target.value,
            next_run=now(),
            # A new run request: a new scheduled_at keeps (key, scheduled_at, attempt) unique.
            scheduled_at=now(),
            attempt=0,
            lost_leases=0,
            finished_at=None,
            updated_at=now(),
        )
        .returning(*jobs.c)
    )


# ---------------------------------------------------------------- housekeeping
def delete_finished_jobs(models: Models, retention: dt.timedelta, limit: int) -> sa.Executable:
    """Up to ``limit`` finished one-time jobs older than ``retention``; returns their keys."""
    jobs = models.jobs
    j = jobs.c
    old_jobs = (
        sa.select(j.key)
        .where(
            j.job_type == JobType.ONE_TIME.value,
            j.status.in_([s.value for s in JobStatus if s in states.TERMINAL_STATUSES]),
            j.finished_at < now() - retention,
        )
        .limit(limit)
        .scalar_subquery()
    )
    return sa.delete(jobs).where(j.key.in_(old_jobs)).returning(j.key)


def delete_finished_runs(models: Models, retention: dt.timedelta, limit: int) -> sa.Delete:
    r = models.runs.c
    old_runs = (
        sa.select(r.id)
        .where(r.finished_at < now() - retention)
        # The oldest runs first, along the primary key: runs are numbered as they start, so
        # the scan meets the runs to prune first (there is no index on finished_at).
        .order_by(r.id)
        .limit(limit)
        .scalar_subquery()
    )
    return sa.delete(models.runs).where(r.id.in_(old_runs))


def delete_orphans(models: Models, timeout: dt.timedelta, limit: int) -> sa.Executable:
    """Up to ``limit`` jobs no live node registered the name of (``JobRepository``); returns
    their keys."""
    jobs, n = models.jobs, models.nodes.c
    j = jobs.c
    known = (
        sa.select(sa.literal(1))
        .where(n.last_seen_at > now() - timeout, j.name == sa.any_(n.job_names))
        .exists()
    )
    orphans = (
        sa.select(j.key)
        .where(j.status != JobStatus.RUNNING.value, j.created_at < now() - timeout, ~known)
        .limit(limit)
        .scalar_subquery()
    )
    return sa.delete(jobs).where(j.key.in_(orphans)).returning(j.key)
