"""A scheduler node as a real process, for multi-process tests: ``python tests/nodeproc.py``.

Configured by one environment variable, ``PGS_NODE`` (JSON): ``url``, ``prefix``, ``node_name``,
``jobs`` (names from ``CATALOG`` to register), ``recurring`` (``{name: cron}`` to schedule), and
``config`` overrides (durations in seconds). Jobs record what ran in the ``effects`` table through
their own connection (``clock_timestamp()``), so a test states its invariants as SQL. The node
prints ``READY <node_id>`` once started and shuts down gracefully on SIGTERM/SIGINT.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pg_scheduler import Job, JobConfig, JobContext, RetryBackoff, Scheduler, SchedulerConfig

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
    """Writes effect rows on its own autocommit engine (never the scheduler's session)."""

    def __init__(self, url: str, prefix: str, node: str) -> None:
        self.engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", pool_size=20)
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

    def start(self, ctx: JobContext) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.insert(self.table)
                    .values(
                        job_key=ctx.job_key,
                        scheduled_at=ctx.scheduled_at,
                        attempt=ctx.attempt,
                        node=self.node,
                        started_at=sa.func.clock_timestamp(),
                    )
                    .returning(self.table.c.id)
                ).scalar_one()
            )

    def finish(self, effect_id: int) -> None:
        with self.engine.connect() as conn:
            conn.execute(
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
                raise RuntimeError("cancelled")
            time.sleep(0.01)
        RECORDER.finish(effect)


class Stubborn(Job):
    """Ignores cancellation entirely."""

    def run(self, ctx: JobContext) -> None:
        effect = RECORDER.start(ctx)
        time.sleep(float(ctx.params.get("seconds", 5)))
        RECORDER.finish(effect)


class Suicide(Job):
    """Records its start, then kills its own process (a job that crashes its node)."""

    def run(self, ctx: JobContext) -> None:
        RECORDER.start(ctx)
        if ctx.attempt <= int(ctx.params.get("die_until_attempt", 1)):
            os._exit(17)


CATALOG: dict[str, type[Job]] = {
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
        pool_pre_ping=True,
        connect_args=spec.get("connect_args", {}),
    )
    config = SchedulerConfig(
        engine=engine, table_prefix=spec["prefix"], node_name=spec["node_name"], **overrides
    )
    scheduler = Scheduler(config)
    for name in spec.get("jobs", []):
        scheduler.register(CATALOG[name](JobConfig.one_time(name)))
    for name, cron in spec.get("recurring", {}).items():
        scheduler.schedule_job(CATALOG[name](JobConfig.recurring(name, cron)))
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
    handler.setFormatter(EventFormatter("%(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("alembic").setLevel(logging.WARNING)
    spec = json.loads(os.environ["PGS_NODE"])
    scheduler = build(spec)
    RECORDER = Recorder(spec["url"], spec["prefix"], scheduler.node_id)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    scheduler.start()
    print(f"READY {scheduler.node_id}", flush=True)
    stop.wait()
    scheduler.shutdown()
    print("STOPPED", flush=True)


if __name__ == "__main__":
    main()
