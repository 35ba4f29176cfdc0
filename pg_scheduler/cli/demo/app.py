"""The demo's application: the jobs its nodes run, the factory each node process runs
(``pg-scheduler worker pg_scheduler.cli.demo.app:node``), and the one-time jobs the demo enqueues.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import threading
import time
from typing import Any

import sqlalchemy as sa

from pg_scheduler.config import RetryBackoff, SchedulerConfig
from pg_scheduler.jobs import JobContext
from pg_scheduler.naming import Names
from pg_scheduler.scheduler import Scheduler

NAMES = Names(prefix="demo_")
TICK = "tick"
NODE_NAME_ENV = "PG_SCHEDULER_DEMO_NODE"
PARENT_PID_ENV = "PG_SCHEDULER_DEMO_PARENT"

_SECOND = dt.timedelta(seconds=1)


def tick(ctx: JobContext) -> None:
    """The per-second recurring job: a little work, so runs have a visible duration."""
    ctx.cancelled.wait(0.05)
    ctx.raise_if_cancelled()  # stopped early: handed back (or cancelled), not completed


def send_email(ctx: JobContext) -> None:
    ctx.logger.info("sending %r to %s", ctx.params["subject"], ctx.params["to"])
    ctx.cancelled.wait(0.3)
    ctx.raise_if_cancelled()  # stopped early: handed back (or cancelled), not completed


def resize_image(ctx: JobContext) -> None:
    ctx.logger.info("resizing image %s to %spx", ctx.params["image_id"], ctx.params["width"])
    ctx.cancelled.wait(0.6)
    ctx.raise_if_cancelled()  # stopped early: handed back (or cancelled), not completed


def flaky_import(ctx: JobContext) -> None:
    """Fails its first ``fail_attempts`` attempts, then succeeds: retries at work."""
    if ctx.attempt <= ctx.params["fail_attempts"]:
        raise ConnectionError(
            f"{ctx.params['source']}: connection reset (attempt {ctx.attempt}, will be retried)"
        )
    ctx.cancelled.wait(0.2)
    ctx.raise_if_cancelled()  # stopped early: handed back (or cancelled), not completed


def node(url: str) -> Scheduler:
    """One demo node: the factory that ``pg-scheduler worker pg_scheduler.cli.demo.app:node`` runs."""
    engine = sa.create_engine(url, pool_size=4, max_overflow=4, pool_pre_ping=True)
    scheduler = Scheduler(
        SchedulerConfig(
            engine=engine,
            table_prefix=NAMES.prefix,
            node_name=os.environ.get(NODE_NAME_ENV),
            job_check_interval=_SECOND,
            heartbeat_interval=_SECOND,
            no_heartbeat_timeout=5 * _SECOND,
            shutdown_timeout=5 * _SECOND,
            # Short, exact backoff, so the flaky job's retries fit in a short demo.
            retry_backoff=RetryBackoff(base=_SECOND, cap=2 * _SECOND, jitter=0),
        )
    )
    scheduler.recurring(TICK, "* * * * * *")(tick)  # 6 fields: seconds first
    scheduler.one_time("send_email")(send_email)
    scheduler.one_time("resize_image")(resize_image)
    scheduler.one_time("flaky_import", retries=2)(flaky_import)
    _stop_when_orphaned()
    return scheduler


def _stop_when_orphaned() -> None:
    """Stop this node (gracefully, by SIGTERM) if the demo that started it goes away."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent:
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="pg_scheduler-demo-orphan-watch", daemon=True).start()


@dataclasses.dataclass(frozen=True)
class Planned:
    """A one-time job the demo enqueues, and how it must end."""

    name: str
    params: dict[str, Any]
    delay: float = 0.0  # seconds after the start
    retries: int = 0
    attempts: int = 1  # attempts it takes; every planned job ends completed


PLAN = (
    Planned("send_email", {"to": "ada@example.com", "subject": "Welcome!"}),
    Planned("resize_image", {"image_id": 42, "width": 640}, delay=0.5),
    Planned(
        "flaky_import",
        {"source": "s3://demo/orders.csv", "fail_attempts": 2},
        retries=2,
        attempts=3,
    ),
    Planned("send_email", {"to": "grace@example.com", "subject": "Your invoice"}, delay=1.0),
    Planned("send_email", {"to": "linus@example.com", "subject": "Password reset"}, delay=2.0),
    Planned("resize_image", {"image_id": 43, "width": 1280}, delay=3.0),
)
