"""Time faults: node clocks ±90 s apart and a clock that steps back an hour (real processes), and
DST for a zoned schedule at the repository level (the unit-level DST cases are in test_cron.py).

The library reads the database's clock for everything that decides (due, leases, heartbeats,
sweeps, the next tick); the only wall-clock read in pg_scheduler is a sanity check when a cron
expression is compiled. The node processes here get their ``time.time`` shifted (``clock`` in the
node spec): if any decision used it, ticks would duplicate or leases look stalled.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from pg_scheduler.cron import CronSchedule
from pg_scheduler.models import Models
from pg_scheduler.states import JobStatus, RunStatus
from pg_scheduler.testing import wait_until
from tests.faults.conftest import write_measurement
from tests.faults.helpers import enqueue_many, runs, status
from tests.faults.invariants import assert_invariants
from tests.support.cluster import FAST, Cluster
from tests.support.factories import make_job, repository

UTC = dt.timezone.utc


@pytest.mark.slow
@pytest.mark.faults
def test_skewed_and_stepping_clocks_change_nothing(fault_cluster: Cluster) -> None:
    """Three nodes share a per-second schedule and one-time jobs: one clock 90 s ahead, one 90 s
    behind, one that steps back an hour three seconds after start. No tick runs twice, none goes
    missing once all three run, and no healthy job is rescued."""
    c = fault_cluster
    schedule = {"tick": {"cron": "* * * * * *", "misfire": "all", "misfire_grace": 60}}
    clocks = {
        "ahead": {"offset": 90},
        "behind": {"offset": -90},
        "stepper": {"offset": 0, "step_after": 3, "step_to": -3600},
    }
    for name, clock in clocks.items():
        node = c.start(name, jobs=["slow"], recurring=schedule, extra={"clock": clock})
        # The injection is real: the process's clock is off by its offset (read as it started).
        shown = re.search(r"^CLOCK (\S+)$", node.log(), re.M)
        assert shown is not None
        assert abs(float(shown.group(1)) - time.time() - clock["offset"]) < 5, node.log()
    warm = c.scalar("SELECT now() + interval '4 seconds'")  # the stepper has stepped by then
    keys = enqueue_many(c, "slow", [{"seconds": 2, "cooperative": False}] * 6)
    wait_until(
        lambda: (
            c.scalar(
                f"SELECT count(*) FROM {c.effects} WHERE job_key = 'tick' AND scheduled_at > :w "
                "AND finished_at IS NOT NULL",
                w=warm,
            )
            >= 8
        ),
        timeout=60,
        message="eight ticks after the step",
    )
    wait_until(lambda: all(status(c, k) == "completed" for k in keys), timeout=60)
    c.stop_all()
    ticks = [
        r[0]
        for r in c.query(
            f"SELECT scheduled_at FROM {c.effects} WHERE job_key = 'tick' AND scheduled_at > :w "
            "ORDER BY 1",
            w=warm,
        )
    ]
    assert len(ticks) == len(set(ticks))
    assert {(b - a).total_seconds() for a, b in itertools.pairwise(ticks)} == {1.0}
    for key in keys:
        assert runs(c, key) == [(1, "completed")]
    assert c.scalar(f"SELECT count(*) FROM {c.names.runs_table} WHERE status = 'lost'") == 0
    assert_invariants(c, horizon=FAST["no_heartbeat_timeout"] + 3)
    by_node = dict(
        c.query(f"SELECT node, count(*) FROM {c.effects} WHERE job_key = 'tick' GROUP BY 1")
    )
    write_measurement(
        "clocks +90 s / -90 s / stepping back 1 h",
        ticks_checked=len(ticks),
        ticks_by_node={k.split(":")[0]: v for k, v in by_node.items()},
        false_rescues=0,
    )


def test_the_library_reads_no_wall_clock_for_decisions() -> None:
    """The static half of "one clock": no module reads the local wall clock except where listed,
    each with the reason no decision depends on it."""
    allowed = {
        # Compiles a cron expression and asks for one tick, to reject expressions that never fire.
        ("cron.py", "time.time("),
    }
    display_only = {"cli.py", "commands.py", "views.py"}  # operator tools: what they print
    pattern = re.compile(r"\btime\.time(?:_ns)?\(|\bdatetime\.(?:now|utcnow)\(|\bdate\.today\(")
    package = Path(__file__).resolve().parents[2] / "pg_scheduler"
    found = {
        (path.name, match.group(0))
        for path in package.glob("*.py")
        if path.name not in display_only
        for match in pattern.finditer(path.read_text())
    }
    assert found <= allowed, f"wall-clock reads outside the allowed list: {sorted(found - allowed)}"


# ------------------------------------------------------------------------ DST, repository level
def _tick(engine: sa.Engine, models: Models, key: str) -> dt.datetime:
    """Claim the job and record a completed run; returns the next_run the repository chose."""
    with repository(engine, models) as repo:
        (claimed,) = repo.claim("dst-node", [key], 1)
    with repository(engine, models) as repo:
        from pg_scheduler.db.records import Outcome

        result = repo.finish(claimed, Outcome(RunStatus.COMPLETED, 1))
    assert result.applied and result.next_run is not None
    return result.next_run


@pytest.mark.parametrize(
    ("tick", "expected"),
    [
        # Spring forward (2026-03-29, 02:00 CET -> 03:00 CEST): 02:30 does not exist; it fires
        # once, at the first instant after the gap, then at 02:30 CEST the day after.
        (
            dt.datetime(2026, 3, 28, 1, 30, tzinfo=UTC),
            [
                dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
                dt.datetime(2026, 3, 30, 0, 30, tzinfo=UTC),
            ],
        ),
        # Fall back (2026-10-25, 03:00 CEST -> 02:00 CET): 02:30 is shown twice; it fires once,
        # at its first occurrence (02:30+02:00), then at 02:30 CET the day after.
        (
            dt.datetime(2026, 10, 24, 0, 30, tzinfo=UTC),
            [
                dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
                dt.datetime(2026, 10, 26, 1, 30, tzinfo=UTC),
            ],
        ),
    ],
    ids=["spring-forward", "fall-back"],
)
def test_next_run_follows_the_zone_across_dst(
    engine: sa.Engine, models: Models, tick: dt.datetime, expected: list[dt.datetime]
) -> None:
    """A recurring row at 02:30 Europe/Berlin, back-dated to the day before a DST change; the
    repository's outcome write (which computes the next tick from the database's now()) must walk
    across the change as the zone says. Misfire ``all`` with a long grace makes it step tick by
    tick from the back-dated one instead of jumping to today."""
    schedule = CronSchedule.parse("30 2 * * *", "Europe/Berlin")
    assert schedule.next_after(tick - dt.timedelta(seconds=1)) == tick
    job = make_job(
        engine,
        models,
        job_type="recurring",
        name="berlin",
        cron="30 2 * * *",
        timezone="Europe/Berlin",
        misfire="all",
        misfire_grace=dt.timedelta(days=3650),
        next_run=tick,
        scheduled_at=tick,
    )
    seen = []
    for _ in expected:
        next_run = _tick(engine, models, job.key)
        seen.append(next_run)
        # Make the new tick due now, keeping its identity (scheduled_at) as computed.
        with engine.begin() as conn:
            conn.execute(
                sa.update(models.jobs)
                .where(models.jobs.c.key == job.key)
                .values(next_run=sa.func.now())
            )
    assert seen == expected
    with repository(engine, models) as repo:
        record = repo.get(job.key)
    assert record is not None and record.status is JobStatus.PENDING
    assert record.scheduled_at == expected[-1]
