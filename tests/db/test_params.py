"""Poison input (reliability.md X1-X6, X4): refused before any SQL, with a specific error.

Each refusal is checked twice: ``encode_params`` / the validators on their own (some of them in
``tests/unit/test_params.py``), and through the repository in a transaction that the test then *commits* (as an application that catches the error
and carries on would). If the repository wrote a row before raising, the commit would keep it, so
"no row was written" is a real check, not an artefact of a rollback.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from pg_scheduler.cron import CronSchedule
from pg_scheduler.db.records import OneTimeSpec, RecurringSpec
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.errors import (
    ConfigError,
    InvalidJobNameError,
    PayloadNotJSONError,
    PayloadTooLargeError,
    PgSchedulerError,
)
from pg_scheduler.models import Models
from pg_scheduler.params import DEFAULT_MAX_PARAMS_BYTES, encode_params
from tests.support.factories import count_jobs, repository
from tests.support.poison import BAD_PARAMS


def refuses(
    engine: sa.Engine, models: Models, error: type[Exception], write: Callable[[JobRepository], Any]
) -> Exception:
    """Run ``write``, expect ``error``, commit anyway, and check that no row appeared."""
    before = count_jobs(engine, models)
    with Session(engine) as session, session.begin():
        repo = JobRepository(session, models, max_params_bytes=1000)
        with pytest.raises(error) as caught:
            write(repo)
    assert count_jobs(engine, models) == before, "a refused job wrote a row"
    assert isinstance(caught.value, PgSchedulerError)
    return caught.value


@pytest.mark.parametrize("make", BAD_PARAMS)
def test_params_that_are_not_plain_json_are_refused(
    engine: sa.Engine, models: Models, make: Callable[[], Any]
) -> None:
    # encode_params on its own: tests/unit/test_params.py.
    refuses(
        engine,
        models,
        PayloadNotJSONError,
        lambda repo: repo.insert_one_time(OneTimeSpec("job", make())),
    )


def test_params_larger_than_the_limit_are_refused(engine: sa.Engine, models: Models) -> None:
    exact = {"s": "x" * (1000 - len('{"s":""}'))}
    assert len(encode_params(exact, 1000)) == 1000  # the limit itself is allowed
    big = {"s": "x" * 2000}
    error = refuses(
        engine,
        models,
        PayloadTooLargeError,
        lambda repo: repo.insert_one_time(OneTimeSpec("job", big)),
    )
    assert isinstance(error, PayloadTooLargeError)
    assert (error.size, error.limit) == (len(json.dumps(big, separators=(",", ":"))), 1000)
    # Bytes, not characters: each "é" is two bytes of UTF-8.
    with pytest.raises(PayloadTooLargeError) as caught:
        encode_params("é" * 600, 1000)
    assert caught.value.size == 1202
    # The default limit is 1 MiB.
    with pytest.raises(PayloadTooLargeError) as caught:
        encode_params("x" * DEFAULT_MAX_PARAMS_BYTES)
    assert caught.value.limit == DEFAULT_MAX_PARAMS_BYTES


BAD_NAMES = [
    pytest.param("", id="empty"),
    pytest.param("   ", id="whitespace"),
    pytest.param("\t", id="tab"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a#b", id="hash"),
    pytest.param("two\nlines", id="newline"),
    pytest.param("bell\x07", id="control"),
    pytest.param("del\x7f", id="delete"),
    pytest.param("x" * 201, id="201-chars"),
    pytest.param(None, id="none"),
    pytest.param(42, id="int"),
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_job_names_are_refused(engine: sa.Engine, models: Models, name: Any) -> None:
    refuses(
        engine, models, InvalidJobNameError, lambda repo: repo.insert_one_time(OneTimeSpec(name))
    )
    refuses(
        engine,
        models,
        InvalidJobNameError,
        lambda repo: repo.upsert_recurring(RecurringSpec(name, CronSchedule.parse("* * * * *"))),
    )


def test_longest_allowed_name_is_accepted(engine: sa.Engine, models: Models) -> None:
    with repository(engine, models) as repo:
        repo.insert_one_time(OneTimeSpec("x" * 200))
        repo.upsert_recurring(RecurringSpec("y" * 200, CronSchedule.parse("* * * * *")))
    assert count_jobs(engine, models) == 2


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(lambda: OneTimeSpec("job", run_at=dt.datetime(2030, 1, 1)), id="naive-run-at"),
        pytest.param(lambda: OneTimeSpec("job", run_at="2030-01-01T00:00Z"), id="text-run-at"),
        pytest.param(lambda: OneTimeSpec("job", retries=-1), id="negative-retries"),
        pytest.param(lambda: OneTimeSpec("job", retries=True), id="bool-retries"),
        pytest.param(lambda: OneTimeSpec("job", retries=1.5), id="float-retries"),
    ],
)
def test_bad_one_time_settings_are_refused(
    engine: sa.Engine, models: Models, spec: Callable[[], OneTimeSpec]
) -> None:
    refuses(engine, models, ConfigError, lambda repo: repo.insert_one_time(spec()))


def test_negative_retries_of_a_recurring_job_are_refused(engine: sa.Engine, models: Models) -> None:
    schedule = CronSchedule.parse("* * * * *")
    refuses(
        engine,
        models,
        ConfigError,
        lambda repo: repo.upsert_recurring(RecurringSpec("job", schedule, retries=-1)),
    )


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        pytest.param(OneTimeSpec("job", {"x": float("nan")}), PayloadNotJSONError, id="params"),
        pytest.param(OneTimeSpec("job", {"s": "x" * 5000}), PayloadTooLargeError, id="size"),
        pytest.param(OneTimeSpec("bad#name"), InvalidJobNameError, id="name"),
        pytest.param(OneTimeSpec("job", retries=-2), ConfigError, id="retries"),
    ],
)
@pytest.mark.parametrize("position", [0, 5, 9])
def test_insert_many_with_one_bad_element_writes_none(
    engine: sa.Engine, models: Models, bad: OneTimeSpec, error: type[Exception], position: int
) -> None:
    specs = [OneTimeSpec("job", {"i": i}) for i in range(10)]
    specs[position] = bad
    refuses(engine, models, error, lambda repo: repo.insert_many(specs))


def test_json_text_that_only_looks_like_a_nul_is_stored(engine: sa.Engine, models: Models) -> None:
    """A literal backslash followed by "u0000" is ordinary text, not a NUL: it must round-trip."""
    params = {"text": "\\u0000", "also": "\\\\u0000", "unicode": "žluť 🐍", "big": 10**30}
    with repository(engine, models) as repo:
        key = repo.insert_one_time(OneTimeSpec("job", params))
    with repository(engine, models) as repo:
        job = repo.get(key)
    assert job is not None and job.params == params


ROUND_TRIP: list[Any] = [
    pytest.param(None, id="none"),
    pytest.param(False, id="false"),
    pytest.param(0, id="zero"),
    pytest.param("", id="empty-string"),
    pytest.param("null", id="the-string-null"),
    pytest.param([], id="empty-list"),
    pytest.param({}, id="empty-object"),
    pytest.param(
        {"to": "ünïcødé ✓", "n": [1, 2.5, None, True], "deep": {"x": {"y": []}}}, id="nested"
    ),
]


@pytest.mark.parametrize("params", ROUND_TRIP)
def test_a_claimed_job_gets_its_params_back(engine: sa.Engine, models: Models, params: Any) -> None:
    """The claim reads parameters as JSON text and decodes them itself: every JSON value, the
    falsy ones and a string that reads "null" included, comes back equal."""
    name = "round_trip"
    with repository(engine, models) as repo:
        key = repo.insert_one_time(OneTimeSpec(name, params))
    with repository(engine, models) as repo:
        (claimed,) = repo.claim("node-1", [name], 10)
    assert claimed.key == key
    assert claimed.job.params == params
    assert type(claimed.job.params) is type(params)
