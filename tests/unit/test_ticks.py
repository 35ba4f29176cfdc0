"""``ticks``: when a recurring job runs next, decided without a database (time passed in)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest

from pg_scheduler.cron import CronSchedule
from pg_scheduler.db.records import RecurringSpec
from pg_scheduler.ticks import Disabled, NextTick, next_tick, skip_reason

UTC = dt.timezone.utc


def at(hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(2026, 3, 1, hour, minute, second, tzinfo=UTC)


TEN = at(10)


@dataclass(frozen=True)
class Job:
    """The fields ``next_tick`` reads (a ``JobRecord`` has them too)."""

    cron: str | None = "0 * * * *"
    timezone: str = "UTC"
    misfire: str = "coalesce"
    misfire_grace: dt.timedelta = dt.timedelta(minutes=1)
    scheduled_at: dt.datetime | None = TEN


def test_a_finished_tick_moves_to_the_next_one() -> None:
    assert next_tick(Job(), at(10, 0, 5)) == NextTick(at(11))


def test_the_next_tick_is_strictly_after_the_tick_even_when_now_is_earlier() -> None:
    # A clock read before the tick (it cannot go back, but the rule must not depend on it).
    assert next_tick(Job(), at(9, 59)) == NextTick(at(11))


def test_coalesce_skips_the_ticks_missed_while_down() -> None:
    assert next_tick(Job(), at(13, 30)) == NextTick(at(14))


def test_all_runs_missed_ticks_one_by_one_within_the_grace() -> None:
    job = Job(misfire="all", misfire_grace=dt.timedelta(hours=5))
    assert next_tick(job, at(13, 30)) == NextTick(at(11))


def test_all_drops_ticks_older_than_the_grace() -> None:
    job = Job(misfire="all", misfire_grace=dt.timedelta(minutes=90))
    assert next_tick(job, at(13, 30)) == NextTick(at(12))


def test_a_job_without_a_tick_starts_at_the_first_one_after_now() -> None:
    assert next_tick(Job(scheduled_at=None), at(10, 15)) == NextTick(at(11))


def test_a_new_schedule_is_decided_by_the_same_function() -> None:
    spec = RecurringSpec("report", CronSchedule.parse("*/15 * * * *"))
    assert next_tick(spec, at(10, 1)) == NextTick(at(10, 15))


def test_the_time_zone_is_the_jobs() -> None:
    job = Job(cron="0 9 * * *", timezone="Europe/Paris", scheduled_at=None)
    assert next_tick(job, at(0)) == NextTick(at(8))  # 09:00 in Paris, UTC+1 in March


@pytest.mark.parametrize(
    ("cron", "timezone", "named"),
    [
        ("not a cron", "UTC", "not a cron"),
        ("0 * * * *", "Mars/Olympus_Mons", "Mars"),
        (None, "UTC", "cron"),
    ],
)
def test_a_schedule_that_yields_no_tick_disables_the_job(
    cron: str | None, timezone: str, named: str
) -> None:
    decision = next_tick(Job(cron=cron, timezone=timezone), at(10, 0, 5))
    assert isinstance(decision, Disabled)
    assert decision.reason.startswith("schedule disabled: ")
    assert named in decision.reason


def test_a_late_tick_is_skipped_only_under_skip_past_the_grace() -> None:
    late = at(10, 2)  # two minutes after the tick; grace one minute
    assert skip_reason(Job(misfire="skip"), late) == "skipped: tick later than misfire_grace"
    assert skip_reason(Job(misfire="skip"), at(10, 0, 30)) is None
    assert skip_reason(Job(misfire="coalesce"), late) is None
    assert skip_reason(Job(misfire="skip", scheduled_at=None), late) is None
