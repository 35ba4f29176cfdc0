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

A transition names the states it may start from; the repository turns that into
``WHERE status IN (...)`` and, for transitions out of ``running``, ``AND lease_id = :mine``, so two
writers can never both win: the loser's statement matches no row and it learns so from the count.
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
    """A named move between states. ``fenced`` transitions also require the caller's lease."""

    name: str
    source: frozenset[JobStatus]
    targets: frozenset[JobStatus]

    @property
    def fenced(self) -> bool:
        return JobStatus.RUNNING in self.source

    def allows(self, status: JobStatus) -> bool:
        return status in self.source


def _t(name: str, source: set[JobStatus], targets: set[JobStatus]) -> Transition:
    return Transition(name, frozenset(source), frozenset(targets))


P, R = JobStatus.PENDING, JobStatus.RUNNING
C, F, X = JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED

CLAIM = _t("claim", {P}, {R})
# A run's outcome, written by the lease holder only.
COMPLETE = _t("complete", {R}, {C})
RESCHEDULE = _t("reschedule", {R}, {P})  # recurring: done with this tick, wait for the next one
RETRY = _t("retry", {R}, {P})
FAIL = _t("fail", {R}, {F})
ABORT = _t("abort", {R}, {X})  # the holder honours a cancel request: the job ends cancelled
# Taking a lease back from a node that stopped heartbeating, or at the end of a shutdown.
RESCUE = _t("rescue", {R}, {P, F})  # failed only past max_lost_leases
RELEASE = _t("release", {R}, {P})  # handed back by its node; the job did not fail
# Operator and API actions.
CANCEL = _t("cancel", {P}, {X})
REQUEST_CANCEL = _t("request_cancel", {R}, {R})  # only flags the row; the holder aborts
TRIGGER = _t("trigger", {P}, {P})  # run a recurring job now
RETRY_NOW = _t("retry_now", {F, X}, {P})  # operator re-queues a finished one-time job

TRANSITIONS: tuple[Transition, ...] = (
    CLAIM,
    COMPLETE,
    RESCHEDULE,
    RETRY,
    FAIL,
    ABORT,
    RESCUE,
    RELEASE,
    CANCEL,
    REQUEST_CANCEL,
    TRIGGER,
    RETRY_NOW,
)
