"""Reading a cron expression: its fields, its aliases, its time zone, and a precise reason when
it is wrong (which field, what is allowed, and the seconds-last trap; see ``cron``'s docstring).
``cron`` compiles what this module reads."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterError, CroniterNotAlphaError, croniter

from .errors import InvalidCronError, InvalidTimezoneError

# Long enough for any real expression, short enough that no field can hold a number whose parsing
# is slow or trips int()'s digit limit (which croniter would report as a raw traceback).
_MAX_EXPRESSION_LENGTH = 200

_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELDS_5 = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31, L, nW"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT (0 and 7 are Sunday), n#k, nL"),
)
_FIELDS_6 = (("second", "0-59"), *_FIELDS_5)
_FIELD_COUNTS = "expected 5 fields (minute hour day month weekday) or 6 with seconds first"
_FIELD_CHARS = re.compile(r"[0-9A-Za-z*,/?#-]+", re.ASCII)
# H and R are croniter extensions: H needs a per-job hash id, and R draws a random value each time
# the expression is parsed, so two nodes (or two calls) would compute different ticks.
_HASH_OR_RANDOM = re.compile(r"(?:^|[,/-])[HhRr](?:$|[(/,])")
# "localtime" is a per-machine symlink in /usr/share/zoneinfo, not a zone every node agrees on.
_NOT_IANA = frozenset({"localtime", "posixrules"})


def split_fields(expression: str) -> list[str]:
    """Syntax checks croniter does not do, or does with an unhelpful message."""
    if not expression:
        raise InvalidCronError(expression, f"the expression is empty; {_FIELD_COUNTS}")
    if len(expression) > _MAX_EXPRESSION_LENGTH:
        raise InvalidCronError(expression, f"longer than {_MAX_EXPRESSION_LENGTH} characters")
    for char in expression:
        # str.isdigit() and int() accept Arabic-Indic and other digits; cron means ASCII only.
        if not char.isascii():
            raise InvalidCronError(expression, f"contains the non-ASCII character {char!r}")
    if expression.startswith("@"):
        return _alias_fields(expression)
    fields = expression.split()
    if len(fields) not in (5, 6):
        extra = " (a year field is not supported)" if len(fields) == 7 else ""
        raise InvalidCronError(expression, f"{_FIELD_COUNTS}, got {len(fields)}{extra}")
    names = _FIELDS_6 if len(fields) == 6 else _FIELDS_5
    for text, (name, _) in zip(fields, names, strict=True):
        if _HASH_OR_RANDOM.search(text):
            raise InvalidCronError(
                expression,
                f"{name} field {text!r}: hashed (H) and random (R) values are not supported; "
                "every node must compute the same ticks",
            )
        if not _FIELD_CHARS.fullmatch(text):
            bad = next(char for char in text if not _FIELD_CHARS.fullmatch(char))
            reason = f"{name} field {text!r}: unexpected character {bad!r}"
            raise InvalidCronError(expression, reason)
    return fields


_WEEKDAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


def looks_seconds_last(fields: list[str]) -> bool:
    """Six fields that repeat within a minute on numbered weekdays: almost surely seconds last.

    Seconds first, ``* * * * * */5`` fires every second on Sundays and Fridays; nobody means
    that, while seconds last it is the everyday "every 5 seconds". Weekdays given by name are
    taken as meant (seconds are never names), which is how the refused reading is still written.
    """
    second, weekday = fields[0], fields[5]
    repeats_within_a_minute = second == "*" or "/" in second
    numbered = any(char.isdigit() for char in weekday)
    return repeats_within_a_minute and numbered and _seconds_last_reading(fields) is not None


def _seconds_last_reading(fields: list[str]) -> str | None:
    """The expression that means, seconds first, what ``fields`` mean seconds last; None if the
    seconds-last reading is not a valid expression either."""
    rotated = " ".join([fields[5], *fields[:5]])
    try:
        croniter.expand(rotated, second_at_beginning=True)
    except (CroniterError, ValueError, TypeError):
        return None
    return rotated


def seconds_last_hint(fields: list[str]) -> str:
    rotated = _seconds_last_reading(fields)
    if rotated is None:
        return ""
    return (
        f"; six fields put the seconds FIRST here (second minute hour day month weekday). "
        f"If you meant seconds last (croniter, APScheduler), write {rotated!r}"
    )


def seconds_last_reason(fields: list[str], weekdays: Sequence[object]) -> str:
    second, weekday = fields[0], fields[5]
    days = sorted({day % 7 for day in weekdays if isinstance(day, int)})
    named = ",".join(_WEEKDAY_NAMES[day] for day in days)
    first = (
        f"read seconds first, as pg_scheduler reads six fields, it fires on second {second!r} "
        f"of every matching minute, only on weekday {weekday!r}"
        + (f" ({named})" if named and "#" not in weekday and "L" not in weekday.upper() else "")
    )
    rotated = _seconds_last_reading(fields)
    last = f"read seconds last (croniter, APScheduler), its seconds are {weekday!r}"
    advice = []
    if rotated is not None:
        advice.append(f"for the seconds-last meaning write {rotated!r}")
    if named and len(days) == len(weekdays) and "#" not in weekday:
        advice.append(f"if you mean those weekdays, name them: {' '.join([*fields[:5], named])!r}")
    return "ambiguous six-field expression, probably seconds last: " + "; ".join(
        [first, last, *advice]
    )


def _alias_fields(expression: str) -> list[str]:
    word = expression.split(maxsplit=1)[0].lower()
    if word == "@every":
        raise InvalidCronError(
            expression, "@every intervals are not supported; write a cron step such as */5"
        )
    if word == "@reboot":
        raise InvalidCronError(
            expression, "@reboot is not supported: schedules are time based, not tied to a process"
        )
    if word not in _ALIASES:
        raise InvalidCronError(
            expression, f"unknown alias {word!r}; expected one of {', '.join(_ALIASES)}"
        )
    if expression.lower() != word:
        raise InvalidCronError(expression, f"the alias {word} takes no other fields")
    return _ALIASES[word].split()


def explain(fields: list[str], error: Exception) -> str:
    """Name the field croniter rejected: try each field alone with every other field ``*``."""
    names = _FIELDS_6 if len(fields) == 6 else _FIELDS_5
    for index, (text, (name, allowed)) in enumerate(zip(fields, names, strict=True)):
        probe = ["*"] * len(fields)
        probe[index] = text
        try:
            croniter.expand(" ".join(probe), second_at_beginning=len(fields) == 6)
        except (CroniterError, ValueError, TypeError) as exc:
            return f"{name} field {text!r}: {_describe(exc, allowed)}"
    return _describe(error, "")


def _describe(error: Exception, allowed: str) -> str:
    message = str(error)
    allowed_note = f" (allowed: {allowed})" if allowed else ""
    if isinstance(error, CroniterNotAlphaError):
        return f"not a number, range, step or known name{allowed_note}"
    if "out of range" in message or "out of bands" in message:
        return f"value out of range{allowed_note}"
    if "step" in message:
        return "a step must be a whole number of at least 1"
    if "does not support mixing" in message:
        return "plain weekdays cannot be mixed with the n#k form in one field"
    # croniter prefixes its messages with "[<expression>] is not acceptable"; keep only the detail.
    detail = re.sub(r"^\[.*?\]\s*(is not acceptable)?[.,]?\s*", "", message).strip()
    return detail or "not a valid cron expression"


@functools.lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def load_zone(name: str) -> ZoneInfo | None:
    if name == "UTC":
        return None  # no tz database needed for the default
    given: object = name
    if not isinstance(given, str) or given in _NOT_IANA:
        raise InvalidTimezoneError(str(given))
    known = _known_zones()
    if known and name not in known:
        raise InvalidTimezoneError(name)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidTimezoneError(name) from None
