"""Statement builders checked without a database: every guard comes from the transition table."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from pg_scheduler import states
from pg_scheduler.db import queries
from pg_scheduler.models import build_models
from pg_scheduler.naming import Names

MODELS = build_models(Names("unit_"))
JOBS = MODELS.jobs


def sql(clause: sa.ClauseElement) -> str:
    return str(clause.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


@pytest.mark.parametrize("transition", [t for t in states.TRANSITIONS if t.source])
def test_a_guard_says_the_source_states_and_the_lease_when_fenced(
    transition: states.Transition,
) -> None:
    lease = uuid.UUID(int=7)
    text = sql(queries.guard(JOBS, transition, lease_id=lease))
    for status in transition.source:
        assert f"'{status.value}'" in text
    assert ("lease_id" in text) is transition.fenced


@pytest.mark.parametrize("transition", [t for t in states.TRANSITIONS if t.fenced])
def test_a_fenced_guard_without_a_lease_is_refused(transition: states.Transition) -> None:
    with pytest.raises(ValueError, match="needs the holder's lease_id"):
        queries.guard(JOBS, transition)


def test_an_insert_has_no_guard() -> None:
    with pytest.raises(ValueError, match="no source state"):
        queries.guard(JOBS, states.ENQUEUE)


def test_a_heartbeat_renews_a_list_of_leases_in_one_guard() -> None:
    leases = [uuid.UUID(int=1), uuid.UUID(int=2)]
    text = sql(queries.guard(JOBS, states.HEARTBEAT, lease_id=leases))
    assert "lease_id IN" in text and "'running'" in text
