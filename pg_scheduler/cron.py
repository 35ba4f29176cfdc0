"""Cron schedules: parse and validate, compute ticks in a time zone, apply the misfire policy.

This module and ``cron_syntax`` are the only ones that import croniter, so the cron library can be
swapped there alone.
croniter does one thing for us: "the next wall-clock time after this one that matches", on naive
datetimes, where it is plain calendar arithmetic. Time zones, DST and tick boundaries are ours.

Syntax
    Five fields ``minute hour day-of-month month day-of-week``, or six with the **seconds first**
    (``second minute hour ...``, as robfig/cron ``WithSeconds``), or an alias: ``@yearly``
    ``@annually`` ``@monthly`` ``@weekly`` ``@daily`` ``@midnight`` ``@hourly``. Fields take
    numbers, ``*``, ranges ``a-b``, lists ``a,b``, steps ``*/n`` ``a-b/n`` ``a/n``, month and
    weekday names (``JAN``, ``MON``), ``?`` in the day fields, and croniter's ``L``, ``W`` and
    ``#``. When both day fields are restricted, a day matches if either matches (Vixie cron).
    Seconds-last trap: croniter, APScheduler and most peers put six fields' seconds *last*, so a
    six-field expression that repeats within a minute (its seconds field is ``*`` or a step)
    and restricts the day of the week with numbers (``* * * * * */5``: seconds first, every
    second on Sundays and Fridays; seconds last, every 5 seconds) is refused, with both
    readings and how to write each. Name the weekdays (``* * * * * SUN,FRI``) to mean them.
    Rejected, with the reason in the ``InvalidCronError``: seven fields (years), ``@every``,
    ``@reboot``, hashed ``H`` and random ``R`` values (nodes would disagree on the ticks),
    out-of-range values, ``*/0``, and expressions that never fire (``0 0 31 2 *``).

Ticks
    A tick is a UTC instant with whole seconds. ``next_after(x)`` is the first tick strictly
    after ``x``; ``ticks_between(a, b)`` is every tick in ``(a, b]``. Both come from one
    generator, so ``ticks_between(a, b) + ticks_between(b, c) == ticks_between(a, c)``: no tick
    is lost or repeated at ``b``.

Time zones and DST
    The expression is matched against the wall clock of the schedule's IANA zone (default UTC).
    Two regimes, chosen by the hour field:

    * **Fixed hours** (the hour field is not ``*``: ``30 2 * * *``, ``0 9-17 * * 1-5``). Each
      matching wall time fires exactly once, at the first instant the clock shows it or a later
      time. So in a spring-forward gap, a wall time that does not exist (02:30 on 2026-03-29 in
      Europe/Berlin) fires once, at the first instant after the gap (03:00 local, 01:00 UTC),
      and several skipped wall times collapse into that one tick. In a fall-back repeat, a wall
      time shown twice (02:30 on 2026-10-25 in Europe/Berlin) fires once, at its first
      occurrence (02:30+02:00, 00:30 UTC); croniter alone would fire it at both.
    * **Every hour** (the hour field is ``*`` or lists all 24 hours: ``*/5 * * * *``,
      ``@hourly``, ``0 * * * * *``). These follow elapsed time: a tick is every instant at which
      the local clock shows a matching time. A skipped wall time does not fire (the clock never
      shows it: an hourly job runs at 01:00 CET and then at 03:00 CEST, one real hour apart, as
      croniter does), and a repeated one fires at both occurrences, so a job that runs every few
      minutes does not fall silent for the repeated hour.

    Offsets come from ``zoneinfo``. The code assumes a zone changes its offset at most once a
    day, which holds for every rule in the tz database.

Misfire
    ``next_run_after`` computes the next run of a recurring job from the tick that just ran and
    the database's ``now()``; ``is_too_late`` tells the caller to skip a late run under ``skip``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Literal
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, CroniterError, croniter

from . import cron_syntax
from .errors import InvalidCronError

__all__ = [
    "MISFIRE_POLICIES",
    "CronSchedule",
    "MisfirePolicy",
    "is_too_late",
    "next_run_after",
]

MisfirePolicy = Literal["coalesce", "skip", "all"]
MISFIRE_POLICIES: tuple[MisfirePolicy, ...] = ("coalesce", "skip", "all")

_UTC = timezone.utc
_SECOND = timedelta(seconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_DAY = 86_400
# croniter gives up after this many years without a match; the never-fires check relies on it.
_SEARCH_YEARS = 50


@dataclass(frozen=True)
class CronSchedule:
    """A validated cron expression in an IANA time zone; constructing one validates it."""

    expression: str
    """The expression as the user gave it, stripped."""
    timezone: str = "UTC"
    """IANA time zone name whose wall clock the expression is matched against."""
    _compiled: _Compiled = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        given: object = self.expression  # typed str, but this often comes from a config file
        if not isinstance(given, str):
            raise InvalidCronError(repr(given), "the expression must be a string")
        stripped = given.strip()
        object.__setattr__(self, "expression", stripped)
        object.__setattr__(self, "_compiled", _compile(stripped, self.timezone))

    @classmethod
    def parse(cls, expression: str, timezone: str = "UTC") -> CronSchedule:
        """Validate both; raise ``InvalidCronError`` or ``InvalidTimezoneError`` with the reason."""
        return cls(expression, timezone)

    @property
    def has_seconds(self) -> bool:
        """True for a six-field expression (seconds first): its ticks can be a second apart."""
        return self._compiled.has_seconds

    def next_after(self, after: datetime) -> datetime:
        """The first tick strictly after ``after`` (timezone-aware), as an aware UTC datetime."""
        start = _to_seconds(after, "after")
        return _from_seconds(next(self._compiled.ticks_after(start)))

    def ticks_between(
        self, start: datetime, end: datetime, limit: int | None = None
    ) -> list[datetime]:
        """Ticks ``t`` with ``start < t <= end``, ascending, aware UTC, at most ``limit``."""
        first = _to_seconds(start, "start")
        # Rounded down, which is exact here: a whole-second tick is <= end iff it is <= floor(end).
        last = _to_seconds(end, "end")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        ticks: list[datetime] = []
        if limit == 0 or last <= first:
            return ticks
        for tick in self._compiled.ticks_after(first):
            if tick > last:
                break
            ticks.append(_from_seconds(tick))
            if limit is not None and len(ticks) >= limit:
                break
        return ticks


def next_run_after(
    schedule: CronSchedule,
    *,
    tick: datetime,
    now: datetime,
    misfire: MisfirePolicy,
    grace: timedelta,
) -> datetime:
    """The next run of a recurring job whose run for ``tick`` ended (or was given up) at ``now``.

    The result is always strictly after ``tick``, so a tick never runs twice.

    * ``coalesce`` and ``skip``: the first tick strictly after ``max(tick, now)``. Missed ticks are
      not run; under ``skip`` the caller also drops a late run itself (``is_too_late``).
    * ``all``: the first tick strictly after ``tick``, so missed ticks run one by one, late; but
      never earlier than ``now - grace``: older ticks are dropped and the result is the first tick
      at or after ``now - grace``. This bounds the catch-up after a long outage.
    """
    _check_policy(misfire, grace)
    _to_seconds(tick, "tick")
    _to_seconds(now, "now")
    if misfire != "all":
        return schedule.next_after(max(tick, now))
    candidate = schedule.next_after(tick)
    oldest = now - grace
    if candidate < oldest:
        # Ticks are whole seconds, so "at or after oldest" is "strictly after oldest minus a hair";
        # oldest > candidate > tick keeps the result strictly after tick.
        candidate = schedule.next_after(oldest - timedelta(microseconds=1))
    return candidate


def is_too_late(*, tick: datetime, now: datetime, misfire: MisfirePolicy, grace: timedelta) -> bool:
    """True when the run for ``tick`` must be skipped: under ``skip``, ``now - tick > grace``."""
    _check_policy(misfire, grace)
    _to_seconds(tick, "tick")
    _to_seconds(now, "now")
    return misfire == "skip" and now - tick > grace


def _check_policy(misfire: str, grace: timedelta) -> None:
    if misfire not in MISFIRE_POLICIES:
        raise ValueError(f"misfire must be one of {', '.join(MISFIRE_POLICIES)}; got {misfire!r}")
    if grace < timedelta(0):
        raise ValueError(f"grace must not be negative, got {grace}")


def _to_seconds(moment: datetime, name: str) -> int:
    """Whole POSIX seconds, rounded down; exact integer arithmetic, unlike ``timestamp()``."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {moment!r}")
    return (moment - _EPOCH) // _SECOND


def _from_seconds(seconds: int) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


def _wall(seconds: int) -> datetime:
    return _NAIVE_EPOCH + timedelta(seconds=seconds)


# --- the tick walk --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Compiled:
    """What a schedule needs at run time; immutable, so shared freely between threads."""

    expression: str
    cron: str  # the five or six fields croniter reads: aliases resolved, single spaces
    has_seconds: bool
    zone: ZoneInfo | None  # None for UTC: wall clock and instants coincide
    every_hour: bool  # the hour field matches every hour: DST follows elapsed time (module doc)

    def next_wall(self, wall: int) -> int:
        """The first matching wall-clock time strictly after ``wall`` (seconds, naive)."""
        matcher = _matcher(self.cron, self.has_seconds)
        try:
            found: datetime = matcher.get_next(datetime, _wall(wall))
        except CroniterBadDateError:
            raise InvalidCronError(
                self.expression, f"no tick within {_SEARCH_YEARS} years after {_wall(wall)}"
            ) from None
        return (found - _NAIVE_EPOCH) // _SECOND

    def offset(self, instant: int) -> int:
        assert self.zone is not None
        offset = datetime.fromtimestamp(instant, self.zone).utcoffset()
        assert offset is not None
        return offset // _SECOND

    def first_change(self, after: int, until: int, offset: int) -> int | None:
        """The first instant in ``(after, until]`` whose UTC offset is not ``offset``, or None.

        Probes once a day and bisects the day where the offset differs; with at most one change a
        day, a change and its reversal cannot hide between two probes.
        """
        low = after
        while low < until:
            high = min(low + _DAY, until)
            if self.offset(high) != offset:
                while high - low > 1:
                    middle = (low + high) // 2
                    if self.offset(middle) != offset:
                        high = middle
                    else:
                        low = middle
                return high
            low = high
        return None

    def ticks_after(self, after: int) -> Iterator[int]:
        """Ticks strictly after ``after``, ascending, as POSIX seconds (endless)."""
        if self.zone is None:
            yield from self._utc_ticks_after(after)
        elif self.every_hour:
            yield from self._elapsed_ticks_after(after)
        else:
            yield from self._wall_ticks_after(after)

    def _utc_ticks_after(self, after: int) -> Iterator[int]:
        tick = after
        while True:
            tick = self.next_wall(tick)
            yield tick

    # Both zone walks go through segments of constant UTC offset. State: every instant <= `instant`
    # is dealt with, and `offset` holds on (instant, next change).

    def _elapsed_ticks_after(self, after: int) -> Iterator[int]:
        """Every instant whose wall clock matches: skipped walls never fire, repeated ones twice."""
        instant = after
        offset = self.offset(instant)
        while True:
            wall = self.next_wall(instant + offset)
            candidate = wall - offset
            change = self.first_change(instant, candidate, offset)
            if change is None:
                yield candidate
                instant = candidate
            else:
                instant, offset = change - 1, self.offset(change)

    def _wall_ticks_after(self, after: int) -> Iterator[int]:
        """Each matching wall time once, at the first instant the clock shows it or later."""
        # `reached` is the highest wall time the clock has shown so far: walls <= reached have
        # had their tick already.
        instant = after
        offset = self.offset(instant)
        reached = self._highest_wall_until(after)
        while True:
            # Start from `reached`, not from the clock now: right after a spring-forward the
            # skipped walls lie between them and still owe their one tick, at the gap's end.
            # After a fall-back `reached` is ahead of the clock, which skips the repeat.
            wall = self.next_wall(reached)
            candidate = max(wall - offset, instant + 1)
            change = self.first_change(instant, candidate, offset)
            if change is None:
                yield candidate
                reached = max(reached, candidate + offset)
                instant = candidate
            else:
                reached = max(reached, change - 1 + offset)
                instant, offset = change - 1, self.offset(change)

    def _highest_wall_until(self, instant: int) -> int:
        """The highest wall time shown at or before ``instant``: ahead of the clock just after a
        fall-back (the repeated hour was shown already), else the clock itself."""
        start = instant - _DAY
        offset = self.offset(start)
        highest = start + offset
        while (change := self.first_change(start, instant, offset)) is not None:
            highest = max(highest, change - 1 + offset)
            start, offset = change, self.offset(change)
        return max(highest, instant + offset)


class _Matchers(threading.local):
    """One croniter per expression per thread: a croniter is mutable (it keeps a cursor), so it is
    never shared between threads, but building one re-parses the expression, so it is reused."""

    def __init__(self) -> None:
        self.by_cron: dict[tuple[str, bool], croniter[datetime]] = {}


_matchers = _Matchers()


def _matcher(cron: str, has_seconds: bool) -> croniter[datetime]:
    cache = _matchers.by_cron
    matcher = cache.get((cron, has_seconds))
    if matcher is None:
        if len(cache) >= 1024:
            cache.clear()
        matcher = croniter(cron, _NAIVE_EPOCH, datetime, second_at_beginning=has_seconds)
        cache[(cron, has_seconds)] = matcher
    return matcher


# --- parsing and validation -----------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _compile(expression: str, timezone_name: str) -> _Compiled:
    zone = cron_syntax.load_zone(timezone_name)
    fields = cron_syntax.split_fields(expression)
    has_seconds = len(fields) == 6
    cron = " ".join(fields)
    try:
        expanded: Sequence[Sequence[object]] = croniter.expand(
            cron, second_at_beginning=has_seconds
        )[0]
    except (CroniterError, ValueError, TypeError) as exc:
        reason = cron_syntax.explain(fields, exc)
        if has_seconds and reason.startswith("day-of-week field"):
            reason += cron_syntax.seconds_last_hint(fields)
        raise InvalidCronError(expression, reason) from None
    if has_seconds and cron_syntax.looks_seconds_last(fields):
        raise InvalidCronError(expression, cron_syntax.seconds_last_reason(fields, expanded[4]))
    compiled = _Compiled(
        expression=expression,
        cron=cron,
        has_seconds=has_seconds,
        zone=zone,
        # croniter collapses a field covering its whole range ("0-23", "*/1") to ["*"].
        every_hour=list(expanded[1]) == ["*"],
    )
    # A valid syntax can still name no date at all ("0 0 31 2 *"): croniter's is_valid accepts it
    # and get_next fails, so look for a first match now rather than at the first run.
    try:
        compiled.next_wall(int(time.time()))
    except InvalidCronError:
        raise InvalidCronError(
            expression, f"never fires: no date matches it within {_SEARCH_YEARS} years"
        ) from None
    return compiled
