"""A scheduler node as a real process, for multi-process tests: ``python tests/support/nodeproc.py``.

Configured by one environment variable, ``PGS_NODE`` (JSON): ``url``, ``prefix``, ``node_name``,
``jobs`` (names from ``CATALOG`` to register), ``recurring`` (``{name: cron}`` or
``{name: {"cron": …, "misfire": …, "misfire_grace": seconds}}`` to schedule), and ``config``
overrides (durations in seconds). Jobs record what ran in the ``effects`` table through their own
connection (``clock_timestamp()``), so a test states its invariants as SQL. The node prints
``READY <node_id>`` once started and shuts down gracefully on SIGTERM/SIGINT.

Fault levers for tests/faults: ``clock`` (``{"offset": s, "step_after": s, "step_to": s}``) shifts
this process's wall clock (``time.time``) by ``offset`` seconds, then to ``step_to`` after
``step_after`` seconds; ``hooks.before_outcome`` (seconds) pauses each outcome write after the
job's code returned, printing ``OUTCOME_PENDING <key>`` first; ``pool_pre_ping`` (default true).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pg_scheduler import Job, JobConfig, JobContext, RetryBackoff, Scheduler, SchedulerConfig


def shift_clock(clock: dict[str, float]) -> None:
    """Move this process's wall clock; the library must not care (it uses the database's)."""
    real_time, real_time_ns, started = time.time, time.time_ns, time.monotonic()

    def offset() -> float:
        step_after = clock.get("step_after")
        if step_after is not None and time.monotonic() - started >= float(step_after):
            return float(clock.get("step_to", 0))
        return float(clock.get("offset", 0))

    time.time = lambda: real_time() + offset()
    time.time_ns = lambda: real_time_ns() + int(offset() * 1e9)


EFFECTS_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    id bigserial PRIMARY KEY,
    job_key text NOT NULL,
    scheduled_at timestamptz NOT NULL,
    attempt int NOT NULL,
    node text NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz
)
"""


def effects_table(prefix: str) -> str:
    return f"{prefix}effects"


class Recorder:
    """Writes effect rows on its own autocommit engine (never the scheduler's session).

    A write is retried while the database is unreachable (a restart in a fault test), so that a
    job's own bookkeeping does not fail the job: what is under test is the scheduler.
    """

    def __init__(self, url: str, prefix: str, node: str) -> None:
        self.engine = sa.create_engine(
            url, isolation_level="AUTOCOMMIT", pool_size=20, pool_pre_ping=True
        )
        self.table = sa.table(
            effects_table(prefix),
            sa.column("id"),
            sa.column("job_key"),
            sa.column("scheduled_at"),
            sa.column("attempt"),
            sa.column("node"),
            sa.column("started_at"),
            sa.column("finished_at"),
        )
        self.node = node

    def _retry(self, stmt: Any) -> Any:
        deadline = time.monotonic() + 120
        while True:
            try:
                with self.engine.connect() as conn:
                    result = conn.execute(stmt)
                    return result.scalar() if result.returns_rows else None
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def start(self, ctx: JobContext) -> int:
        return int(
            self._retry(
                sa.insert(self.table)
                .values(
                    job_key=ctx.job_key,
                    scheduled_at=ctx.scheduled_at,
                    attempt=ctx.attempt,
                    node=self.node,
                    started_at=sa.func.clock_timestamp(),
                )
                .returning(self.table.c.id)
            )
        )

    def count(self, ctx: JobContext) -> int:
        """How many runs of this job have started (on any node)."""
        return int(
            self._retry(
                sa.select(sa.func.count())
                .select_from(self.table)
                .where(self.table.c.job_key == ctx.job_key)
            )
        )

    def once(self, ctx: JobContext) -> None:
        self._retry(
            sa.insert(self.table).values(
                job_key=ctx.job_key,
                scheduled_at=ctx.scheduled_at,
                attempt=ctx.attempt,
                node=self.node,
                started_at=sa.func.clock_timestamp(),
                finished_at=sa.func.clock_timestamp(),
            )
        )

    def finish(self, effect_id: int) -> None:
        self._retry(
            sa.update(self.table)
            .where(self.table.c.id == effect_id)
            .values(finished_at=sa.func.clock_timestamp())
        )


RECORDER: Recorder


class Tick(Job):
    """Records its run; used for per-second schedules."""

    def run(self, ctx: JobContext) -> None:
        effect = RECORDER.start(ctx)
        time.sleep(float((ctx.params or {}).get("seconds", 0.05)))
        RECORDER.finish(effect)


class Slow(Job):
    """Records its start, sleeps ``params.seconds`` (cooperatively), records its end."""

    def run(self, ctx: JobContext) -> None:
        effect = RECORDER.start(ctx)
        deadline = time.monotonic() + float(ctx.params.get("seconds", 1))
        while time.monotonic() < deadline:
            if ctx.params.get("cooperative", True) and ctx.cancelled.wait(0.02):
                ctx.raise_if_cancelled()  # handed back (shutdown) or cancelled (cancel_job)
            time.sleep(0.01)
        RECORDER.finish(effect)


class Stubborn(Job):
    """Ignores cancellation entirely."""

    def run(self, ctx: JobContext) -> None:
        effect = RECORDER.start(ctx)
        time.sleep(float(ctx.params.get("seconds", 5)))
        RECORDER.finish(effect)


class Suicide(Job):
    """Records its start, then kills its own process (a job that crashes its node) on its first
    ``params.die_times`` runs (a lost run keeps its attempt number, so runs are counted in the
    effects table)."""

    def run(self, ctx: JobContext) -> None:
        RECORDER.start(ctx)
        if RECORDER.count(ctx) <= int(ctx.params.get("die_times", 1)):
            os._exit(17)


class Noop(Job):
    """Records that it ran, in one write (soak tests: throughput, not duration)."""

    def run(self, ctx: JobContext) -> None:
        RECORDER.once(ctx)


CATALOG: dict[str, type[Job]] = {
    "noop": Noop,
    "tick": Tick,
    "tick2": Tick,
    "tick3": Tick,
    "slow": Slow,
    "stubborn": Stubborn,
    "suicide": Suicide,
}


def build(spec: dict[str, Any]) -> Scheduler:
    overrides = dict(spec.get("config", {}))
    durations = {
        "job_check_interval",
        "heartbeat_interval",
        "no_heartbeat_timeout",
        "shutdown_timeout",
        "orphaned_job_timeout",
        "failed_and_completed_one_time_job_interval",
        "finished_job_retention",
        "statement_timeout",
    }
    for key in list(overrides):
        if key in durations:
            overrides[key] = dt.timedelta(seconds=float(overrides[key]))
    if "retry_backoff" in overrides:
        overrides["retry_backoff"] = RetryBackoff(
            base=dt.timedelta(seconds=float(overrides["retry_backoff"])), jitter=0
        )
    engine = sa.create_engine(
        spec["url"],
        pool_size=10,
        pool_pre_ping=spec.get("pool_pre_ping", True),
        connect_args=spec.get("connect_args", {}),
    )
    config = SchedulerConfig(
        engine=engine, table_prefix=spec["prefix"], node_name=spec["node_name"], **overrides
    )
    scheduler = Scheduler(config)
    for name in spec.get("jobs", []):
        scheduler.register(CATALOG[name](JobConfig.one_time(name)))
    for name, schedule in spec.get("recurring", {}).items():
        options = schedule if isinstance(schedule, dict) else {"cron": schedule}
        grace = dt.timedelta(seconds=float(options.get("misfire_grace", 60)))
        config = JobConfig.recurring(
            name, options["cron"], misfire=options.get("misfire", "coalesce"), misfire_grace=grace
        )
        scheduler.schedule_job(CATALOG[name](config))
    pause = spec.get("hooks", {}).get("before_outcome")
    if pause is not None:
        attempts = scheduler.node.attempts
        finish = attempts.finish

        async def finish_later(running: Any, outcome: Any, **options: Any) -> None:
            # The job's code has returned (its side effect is done); the outcome is not written yet.
            print(f"OUTCOME_PENDING {running.claimed.key}", flush=True)
            time.sleep(float(pause))  # the thread runtime: this blocks the job's worker thread
            await finish(running, outcome, **options)

        attempts.finish = finish_later  # type: ignore[method-assign]
    return scheduler


class EventFormatter(logging.Formatter):
    """Appends the record's stable event name, so tests can grep for it."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        event = getattr(record, "event", None)
        return f"{text} [{event}]" if event else text


def main() -> None:
    global RECORDER  # noqa: PLW0603 - the job classes are looked up by name in CATALOG
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(EventFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("alembic").setLevel(logging.WARNING)
    spec = json.loads(os.environ["PGS_NODE"])
    if "clock" in spec:
        shift_clock(spec["clock"])
    scheduler = build(spec)
    # Jobs record their effects directly, not through a proxy a test may black-hole.
    RECORDER = Recorder(spec.get("effects_url", spec["url"]), spec["prefix"], scheduler.node_id)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    scheduler.start()
    print(f"CLOCK {time.time():.3f}", flush=True)  # this process's wall clock, offset included
    print(f"READY {scheduler.node_id}", flush=True)
    stop.wait()
    scheduler.shutdown()
    print("STOPPED", flush=True)


if __name__ == "__main__":
    main()
