"""The job state machine, written once. Every UPDATE in the repository is built from ``TRANSITIONS``.

```
            schedule / enqueue
                   │
                   ▼
   ┌──────────► pending ──── cancel ────► cancelled
   │               │ claim (due, registered here, slot free; new lease)
   │               ▼
   │            running ──── success ───► completed        (one-time)
   │   retry /     │  ├───── success ───► pending @ next tick (recurring)
   │   rescue      │  ├───── failure, retries left ───► pending @ now + backoff
   └───────────────┘  ├───── failure, none left ──────► failed (one-time) / pending @ next tick
                      ├───── cancel requested ────────► cancelled, recurring too
                      │                                 (however the code ended; never re-run)
                      ├───── handed back (release) ───► pending at once (no attempt used up)
                      └───── lease lost (rescue) ─────► pending at once (no attempt used up);
                                                        past max_lost_leases in a row: failed
                                                        (one-time) / pending @ next tick
```

Which of these ends a run is decided in one place, ``workers.attempt_outcome`` (README "Outcomes").

A transition names the states it may start from, the states it may end in, and whether it is
fenced. ``db.queries.guard`` turns that into ``WHERE status IN (...)`` and, for fenced
transitions, ``AND lease_id = :lease``, so two writers can never both win: the loser's statement
matches no row and it learns so from the count. Statements set their new status through
``Transition.to`` / ``Transition.target``, never a literal.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class JobStatus(str, enum.Enum):
    """Where a job row is in its life. Stored as text, checked by a constraint."""

    PENDING = "pending"
    """Waiting for ``next_run``; also a retry waiting for its backoff, and every recurring job
    between its ticks."""
    RUNNING = "running"
    """Claimed: one node holds a lease (``lease_id``) and renews it with heartbeats."""
    COMPLETED = "completed"
    """A one-time job that succeeded."""
    FAILED = "failed"
    """A one-time job whose attempts are used up."""
    CANCELLED = "cancelled"
    """Cancelled by an operator. A cancelled recurring job stays off, even across re-scheduling
    at deploys, until an operator runs it again with ``retry_job`` (``pg-scheduler jobs retry``)."""

    def __str__(self) -> str:
        return self.value


class JobType(str, enum.Enum):
    """Recurring jobs have one row per name; one-time jobs one row per run request."""

    RECURRING = "recurring"
    ONE_TIME = "one_time"

    def __str__(self) -> str:
        return self.value


class RunStatus(str, enum.Enum):
    """Outcome of one attempt, as recorded in the runs table."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    """A ``skip``-policy tick found too late to run; recorded so the history shows it."""
    LOST = "lost"
    """The node stopped heartbeating; the rescuer took the job back (no attempt used up)."""
    RELEASED = "released"
    """Handed back by its node: stopped by shutdown (its code raised the cancellation, or was
    still running when the shutdown timeout ended), or its event loop died. No attempt used up."""

    def __str__(self) -> str:
        return self.value


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE_STATUSES = frozenset({JobStatus.PENDING, JobStatus.RUNNING})
FINISHED_RUN_STATUSES = frozenset(set(RunStatus) - {RunStatus.RUNNING})


@dataclass(frozen=True)
class Transition:
    """A named move between states.

    ``source``: the states the row must be in (the statement's ``WHERE status``); empty for an
    insert. ``targets``: the states it may leave the row in; a statement takes its target from
    here (``to``, ``target``), so a move the table does not list fails before it is sent.
    ``fenced``: the statement also requires a lease (``AND lease_id = :lease``), the writer's own
    or, for a take-back, the one it read under lock; a writer that lost the lease matches no row.
    """

    name: str
    source: frozenset[JobStatus]
    targets: frozenset[JobStatus]
    fenced: bool

    def allows(self, status: JobStatus) -> bool:
        return status in self.source

    def to(self, status: JobStatus) -> JobStatus:
        """``status``, which must be one of this transition's targets."""
        if status not in self.targets:
            allowed = ", ".join(sorted(s.value for s in self.targets))
            raise ValueError(
                f"transition {self.name!r} cannot end in {status.value!r} (targets: {allowed})"
            )
        return status

    @property
    def target(self) -> JobStatus:
        """The one target of a transition that has a single one."""
        if len(self.targets) != 1:
            raise ValueError(f"transition {self.name!r} has several targets; choose one with to()")
        (status,) = self.targets
        return status


def _t(name: str, source: set[JobStatus], targets: set[JobStatus], *, fenced: bool) -> Transition:
    return Transition(name, frozenset(source), frozenset(targets), fenced)


P, R = JobStatus.PENDING, JobStatus.RUNNING
C, F, X = JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED

ENQUEUE = _t("enqueue", set(), {P}, fenced=False)  # an insert: a new row (schedule or enqueue)
CLAIM = _t("claim", {P}, {R}, fenced=False)  # the claim creates the lease
HEARTBEAT = _t("heartbeat", {R}, {R}, fenced=True)  # the holder renews its own leases
# A run's outcome, written by the lease holder only.
COMPLETE = _t("complete", {R}, {C}, fenced=True)
# Recurring: done with this tick, wait for the next one.
RESCHEDULE = _t("reschedule", {R}, {P}, fenced=True)
RETRY = _t("retry", {R}, {P}, fenced=True)
FAIL = _t("fail", {R}, {F}, fenced=True)  # also a recurring job whose schedule became invalid
# The holder honours a cancel request: the job ends cancelled.
ABORT = _t("abort", {R}, {X}, fenced=True)
# Taking a lease back from a node that stopped heartbeating, or at the end of a shutdown. Fenced
# by the lease read under lock: a row renewed or finished meanwhile is left alone.
RESCUE = _t("rescue", {R}, {P, F}, fenced=True)  # failed only past max_lost_leases
RELEASE = _t("release", {R}, {P}, fenced=True)  # handed back by its node; the job did not fail
# After a rescue that reached max_lost_leases, a recurring job gives up its tick (the row is
# pending again, still locked by the rescue's transaction): it waits for its next tick, or, if its
# stored schedule yields none, it is disabled.
NEXT_TICK = _t("next_tick", {P}, {P}, fenced=False)
DISABLE = _t("disable", {P}, {F}, fenced=False)
# Operator and API actions. None is fenced: an operator holds no lease.
CANCEL = _t("cancel", {P}, {X}, fenced=False)
# Only flags the row (its status stays): the holder aborts.
REQUEST_CANCEL = _t("request_cancel", {R}, {R}, fenced=False)
TRIGGER = _t("trigger", {P}, {P}, fenced=False)  # run a recurring job now
# The operator re-queues a finished job (a cancelled recurring one too).
RETRY_NOW = _t("retry_now", {F, X}, {P}, fenced=False)

TRANSITIONS: tuple[Transition, ...] = (
    ENQUEUE,
    CLAIM,
    HEARTBEAT,
    COMPLETE,
    RESCHEDULE,
    RETRY,
    FAIL,
    ABORT,
    RESCUE,
    RELEASE,
    NEXT_TICK,
    DISABLE,
    CANCEL,
    REQUEST_CANCEL,
    TRIGGER,
    RETRY_NOW,
)


def after_run(outcome: RunStatus, *, recurring: bool, retry_left: bool) -> Transition:
    """The transition that records a run which ended with ``outcome`` (the diagram above).

    ``retry_left``: a failure may be retried (attempts left). A recurring job is done with its tick
    whatever happened (``RESCHEDULE``), unless it was cancelled; if its schedule yields no next
    tick, the caller records ``FAIL`` instead (``ticks.Disabled``). Lost and released runs are not
    outcomes of a run: the take-back transitions (``RESCUE``, ``RELEASE``) record them.
    """
    if outcome is RunStatus.FAILED and retry_left:
        return RETRY
    if outcome is RunStatus.CANCELLED:
        # cancel_job ends the job, recurring ones too: off until retry_now, as when it is
        # cancelled while pending (an operator's cancel is never undone by the next tick).
        return ABORT
    if recurring and outcome in _RUN_ENDINGS:
        return RESCHEDULE
    try:
        return _RUN_ENDINGS[outcome]
    except KeyError:
        raise ValueError(f"{outcome.value!r} is not the outcome of a run") from None


_RUN_ENDINGS = {
    RunStatus.COMPLETED: COMPLETE,
    RunStatus.SKIPPED: COMPLETE,  # a one-time job's tick skipped by its misfire policy
    RunStatus.FAILED: FAIL,
}
