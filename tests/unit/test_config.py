"""Every rule between ``SchedulerConfig`` fields is enforced, and listed in the README."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pg_scheduler import RetryBackoff, SchedulerConfig, errors

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
