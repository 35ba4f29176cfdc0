"""When a recurring job runs next: one pure decision, the time passed in.

Every place that moves a recurring job to a tick asks ``next_tick``: a new or re-scheduled job
(``JobRepository.upsert_recurring``), a run that ended (``finish``), a tick given up after its
runs kept being lost (the rescue). The answer is a ``NextTick`` or, when the stored schedule can
no longer produce one (a cron or time zone edited by hand, or written by another version), a
``Disabled`` with the ``last_error`` the job is disabled with. ``skip_reason`` is the other half
of the misfire policy: whether a tick that was claimed late is run or recorded as skipped.

No I/O: ``now`` is the database's clock, read by the caller in its own transaction (DESIGN §5).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol, cast

from .cron import CronSchedule, MisfirePolicy, is_too_late, next_run_after
from .errors import InvalidCronError, InvalidTimezoneError

__all__ = ["Disabled", "NextTick", "RecurringSchedule", "TickDecision", "next_tick", "skip_reason"]


class RecurringSchedule(Protocol):
    """What the decision reads of a recurring job: a ``JobRecord``, or a ``RecurringSpec``
    (a job not scheduled yet: no ``scheduled_at``)."""

    @property
    def cron(self) -> str | None: ...
    @property
    def timezone(self) -> str: ...
    @property
    def misfire(self) -> str: ...
    @property
    def misfire_grace(self) -> dt.timedelta: ...
    @property
    def scheduled_at(self) -> dt.datetime | None: ...


@dataclass(frozen=True)
class NextTick:
    """The job waits for ``at`` (``next_run`` and ``scheduled_at`` both)."""

    at: dt.datetime


@dataclass(frozen=True)
class Disabled:
    """The job has no next tick: it is disabled (``failed``) with ``reason`` as its last error."""

    reason: str


TickDecision = NextTick | Disabled


def next_tick(job: RecurringSchedule, now: dt.datetime) -> TickDecision:
    """The next tick of ``job`` at ``now``.

    A job with a tick (``scheduled_at``) is done with it, whatever happened: the next one is
    strictly after it, as the misfire policy says (``cron.next_run_after``), so a tick never runs
    twice. A job without one (being scheduled) starts at the first tick after ``now``.
    """
    try:
        if job.cron is None:
            raise InvalidCronError("None", "a recurring job needs a cron expression")
        schedule = CronSchedule.parse(job.cron, job.timezone)
        if job.scheduled_at is None:
            return NextTick(schedule.next_after(now))
        return NextTick(
            next_run_after(
                schedule,
                tick=job.scheduled_at,
                now=now,
                misfire=cast(MisfirePolicy, job.misfire),
                grace=job.misfire_grace,
            )
        )
    except (InvalidCronError, InvalidTimezoneError) as exc:
        # Disable this one job with the reason: raising would stop whatever else the caller's
        # statement does (a rescue pass takes back every stalled job in one transaction).
        return Disabled(
            f"schedule disabled: {exc} (fix the job's cron or time zone, then retry it)"
        )


def skip_reason(job: RecurringSchedule, now: dt.datetime) -> str | None:
    """Why the run of ``job``'s tick, claimed at ``now``, is skipped rather than run (the ``skip``
    policy, a tick later than ``misfire_grace``); None when it runs."""
    if job.scheduled_at is None:
        return None
    late = is_too_late(
        tick=job.scheduled_at,
        now=now,
        misfire=cast(MisfirePolicy, job.misfire),
        grace=job.misfire_grace,
    )
    return "skipped: tick later than misfire_grace" if late else None
