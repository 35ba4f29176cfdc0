"""Every rule between ``SchedulerConfig`` fields is enforced, and listed in the README; bad
settings and a dead database read as clear errors (no database needed)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pg_scheduler import RetryBackoff, Scheduler, SchedulerConfig, errors

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
RULES = README[README.index("Every rule `SchedulerConfig` checks") :]
RULES = RULES[: RULES.index("\n\n", RULES.index("\n- "))]

S = dt.timedelta(seconds=1)

CASES: list[tuple[dict[str, Any], str]] = [
    (
        {"heartbeat_interval": 10 * S, "no_heartbeat_timeout": 19 * S},
        "`no_heartbeat_timeout` ≥ 2 \u00d7 `heartbeat_interval`",
    ),
    (
        {"no_heartbeat_timeout": 60 * S, "orphaned_job_timeout": 59 * S},
        "`orphaned_job_timeout` ≥ `no_heartbeat_timeout`",
    ),
    ({"max_concurrent_jobs": 0}, "`max_concurrent_jobs` is an integer ≥ 1"),
    ({"max_params_bytes": 1}, "`max_params_bytes` an integer ≥ 2"),
    ({"job_check_interval": 0 * S}, "greater than zero"),
    ({"statement_timeout": 0 * S}, "`statement_timeout` (unless `None`)"),
    ({"shutdown_timeout": -S}, "may be zero, never\n  negative"),
    ({"node_name": ""}, "`node_name`, when given, is a non-empty string"),
]


@pytest.mark.parametrize(("overrides", "listed"), CASES)
def test_each_rule_is_enforced_and_listed(overrides: dict[str, Any], listed: str) -> None:
    assert listed in RULES
    with pytest.raises(errors.ConfigError):
        SchedulerConfig(engine=sa.create_engine("postgresql+psycopg://"), **overrides)


def test_retry_backoff_rules_are_enforced_and_listed() -> None:
    assert "`cap` ≥ `base` and `jitter` within [0, 1]" in RULES
    with pytest.raises(errors.ConfigError):
        RetryBackoff(base=2 * S, cap=S)
    with pytest.raises(errors.ConfigError):
        RetryBackoff(jitter=1.5)


def test_the_boundaries_themselves_are_allowed() -> None:
    SchedulerConfig(
        engine=sa.create_engine("postgresql+psycopg://"),
        heartbeat_interval=10 * S,
        no_heartbeat_timeout=20 * S,
        orphaned_job_timeout=20 * S,
        shutdown_timeout=0 * S,
        finished_job_retention=0 * S,
    )


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "pg8000"])
def test_dead_database_gives_a_clear_error(driver: str) -> None:
    # pg8000 reports a refused connection as an InterfaceError (raised from the OSError), not
    # an OperationalError: it must read the same.
    engine = sa.create_engine(f"postgresql+{driver}://nobody@127.0.0.1:1/none")
    s = Scheduler(SchedulerConfig(engine=engine, table_prefix="x_"))
    calls: list[Callable[[], object]] = [
        lambda: s.enqueue("x", {}),
        lambda: s.get_job("x#1"),
        s.list_jobs,
    ]
    for call in calls:
        with pytest.raises(errors.DatabaseUnavailableError, match="database unavailable"):
            call()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_concurrent_jobs", 0, "max_concurrent_jobs must be at least 1"),
        ("max_lost_leases", 0, "max_lost_leases must be an integer of at least 1"),
        ("max_lost_leases", True, "max_lost_leases must be an integer of at least 1"),
        ("max_lost_leases", 2.5, "max_lost_leases must be an integer of at least 1"),
        ("heartbeat_interval", dt.timedelta(seconds=-1), "heartbeat_interval must be a positive"),
        ("heartbeat_interval", 30, "heartbeat_interval must be a datetime.timedelta"),
        ("no_heartbeat_timeout", dt.timedelta(seconds=40), "at least twice"),
        ("table_prefix", 'x"; drop table y; --', "invalid table prefix"),
        ("schema", "Bad", "invalid schema name"),
        ("shutdown_timeout", dt.timedelta(seconds=-5), "shutdown_timeout"),
    ],
)
def test_invalid_settings_raise_at_construction(field: str, value: object, message: str) -> None:
    engine = sa.create_engine("postgresql+psycopg://")
    with pytest.raises(errors.ConfigError, match=message):
        SchedulerConfig(engine=engine, **{field: value})  # type: ignore[arg-type]


def test_sqlite_is_refused() -> None:
    with pytest.raises(errors.ConfigError, match="needs PostgreSQL"):
        SchedulerConfig(engine=sa.create_engine("sqlite://"))
