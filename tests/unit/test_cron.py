"""Cron parsing, tick computation, DST and misfire policy (pure: no database).

The DST tests check ``pg_scheduler.cron`` against a brute-force oracle written here from the
module's documented definitions (walk the clock minute by minute), not against croniter.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pg_scheduler.cron import (
    MISFIRE_POLICIES,
    CronSchedule,
    MisfirePolicy,
    is_too_late,
    next_run_after,
)
from pg_scheduler.errors import ConfigError, InvalidCronError, InvalidTimezoneError

UTC = timezone.utc
BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def local(
    zone: str, year: int, month: int, day: int, hour: int, minute: int, *, fold: int = 0
) -> datetime:
    wall = datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone), fold=fold)
    # Converted to UTC: PEP 495 makes an ambiguous local time unequal to every other zone's.
    return wall.astimezone(UTC)


# --- parsing ------------------------------------------------------------------------------------

VALID = [
    ("* * * * *", False),
    ("*/5 * * * *", False),
    ("0 0 * * *", False),
    ("0 9-17 * * 1-5", False),
    ("0 9-17 * * MON-FRI", False),
    ("0 0 * MAR-APR THU,FRI", False),  # names holding H and R are not hashed/random values
    ("15,45 */2 1,15 jan-jun *", False),
    ("0 0 * * 7", False),
    ("0 0 ? * *", False),
    ("0 0 L * *", False),
    ("0 9 * * 1#1", False),
    ("0 0 29 2 *", False),  # leap years only, but it fires
    ("0 0 * 2 1#5", False),  # a fifth Monday in February: rare (2044), not never
    ("*/10 * * * * *", True),
    ("30 * * * * *", True),
    ("0 30 9 * * *", True),
    ("@yearly", False),
    ("@annually", False),
    ("@monthly", False),
    ("@weekly", False),
    ("@daily", False),
    ("@midnight", False),
    ("@hourly", False),
    ("@DAILY", False),
    ("  0 0 * * *\t", False),
]


@pytest.mark.parametrize(("expression", "has_seconds"), VALID)
def test_valid_expressions(expression: str, has_seconds: bool) -> None:
    schedule = CronSchedule.parse(expression)
    assert schedule.expression == expression.strip()
    assert schedule.timezone == "UTC"
    assert schedule.has_seconds is has_seconds
    tick = schedule.next_after(utc(2026, 1, 1))
    assert tick > utc(2026, 1, 1)
    assert tick.tzinfo is UTC
    assert tick.microsecond == 0


INVALID = [
    ("", "empty"),
    ("   ", "empty"),
    ("invalid cron", "expected 5 fields"),
    ("* * * *", "got 4"),
    ("* * * * * * *", "got 7"),
    ("0 0 1 1 * 2030 x", "got 7"),
    ("61 * * * *", "minute field '61': value out of range"),
    ("* 24 * * *", "hour field '24': value out of range"),
    ("0 0 0 * *", "day-of-month field '0': value out of range"),
    ("0 0 32 * *", "day-of-month field '32'"),
    ("0 0 * 13 *", "month field '13'"),
    ("0 0 * 0 *", "month field '0'"),
    ("0 0 * * 8", "day-of-week field '8'"),
    ("60 * * * * *", "second field '60'"),
    ("* * * * * 30", "day-of-week field '30'"),  # seconds come first, so 30 is a weekday
    ("*/0 * * * *", "step must be a whole number of at least 1"),
    ("0/0 * * * *", "step"),
    ("1-100000000 * * * *", "minute field '1-100000000': value out of range"),
    ("99999999999999999999 * * * *", "minute field"),
    ("-5 * * * *", "minute field '-5'"),
    ("1,,2 * * * *", "minute field '1,,2'"),
    ("5- * * * *", "minute field '5-'"),
    ("a b c d e", "minute field 'a'"),
    ("0 0 * * funday", "day-of-week field 'funday'"),
    ("0 0 * * 1#6", "day-of-week field '1#6'"),
    ("0 0 * * 1#2,3", "cannot be mixed"),
    ("? * * * *", "minute field '?'"),
    ("\u0665 * * * *", "non-ASCII"),  # ARABIC-INDIC DIGIT FIVE: int() would accept it
    ("\u0661\u0665 * * * *", "non-ASCII"),
    ("\uff15 * * * *", "non-ASCII"),  # FULLWIDTH DIGIT FIVE
    ("0\u00a00 * * *", "non-ASCII"),  # a no-break space is not a field separator
    ("0 0 * * *;", "unexpected character ';'"),
    ("0 0 * * * \n rm -rf /", "expected 5 fields"),
    ("0 0 1 1 * x", "day-of-week field 'x'"),
    ("R * * * *", "random (R)"),
    ("H * * * *", "hashed (H)"),
    ("H/15 * * * *", "hashed (H)"),
    ("0 H(0-5) * * *", "hour field"),
    ("0 0 31 2 *", "never fires"),
    ("0 0 30 2 *", "never fires"),
    ("0 0 31 4,6,9,11 *", "never fires"),
    ("@every 5m", "@every"),
    ("@every 1h30m", "@every"),
    ("@reboot", "@reboot"),
    ("@fortnightly", "unknown alias"),
    ("@daily 0", "takes no other fields"),
    ("x" * 300, "longer than"),
]


@pytest.mark.parametrize(("expression", "reason"), INVALID)
def test_invalid_expressions(expression: str, reason: str) -> None:
    with pytest.raises(InvalidCronError) as caught:
        CronSchedule.parse(expression)
    assert caught.value.expression == expression.strip()
    assert repr(expression.strip()) in str(caught.value)
    assert reason in caught.value.reason
    assert isinstance(caught.value, ConfigError)
    assert isinstance(caught.value, ValueError)


def test_field_count_message_explains_the_formats() -> None:
    with pytest.raises(InvalidCronError) as caught:
        CronSchedule.parse("* * * * * * *")
    assert caught.value.reason.startswith(
        "expected 5 fields (minute hour day month weekday) or 6 with seconds first, got 7"
    )


def test_expression_must_be_a_string() -> None:
    with pytest.raises(InvalidCronError):
        CronSchedule.parse(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "zone",
    [
        "Mars/Olympus_Mons",
        "",
        "europe/berlin",
        "UTC+1",
        "../../etc/passwd",
        "/etc/localtime",
        "localtime",
    ],
)
def test_invalid_timezones(zone: str) -> None:
    with pytest.raises(InvalidTimezoneError) as caught:
        CronSchedule.parse("0 0 * * *", zone)
    assert caught.value.timezone == zone


@pytest.mark.parametrize("zone", ["UTC", "Etc/UTC", BERLIN, NEW_YORK, "Asia/Kolkata", "Etc/GMT+5"])
def test_valid_timezones(zone: str) -> None:
    schedule = CronSchedule.parse("0 12 * * *", zone)
    tick = schedule.next_after(utc(2026, 6, 1))
    assert tick.astimezone(ZoneInfo(zone)).hour == 12


def test_schedule_is_a_value() -> None:
    schedule = CronSchedule("  */5 * * * * ", BERLIN)
    assert schedule == CronSchedule.parse("*/5 * * * *", BERLIN)
    assert hash(schedule) == hash(CronSchedule.parse("*/5 * * * *", BERLIN))
    assert schedule != CronSchedule.parse("*/5 * * * *")
    assert repr(schedule) == "CronSchedule(expression='*/5 * * * *', timezone='Europe/Berlin')"
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.expression = "* * * * *"  # type: ignore[misc]
    with pytest.raises(InvalidCronError):
        dataclasses.replace(schedule, expression="61 * * * *")


# --- next tick ----------------------------------------------------------------------------------

NOW = utc(2023, 5, 1, 10, 0)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("* * * * *", utc(2023, 5, 1, 10, 1)),
        ("*/5 * * * *", utc(2023, 5, 1, 10, 5)),
        ("30 15 * * *", utc(2023, 5, 1, 15, 30)),
        ("30 9 * * *", utc(2023, 5, 2, 9, 30)),
    ],
)
def test_calculate_next_run(expression: str, expected: datetime) -> None:
    """The original library's TestCalculateNextRun cases."""
    assert CronSchedule.parse(expression).next_after(NOW) == expected


def test_calculate_next_run_invalid() -> None:
    with pytest.raises(InvalidCronError):
        CronSchedule.parse("invalid cron")


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("@yearly", utc(2024, 1, 1)),
        ("@annually", utc(2024, 1, 1)),
        ("@monthly", utc(2023, 6, 1)),
        ("@weekly", utc(2023, 5, 7)),  # Sunday
        ("@daily", utc(2023, 5, 2)),
        ("@midnight", utc(2023, 5, 2)),
        ("@hourly", utc(2023, 5, 1, 11)),
    ],
)
def test_aliases(alias: str, expected: datetime) -> None:
    assert CronSchedule.parse(alias).next_after(NOW) == expected


def test_seconds_come_first() -> None:
    every_ten = CronSchedule.parse("*/10 * * * * *")
    ticks = every_ten.ticks_between(NOW, NOW + timedelta(minutes=1))
    assert [t.second for t in ticks] == [10, 20, 30, 40, 50, 0]
    assert ticks[-1] == NOW + timedelta(minutes=1)

    at_thirty = CronSchedule.parse("30 * * * * *")
    assert at_thirty.ticks_between(NOW, NOW + timedelta(minutes=3)) == [
        utc(2023, 5, 1, 10, 0, 30),
        utc(2023, 5, 1, 10, 1, 30),
        utc(2023, 5, 1, 10, 2, 30),
    ]
    assert CronSchedule.parse("0 30 9 * * *").next_after(NOW) == utc(2023, 5, 2, 9, 30)
    assert CronSchedule.parse("* * * * * *").next_after(NOW) == NOW + timedelta(seconds=1)


SECONDS_LAST = [
    # (expression, what seconds-last means written seconds first, the weekdays by name)
    ("* * * * * */5", "*/5 * * * * *", "* * * * * SUN,FRI"),
    ("* * * * * 30", "30 * * * * *", None),  # 30 is no weekday: refused already, now explained
    ("*/5 * * * * 0", "0 */5 * * * *", "*/5 * * * * SUN"),
    ("* * * * * 1-5", "1-5 * * * * *", "* * * * * MON,TUE,WED,THU,FRI"),
    ("*/2 * * * * 10-20", "10-20 */2 * * * *", None),
]


@pytest.mark.parametrize(("expression", "seconds_last", "named"), SECONDS_LAST)
def test_seconds_last_shapes_are_refused_with_both_readings(
    expression: str, seconds_last: str, named: str | None
) -> None:
    with pytest.raises(InvalidCronError) as caught:
        CronSchedule.parse(expression)
    reason = caught.value.reason
    assert "seconds FIRST" in reason or "read seconds first" in reason
    assert f"write {seconds_last!r}" in reason
    # Both suggested spellings are valid and mean what they say.
    assert CronSchedule.parse(seconds_last).has_seconds
    if named is not None:
        assert f"name them: {named!r}" in reason
        assert CronSchedule.parse(named).has_seconds


def test_seconds_last_rewrite_means_every_five_seconds() -> None:
    with pytest.raises(InvalidCronError) as caught:
        CronSchedule.parse("* * * * * */5")
    rewrite = caught.value.reason.split("write ")[1].split(";")[0].strip("'")
    ticks = CronSchedule.parse(rewrite).ticks_between(NOW, NOW + timedelta(seconds=20))
    assert [t.second for t in ticks] == [5, 10, 15, 20]


@pytest.mark.parametrize(
    "expression",
    [
        "* * * * * SUN,FRI",  # weekdays by name are taken as meant
        "*/10 * * * * MON-FRI",
        "0 */5 * * * 1",  # once a minute at most: seconds first is the likely reading
        "30 0 9 * * 1-5",
        "* * * * * *",
        "* * * * * 1#2",  # '1#2' is no seconds field: only the seconds-first reading is valid
    ],
)
def test_unambiguous_six_field_shapes_are_accepted(expression: str) -> None:
    assert CronSchedule.parse(expression).has_seconds


def test_next_after_excludes_its_start_and_ignores_microseconds() -> None:
    schedule = CronSchedule.parse("*/5 * * * *")
    assert schedule.next_after(utc(2023, 5, 1, 10, 5)) == utc(2023, 5, 1, 10, 10)
    almost = utc(2023, 5, 1, 10, 4, 59) + timedelta(microseconds=999_999)
    assert schedule.next_after(almost) == utc(2023, 5, 1, 10, 5)
    just_after = utc(2023, 5, 1, 10, 5) + timedelta(microseconds=1)
    assert schedule.next_after(just_after) == utc(2023, 5, 1, 10, 10)


def test_next_after_accepts_any_aware_datetime() -> None:
    schedule = CronSchedule.parse("0 12 * * *")
    berlin_noon = datetime(2023, 5, 1, 12, tzinfo=ZoneInfo(BERLIN))  # 10:00 UTC
    assert schedule.next_after(berlin_noon) == utc(2023, 5, 1, 12)
    assert schedule.next_after(berlin_noon).tzinfo is UTC


def test_naive_datetimes_are_rejected() -> None:
    schedule = CronSchedule.parse("* * * * *")
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.next_after(datetime(2023, 5, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.ticks_between(datetime(2023, 5, 1), NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.ticks_between(NOW, datetime(2023, 5, 2))


def test_ticks_between_bounds_and_limit() -> None:
    schedule = CronSchedule.parse("*/15 * * * *")
    start, end = utc(2023, 5, 1, 10, 0), utc(2023, 5, 1, 11, 0)
    expected = [utc(2023, 5, 1, 10, m) for m in (15, 30, 45)] + [end]
    assert schedule.ticks_between(start, end) == expected  # start excluded, end included
    assert schedule.ticks_between(start, end, limit=2) == expected[:2]
    assert schedule.ticks_between(start, end, limit=0) == []
    assert schedule.ticks_between(end, start) == []
    assert schedule.ticks_between(start, start) == []
    assert schedule.ticks_between(start, end - timedelta(microseconds=1)) == expected[:3]
    with pytest.raises(ValueError, match="limit"):
        schedule.ticks_between(start, end, limit=-1)


def test_rare_schedule_finds_its_next_tick() -> None:
    assert CronSchedule.parse("0 0 29 2 *").next_after(NOW) == utc(2024, 2, 29)
    assert CronSchedule.parse("0 0 29 2 *").next_after(utc(2096, 3, 1)) == utc(2104, 2, 29)
    assert CronSchedule.parse("0 0 * 2 1#5").next_after(NOW) == utc(2044, 2, 29)


# --- DST ----------------------------------------------------------------------------------------


def test_berlin_spring_forward_fixed_hour_fires_once_after_the_gap() -> None:
    # 2026-03-29: 02:00 CET becomes 03:00 CEST at 01:00 UTC; 02:30 does not exist.
    schedule = CronSchedule.parse("30 2 * * *", BERLIN)
    ticks = schedule.ticks_between(utc(2026, 3, 27), utc(2026, 3, 31))
    assert ticks == [
        utc(2026, 3, 27, 1, 30),  # 02:30 CET
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST: the first instant after the gap
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]
    assert ticks[2].astimezone(ZoneInfo(BERLIN)).strftime("%H:%M%z") == "03:00+0200"


def test_berlin_spring_forward_collapses_skipped_wall_times() -> None:
    schedule = CronSchedule.parse("0,15,30,45 2 * * *", BERLIN)
    ticks = schedule.ticks_between(utc(2026, 3, 28, 12), utc(2026, 3, 30, 12))
    assert ticks == [
        utc(2026, 3, 29, 1, 0),
        *[utc(2026, 3, 30, 0, m) for m in (0, 15, 30, 45)],
    ]
    # A skipped tick that coincides with a real one is one tick, not two.
    overlapping = CronSchedule.parse("*/20 2-3 * * *", BERLIN)
    assert overlapping.ticks_between(utc(2026, 3, 29), utc(2026, 3, 29, 2)) == [
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 29, 1, 20),
        utc(2026, 3, 29, 1, 40),
    ]


def test_berlin_fall_back_fixed_hour_fires_once_at_first_occurrence() -> None:
    # 2026-10-25: 03:00 CEST becomes 02:00 CET at 01:00 UTC; 02:30 happens twice.
    schedule = CronSchedule.parse("30 2 * * *", BERLIN)
    ticks = schedule.ticks_between(utc(2026, 10, 24), utc(2026, 10, 27))
    assert ticks == [
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 25, 0, 30),  # 02:30+02:00, the first occurrence
        utc(2026, 10, 26, 1, 30),  # 02:30+01:00
    ]
    assert ticks[1] == local(BERLIN, 2026, 10, 25, 2, 30, fold=0)
    # Asked from inside the repeat (02:15 CET, the second 02:15), the repeat is not fired again.
    second_quarter_past_two = local(BERLIN, 2026, 10, 25, 2, 15, fold=1)
    assert second_quarter_past_two == utc(2026, 10, 25, 1, 15)
    assert schedule.next_after(second_quarter_past_two) == utc(2026, 10, 26, 1, 30)
    # Asked from between the two occurrences of 02:30, likewise.
    assert schedule.next_after(utc(2026, 10, 25, 0, 45)) == utc(2026, 10, 26, 1, 30)


def test_yearly_tick_in_the_repeated_hour_seen_from_winter() -> None:
    # From January (+01:00) the naive answer 02:30 - 1h lands on the second 02:30, which has the
    # same offset as January; the summer in between must still be noticed.
    schedule = CronSchedule.parse("30 2 25 10 *", BERLIN)
    assert schedule.next_after(utc(2026, 1, 15)) == utc(2026, 10, 25, 0, 30)
    # Same for a yearly tick in the spring gap, seen from the previous autumn.
    spring = CronSchedule.parse("30 2 29 3 *", BERLIN)
    assert spring.next_after(utc(2025, 11, 1)) == utc(2026, 3, 29, 1, 0)


def test_berlin_every_hour_follows_elapsed_time() -> None:
    schedule = CronSchedule.parse("30 * * * *", BERLIN)
    spring = schedule.ticks_between(utc(2026, 3, 28, 23), utc(2026, 3, 29, 3))
    # 01:30 CET, then 03:30 CEST: one real hour apart; 02:30 does not exist.
    assert spring == [utc(2026, 3, 28, 23, 30)] + [utc(2026, 3, 29, h, 30) for h in (0, 1, 2)]
    autumn = schedule.ticks_between(utc(2026, 10, 24, 23), utc(2026, 10, 25, 3))
    # 01:30 CEST, 02:30 CEST, 02:30 CET, 03:30 CET: the repeated hour runs, no hour goes silent.
    assert autumn == [utc(2026, 10, 24, 23, 30)] + [utc(2026, 10, 25, h, 30) for h in (0, 1, 2)]
    # An hour field that lists every hour is the same schedule.
    spelled_out = CronSchedule.parse("30 0-23 * * *", BERLIN)
    assert spelled_out.ticks_between(utc(2026, 10, 24, 23), utc(2026, 10, 25, 3)) == autumn


def test_new_york_spring_forward_and_fall_back() -> None:
    # 2026-03-08: 02:00 EST becomes 03:00 EDT at 07:00 UTC.
    daily = CronSchedule.parse("30 2 * * *", NEW_YORK)
    assert daily.ticks_between(utc(2026, 3, 7), utc(2026, 3, 10)) == [
        utc(2026, 3, 7, 7, 30),
        utc(2026, 3, 8, 7, 0),  # 03:00 EDT
        utc(2026, 3, 9, 6, 30),
    ]
    # 2026-11-01: 02:00 EDT becomes 01:00 EST at 06:00 UTC; 01:30 happens twice.
    early = CronSchedule.parse("30 1 * * *", NEW_YORK)
    assert early.ticks_between(utc(2026, 10, 31), utc(2026, 11, 3)) == [
        utc(2026, 10, 31, 5, 30),
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT, the first occurrence
        utc(2026, 11, 2, 6, 30),
    ]
    every_hour = CronSchedule.parse("30 * * * *", NEW_YORK)
    assert every_hour.ticks_between(utc(2026, 11, 1, 4), utc(2026, 11, 1, 8)) == [
        utc(2026, 11, 1, h, 30) for h in (4, 5, 6, 7)
    ]
    assert every_hour.ticks_between(utc(2026, 3, 8, 5), utc(2026, 3, 8, 8)) == [
        utc(2026, 3, 8, 5, 30),
        utc(2026, 3, 8, 6, 30),  # 01:30 EST
        utc(2026, 3, 8, 7, 30),  # 03:30 EDT
    ]


def test_seconds_schedule_across_the_gap() -> None:
    schedule = CronSchedule.parse("15 30 2 * * *", BERLIN)
    assert schedule.next_after(utc(2026, 3, 29)) == utc(2026, 3, 29, 1, 0, 0)
    assert schedule.next_after(utc(2026, 10, 25)) == utc(2026, 10, 25, 0, 30, 15)
    assert schedule.next_after(utc(2026, 10, 25, 0, 30, 15)) == utc(2026, 10, 26, 1, 30, 15)


def test_a_whole_skipped_day() -> None:
    # Samoa skipped 2011-12-30: 23:59:59 on the 29th (-10:00) was followed by 00:00 on the 31st.
    schedule = CronSchedule.parse("0 12 * * *", "Pacific/Apia")
    ticks = schedule.ticks_between(utc(2011, 12, 28), utc(2011, 12, 31, 12))
    zone = ZoneInfo("Pacific/Apia")
    assert [t.astimezone(zone).strftime("%d %H:%M") for t in ticks] == [
        "28 12:00",
        "29 12:00",
        "31 00:00",  # the skipped 30th's noon, at the first instant after the gap
        "31 12:00",
    ]
    hourly = CronSchedule.parse("0 * 30 12 *", "Pacific/Apia")
    assert hourly.ticks_between(utc(2011, 12, 29), utc(2012, 1, 1)) == []


# An independent oracle: the module's DST definitions, evaluated by walking the clock one step at
# a time. It reads numbers, ranges, lists and steps only (no names, L, W or #).


def _values(text: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step = part.partition("/")
        if base == "*":
            first, last = low, high
        elif "-" in base:
            first, last = (int(v) for v in base.split("-"))
        else:
            first = int(base)
            last = high if step else first
        values.update(range(first, last + 1, int(step or 1)))
    return values


def _oracle_matcher(expression: str) -> Callable[[datetime], bool]:
    fields = expression.split()
    seconds = _values(fields.pop(0), 0, 59) if len(fields) == 6 else {0}
    minute, hour, dom, month, dow = fields
    minutes, hours = _values(minute, 0, 59), _values(hour, 0, 23)
    days, months = _values(dom, 1, 31), _values(month, 1, 12)
    weekdays = {d % 7 for d in _values(dow, 0, 7)}

    def matches(wall: datetime) -> bool:
        day_ok = wall.day in days
        weekday_ok = (wall.isoweekday() % 7) in weekdays
        # Vixie cron: with both day fields restricted, either one is enough.
        either = dom != "*" and dow != "*"
        date_ok = (day_ok or weekday_ok) if either else (day_ok and weekday_ok)
        return (
            wall.second in seconds
            and wall.minute in minutes
            and wall.hour in hours
            and wall.month in months
            and date_ok
        )

    return matches


def _oracle_ticks(
    expression: str, zone_name: str, start: datetime, end: datetime
) -> list[datetime]:
    matches = _oracle_matcher(expression)
    zone = ZoneInfo(zone_name)
    step = timedelta(seconds=1 if len(expression.split()) == 6 else 60)

    def reading(instant: datetime) -> datetime:
        return instant.astimezone(zone).replace(tzinfo=None)

    ticks = []
    if expression.split()[-4] == "*":  # every hour: each instant whose clock matches
        instant = start + step
        while instant <= end:
            if matches(reading(instant)):
                ticks.append(instant)
            instant += step
        return ticks
    # fixed hours: each matching wall time once, when the clock first shows it or later
    lookback = int(timedelta(hours=3) / step)
    highest = max(reading(start - k * step) for k in range(lookback + 1))
    instant = start + step
    while instant <= end:
        shown = reading(instant)
        if shown > highest:
            wall = highest + step
            while wall <= shown:
                if matches(wall):
                    ticks.append(instant)
                    break
                wall += step
            highest = shown
        instant += step
    return ticks


ORACLE_EXPRESSIONS = [
    "30 2 * * *",
    "0,15,30,45 2 * * *",
    "*/20 1-3 * * *",
    "0 0 * * *",
    "59 23 * * *",
    "0 3 * * *",
    "* 2 * * *",
    "45 1 * * 0",
    "0 */2 * * *",
    "30 * * * *",
    "*/15 * * * *",
    "0 * * * 0",
]
ORACLE_DAYS = [
    (BERLIN, (2026, 3, 29)),
    (BERLIN, (2026, 10, 25)),
    (NEW_YORK, (2026, 3, 8)),
    (NEW_YORK, (2026, 11, 1)),
    ("Australia/Lord_Howe", (2026, 4, 5)),  # 30-minute DST
    ("Australia/Lord_Howe", (2026, 10, 4)),
    ("Europe/Dublin", (2026, 10, 25)),  # "negative DST" in the tz database
    ("America/Santiago", (2026, 4, 5)),  # changes at local midnight
    ("America/Santiago", (2026, 9, 6)),
    ("Pacific/Apia", (2011, 12, 30)),  # a whole day skipped
    ("Asia/Kolkata", (2026, 3, 29)),  # no DST at all
]


@pytest.mark.parametrize(("zone", "day"), ORACLE_DAYS, ids=[f"{z}-{d}" for z, d in ORACLE_DAYS])
def test_dst_against_oracle(zone: str, day: tuple[int, int, int]) -> None:
    start = utc(*day) - timedelta(hours=36)
    end = utc(*day) + timedelta(hours=48)
    for expression in ORACLE_EXPRESSIONS:
        schedule = CronSchedule.parse(expression, zone)
        expected = _oracle_ticks(expression, zone, start, end)
        assert schedule.ticks_between(start, end) == expected, expression
        # Restarting at any tick gives the rest of the same list.
        for index, tick in enumerate(expected[:-1]):
            assert schedule.next_after(tick) == expected[index + 1], (expression, tick)


@pytest.mark.parametrize("expression", ["*/20 * * * * *", "30 30 2 * * *", "0 * 2 * * *"])
@pytest.mark.parametrize("transition", [utc(2026, 3, 29, 1), utc(2026, 10, 25, 1)])
def test_seconds_dst_against_oracle(expression: str, transition: datetime) -> None:
    start, end = transition - timedelta(hours=2), transition + timedelta(hours=2)
    schedule = CronSchedule.parse(expression, BERLIN)
    assert schedule.ticks_between(start, end) == _oracle_ticks(expression, BERLIN, start, end)


# --- properties ---------------------------------------------------------------------------------

PROPERTY_SCHEDULES = [
    ("*/7 * * * *", "UTC"),
    ("*/7 * * * *", BERLIN),
    ("30 2 * * *", BERLIN),
    ("0,30 2 * * *", NEW_YORK),
    ("30 1 * * *", NEW_YORK),
    ("0 * * * *", NEW_YORK),
    ("*/20 * * * * *", BERLIN),
    ("15 30 2 * * *", BERLIN),
    ("0 0 * * *", "America/Santiago"),
    ("0,30 * * * *", "Australia/Lord_Howe"),
    ("30 2 * * *", "Australia/Lord_Howe"),
    ("0 0 29 2 *", "UTC"),
    ("@daily", "Pacific/Apia"),
    ("0 9-17 * * 1-5", "Europe/London"),
    ("0 0 L * *", "Asia/Tokyo"),
]
ANCHORS = [
    utc(2026, 3, 29, 1),
    utc(2026, 10, 25, 1),
    utc(2026, 3, 8, 7),
    utc(2026, 11, 1, 6),
    utc(2026, 4, 4, 15),
    utc(2026, 10, 3, 16),
    utc(2026, 9, 6, 4),
    utc(2011, 12, 30, 10),
    utc(2024, 2, 28, 23),
]


@st.composite
def schedule_and_points(draw: st.DrawFn) -> tuple[CronSchedule, datetime, datetime, datetime]:
    expression, zone = draw(st.sampled_from(PROPERTY_SCHEDULES))
    schedule = CronSchedule.parse(expression, zone)
    # Spans short enough to keep every-second schedules cheap, long enough to cross a change.
    span = 2 * 3600 if schedule.has_seconds else 3 * 86_400
    anchor = draw(st.sampled_from(ANCHORS))
    a = anchor + timedelta(seconds=draw(st.integers(-span, span)))
    a += timedelta(microseconds=draw(st.sampled_from([0, 0, 1, 999_999])))
    b = a + timedelta(seconds=draw(st.integers(0, span)), microseconds=draw(st.integers(0, 1)))
    c = b + timedelta(seconds=draw(st.integers(0, span)))
    return schedule, a, b, c


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule_and_points())
def test_ticks_split_and_agree_with_next_after(
    case: tuple[CronSchedule, datetime, datetime, datetime],
) -> None:
    schedule, a, b, c = case
    left, right = schedule.ticks_between(a, b), schedule.ticks_between(b, c)
    whole = schedule.ticks_between(a, c)
    assert left + right == whole
    assert len(set(whole)) == len(whole)
    assert whole == sorted(whole)
    assert all(a < t <= c and t.tzinfo is UTC and t.microsecond == 0 for t in whole)
    far = c + timedelta(days=3660)
    for x in (a, b, c):
        assert schedule.next_after(x) == schedule.ticks_between(x, far, limit=1)[0]
    if whole:
        assert schedule.next_after(a) == whole[0]
        assert schedule.next_after(whole[-1]) > c or whole[-1] == c


# --- misfire ------------------------------------------------------------------------------------

HOURLY = CronSchedule.parse("0 * * * *")
GRACE = timedelta(minutes=10)


@pytest.mark.parametrize("misfire", ["coalesce", "skip"])
def test_coalesce_and_skip_go_to_the_next_future_tick(misfire: MisfirePolicy) -> None:
    tick = utc(2026, 1, 1, 10)
    on_time = next_run_after(
        HOURLY, tick=tick, now=utc(2026, 1, 1, 10, 0, 3), misfire=misfire, grace=GRACE
    )
    assert on_time == utc(2026, 1, 1, 11)
    after_outage = next_run_after(
        HOURLY, tick=tick, now=utc(2026, 1, 1, 15, 20), misfire=misfire, grace=GRACE
    )
    assert after_outage == utc(2026, 1, 1, 16)
    far_past = next_run_after(
        HOURLY, tick=utc(2020, 1, 1), now=utc(2026, 1, 1, 15, 20), misfire=misfire, grace=GRACE
    )
    assert far_past == utc(2026, 1, 1, 16)
    # A clock behind the tick (skew) still moves past the tick.
    early = next_run_after(
        HOURLY, tick=tick, now=utc(2026, 1, 1, 9, 59), misfire=misfire, grace=GRACE
    )
    assert early == utc(2026, 1, 1, 11)
    # A tick exactly at now is not in the future.
    exact = next_run_after(HOURLY, tick=tick, now=utc(2026, 1, 1, 11), misfire=misfire, grace=GRACE)
    assert exact == utc(2026, 1, 1, 12)


def test_all_runs_missed_ticks_one_by_one_within_grace() -> None:
    tick = utc(2026, 1, 1, 10)
    assert next_run_after(
        HOURLY, tick=tick, now=utc(2026, 1, 1, 10, 0, 3), misfire="all", grace=GRACE
    ) == utc(2026, 1, 1, 11)
    # Missed ticks are run late, one after another, while they are within the grace period.
    assert next_run_after(
        HOURLY, tick=tick, now=utc(2026, 1, 1, 11, 5), misfire="all", grace=GRACE
    ) == utc(2026, 1, 1, 11)
    # Older than now - grace: dropped; the first tick at or after now - grace comes next.
    assert next_run_after(
        HOURLY, tick=tick, now=utc(2026, 1, 1, 15, 20), misfire="all", grace=timedelta(hours=2)
    ) == utc(2026, 1, 1, 14)
    assert next_run_after(
        HOURLY, tick=tick, now=utc(2026, 1, 1, 15, 20), misfire="all", grace=GRACE
    ) == utc(2026, 1, 1, 16)
    # A tick exactly at now - grace is not older than it.
    assert next_run_after(
        HOURLY, tick=tick, now=utc(2026, 1, 1, 14, 10), misfire="all", grace=GRACE
    ) == utc(2026, 1, 1, 14)
    # A tick far in the past does not replay years of ticks.
    assert next_run_after(
        HOURLY, tick=utc(2020, 1, 1), now=utc(2026, 1, 1, 15, 20), misfire="all", grace=GRACE
    ) == utc(2026, 1, 1, 16)


@given(
    st.sampled_from(MISFIRE_POLICIES),
    st.integers(-7200, 10**8),
    st.integers(0, 10**6),
    st.sampled_from([CronSchedule.parse("*/7 * * * *"), CronSchedule.parse("30 2 * * *", BERLIN)]),
)
@settings(max_examples=100, deadline=None)
def test_next_run_is_always_after_the_tick(
    misfire: MisfirePolicy, lateness: int, grace: int, schedule: CronSchedule
) -> None:
    tick = schedule.next_after(utc(2026, 3, 1))
    now = tick + timedelta(seconds=lateness)
    result = next_run_after(
        schedule, tick=tick, now=now, misfire=misfire, grace=timedelta(seconds=grace)
    )
    assert result > tick
    assert result == schedule.next_after(result - timedelta(microseconds=1))  # it is a tick
    if misfire == "all":
        assert result >= min(schedule.next_after(tick), now - timedelta(seconds=grace))
    else:
        assert result > now


def test_is_too_late() -> None:
    tick = utc(2026, 1, 1, 10)
    assert is_too_late(
        tick=tick, now=tick + GRACE + timedelta(seconds=1), misfire="skip", grace=GRACE
    )
    assert not is_too_late(tick=tick, now=tick + GRACE, misfire="skip", grace=GRACE)
    assert not is_too_late(tick=tick, now=tick, misfire="skip", grace=GRACE)
    assert not is_too_late(tick=tick, now=tick - timedelta(hours=1), misfire="skip", grace=GRACE)
    policies: tuple[MisfirePolicy, ...] = ("coalesce", "all")
    for policy in policies:
        assert not is_too_late(
            tick=tick, now=tick + timedelta(days=365), misfire=policy, grace=GRACE
        )


def test_misfire_arguments_are_checked() -> None:
    tick = utc(2026, 1, 1, 10)
    with pytest.raises(ValueError, match="misfire"):
        next_run_after(HOURLY, tick=tick, now=tick, misfire="never", grace=GRACE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="misfire"):
        is_too_late(tick=tick, now=tick, misfire="latest", grace=GRACE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grace"):
        next_run_after(HOURLY, tick=tick, now=tick, misfire="all", grace=-GRACE)
    with pytest.raises(ValueError, match="timezone-aware"):
        next_run_after(HOURLY, tick=datetime(2026, 1, 1), now=tick, misfire="all", grace=GRACE)
    assert MISFIRE_POLICIES == ("coalesce", "skip", "all")


# --- threads ------------------------------------------------------------------------------------


def test_concurrent_use_gives_the_same_ticks() -> None:
    schedules = [CronSchedule.parse(e, z) for e, z in PROPERTY_SCHEDULES]
    start, end = utc(2026, 10, 24, 22), utc(2026, 10, 25, 4)
    expected = [s.ticks_between(start, end) for s in schedules]
    barrier = threading.Barrier(8)
    failures: list[str] = []

    def work() -> None:
        barrier.wait()
        for _ in range(5):
            for schedule, ticks in zip(schedules, expected, strict=True):
                if schedule.ticks_between(start, end) != ticks:
                    failures.append(schedule.expression)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
