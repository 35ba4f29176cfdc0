"""``pg-scheduler demo``: a small cluster on your machine that shows what pg_scheduler promises.

The demo starts (or reuses) an embedded PostgreSQL, resets its own tables (prefix ``demo_``),
starts two node processes (``pg-scheduler worker pg_scheduler.demo:node``), schedules a
per-second recurring job, enqueues one-time jobs with parameters (one fails twice, then
succeeds), and shows jobs, runs and nodes while they work. At the end, it reads the database and
states how many ticks ran, how many ran twice (zero, however many nodes), and how every one-time
job ended. Its exit code is 0 only if that is all as expected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pg_scheduler import embedded, migrations
from pg_scheduler.config import RetryBackoff, SchedulerConfig
from pg_scheduler.db.records import JobRecord, NodeRecord, RunRecord
from pg_scheduler.jobs import JobContext
from pg_scheduler.models import Models, build_models
from pg_scheduler.naming import Names
from pg_scheduler.scheduler import Scheduler
from pg_scheduler.states import TERMINAL_STATUSES, JobStatus, RunStatus

from .base import plural
from .views import attempts_text, jobs_table, nodes_table, runs_table, status_text, when

NAMES = Names(prefix="demo_")
TICK = "tick"
NODE_NAME_ENV = "PG_SCHEDULER_DEMO_NODE"
PARENT_PID_ENV = "PG_SCHEDULER_DEMO_PARENT"
#: How long the demo waits, after --duration, for one-time jobs that are still running.
FINISH_GRACE = 30.0
NODE_START_TIMEOUT = 60.0
NODE_STOP_TIMEOUT = 20.0
LIVE_WITHIN = dt.timedelta(seconds=5)

_SECOND = dt.timedelta(seconds=1)


# ---------------------------------------------------------------------------------------- the app
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
    """One demo node: the factory that ``pg-scheduler worker pg_scheduler.demo:node`` runs."""
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


# ---------------------------------------------------------------------------------------- the plan
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


# ---------------------------------------------------------------------------------------- database
@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What the live view shows, read in one transaction."""

    now: dt.datetime
    jobs: list[JobRecord]
    runs: list[RunRecord]
    nodes: list[NodeRecord]
    ticks: int
    duplicates: int

    def unfinished(self, keys: Sequence[str]) -> int:
        done = {j.key for j in self.jobs if j.status in TERMINAL_STATUSES}
        return sum(1 for key in keys if key not in done)

    def live_nodes(self) -> int:
        return sum(
            1
            for n in self.nodes
            if n.stopped_at is None and n.last_seen_at > self.now - LIVE_WITHIN
        )


class Reader:
    """The demo's queries: every number it prints comes from here, i.e. from the database."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.models: Models = build_models(NAMES)

    def snapshot(self, recent: int = 8) -> Snapshot:
        runs = self.models.runs
        with self.scheduler.transaction() as repo:
            session = repo.session
            recent_runs = session.execute(
                sa.select(runs).order_by(runs.c.id.desc()).limit(recent)
            ).mappings()
            return Snapshot(
                now=repo.now(),
                jobs=repo.list_jobs(limit=50),
                runs=[RunRecord.from_row(row) for row in recent_runs],
                nodes=repo.list_nodes(),
                ticks=self._scalar(session, self.ticks_run()),
                duplicates=self._scalar(session, self.duplicate_ticks()),
            )

    @staticmethod
    def _scalar(session: Any, stmt: sa.Select[Any]) -> int:
        return int(session.execute(stmt).scalar_one() or 0)

    def ticks_run(self) -> sa.Select[Any]:
        r = self.models.runs.c
        return sa.select(sa.func.count(sa.distinct(r.scheduled_at))).where(
            r.job_key == TICK, r.status == RunStatus.COMPLETED.value
        )

    def duplicate_ticks(self) -> sa.Select[Any]:
        """Ticks (of any job) that completed more than once.

        A tick is (job_key, scheduled_at). A failed attempt followed by a successful retry is one
        tick with two runs, and correct; two *completed* runs of one tick is a tick that ran twice.
        """
        r = self.models.runs.c
        completed = sa.func.count().filter(r.status == RunStatus.COMPLETED.value)
        twice = (
            sa.select(r.job_key, r.scheduled_at)
            .group_by(r.job_key, r.scheduled_at)
            .having(completed > 1)
            .subquery()
        )
        return sa.select(sa.func.count()).select_from(twice)

    def overlapping_runs(self) -> sa.Select[Any]:
        """Pairs of runs of one job that were running at the same time (never allowed)."""
        runs = self.models.runs
        a, b = runs.alias("a"), runs.alias("b")
        a_end = sa.func.coalesce(a.c.finished_at, sa.func.now())
        b_end = sa.func.coalesce(b.c.finished_at, sa.func.now())
        return sa.select(sa.func.count()).where(
            a.c.job_key == b.c.job_key,
            a.c.id < b.c.id,
            a.c.started_at < b_end,
            b.c.started_at < a_end,
        )

    def ticks_by_node(self) -> list[tuple[str, int, dt.datetime, dt.datetime]]:
        r = self.models.runs.c
        stmt = (
            sa.select(
                r.node_id,
                sa.func.count(),
                sa.func.min(r.scheduled_at),
                sa.func.max(r.scheduled_at),
            )
            .where(r.job_key == TICK, r.status == RunStatus.COMPLETED.value)
            .group_by(r.node_id)
            .order_by(r.node_id)
        )
        with self.scheduler.transaction() as repo:
            return [tuple(row) for row in repo.session.execute(stmt)]

    def count(self, stmt: sa.Select[Any]) -> int:
        with self.scheduler.transaction() as repo:
            return self._scalar(repo.session, stmt)


# ---------------------------------------------------------------------------------------- nodes
@dataclasses.dataclass
class NodeProcess:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


def start_nodes(url: str, count: int, log_dir: Path) -> list[NodeProcess]:
    """Start ``count`` ``pg-scheduler worker`` processes running ``pg_scheduler.demo:node``."""
    started = []
    for i in range(1, count + 1):
        name = f"node-{i}"
        log = log_dir / f"demo-{name}.log"
        env = {
            **os.environ,
            # The URL goes through the environment: a password on a command line shows in `ps`.
            "PG_SCHEDULER_DATABASE_URL": url,
            NODE_NAME_ENV: name,
            PARENT_PID_ENV: str(os.getpid()),
            "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, "-m", "pg_scheduler.cli", "worker", f"{__name__}:node"]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own session: the terminal's Ctrl-C reaches the demo only, which then stops the
                # nodes in order (SIGTERM, graceful shutdown) before it reads the summary.
                start_new_session=True,
            )
        started.append(NodeProcess(name, process, log))
    return started


def stop_nodes(nodes: Sequence[NodeProcess], timeout: float = NODE_STOP_TIMEOUT) -> dict[str, int]:
    """SIGTERM every node, wait for them (killing the ones that hang); their exit codes."""
    for n in nodes:
        if n.process.poll() is None:
            n.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    codes: dict[str, int] = {}
    for n in nodes:
        try:
            codes[n.name] = n.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            n.process.kill()
            codes[n.name] = n.process.wait()
    return codes


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


# ---------------------------------------------------------------------------------------- summary
@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one planned one-time job ended, from its row and its runs."""

    planned: Planned
    key: str | None
    job: JobRecord | None
    runs: tuple[RunStatus, ...]

    @property
    def expected(self) -> tuple[RunStatus, ...]:
        return (RunStatus.FAILED,) * (self.planned.attempts - 1) + (RunStatus.COMPLETED,)

    @property
    def ok(self) -> bool:
        return (
            self.job is not None
            and self.job.status is JobStatus.COMPLETED
            and self.runs == self.expected
        )


@dataclasses.dataclass(frozen=True)
class Summary:
    ticks: int
    duplicates: int
    overlapping: int
    outcomes: tuple[Outcome, ...]
    ticks_by_node: list[tuple[str, int, dt.datetime, dt.datetime]]
    node_exit_codes: dict[str, int]
    interrupted: bool

    @property
    def jobs_ok(self) -> int:
        return sum(o.ok for o in self.outcomes)

    @property
    def nodes_ok(self) -> int:
        return sum(code == 0 for code in self.node_exit_codes.values())

    @property
    def ok(self) -> bool:
        return (
            self.ticks > 0
            and self.duplicates == 0
            and self.overlapping == 0
            and self.jobs_ok == len(self.outcomes)
            and self.nodes_ok == len(self.node_exit_codes)
        )

    def verdict(self) -> str:
        word = "OK" if self.ok else "FAILED"
        note = " (interrupted)" if self.interrupted else ""
        return (
            f"demo {word}{note}: {plural(self.ticks, 'tick')} run, "
            f"{plural(self.duplicates, 'duplicate tick')}, "
            f"{plural(self.overlapping, 'overlapping run')}, {self.jobs_ok}/{len(self.outcomes)} "
            f"one-time jobs as expected, {self.nodes_ok}/{len(self.node_exit_codes)} nodes "
            "stopped cleanly"
        )


def summarize(
    reader: Reader, keys: dict[int, str], node_exit_codes: dict[str, int], *, interrupted: bool
) -> Summary:
    outcomes = []
    for i, planned in enumerate(PLAN):
        key = keys.get(i)
        job = reader.scheduler.get_job(key) if key else None
        runs = reader.scheduler.list_runs(key) if key else []
        statuses = tuple(r.status for r in sorted(runs, key=lambda r: (r.scheduled_at, r.attempt)))
        outcomes.append(Outcome(planned, key, job, statuses))
    return Summary(
        ticks=reader.count(reader.ticks_run()),
        duplicates=reader.count(reader.duplicate_ticks()),
        overlapping=reader.count(reader.overlapping_runs()),
        outcomes=tuple(outcomes),
        ticks_by_node=reader.ticks_by_node(),
        node_exit_codes=node_exit_codes,
        interrupted=interrupted,
    )


def print_summary(console: Console, summary: Summary) -> None:
    console.print(Text("\nSummary, read from the database", style="bold"))
    jobs = Table(title="one-time jobs", title_justify="left")
    jobs.add_column("job", overflow="fold")
    jobs.add_column("params", overflow="fold")
    jobs.add_column("status")
    jobs.add_column("runs (attempt by attempt)", overflow="fold")
    jobs.add_column("as expected")
    for o in summary.outcomes:
        jobs.add_row(
            o.key or f"{o.planned.name} (not enqueued)",
            Text(json.dumps(o.planned.params)),
            status_text(o.job.status) if o.job else Text("-"),
            ", ".join(s.value for s in o.runs) or "-",
            Text("yes", style="green") if o.ok else Text("NO", style="bold red"),
        )
    console.print(jobs)
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("ticks run", f"{summary.ticks} (recurring job {TICK!r}, '* * * * * *')")
    for node_id, count, first, last in summary.ticks_by_node:
        facts.add_row(
            "  by node",
            f"{node_id}: {plural(count, 'tick')}, {first:%H:%M:%S} to {last:%H:%M:%S} UTC",
        )
    facts.add_row("ticks run twice", str(summary.duplicates))
    facts.add_row("runs of one job at once", str(summary.overlapping))
    for name, code in summary.node_exit_codes.items():
        facts.add_row(f"{name} exit code", str(code))
    console.print(facts)
    console.print(
        Text(summary.verdict(), style="bold green" if summary.ok else "bold red"), soft_wrap=True
    )


# ---------------------------------------------------------------------------------------- views
def live_view(snap: Snapshot, elapsed: float, duration: float | None, wide: bool) -> Group:
    total = f" of {duration:.0f}s" if duration else " (Ctrl-C stops)"
    header = Text.assemble(
        ("pg-scheduler demo", "bold"),
        f"  {elapsed:5.1f}s{total}  ·  ticks run {snap.ticks}  ·  ",
        (f"ticks run twice {snap.duplicates}", "green" if snap.duplicates == 0 else "bold red"),
        f"  ·  live nodes {snap.live_nodes()}",
    )
    return Group(
        header,
        jobs_table(snap.jobs, "jobs", wide=wide, date=False),
        runs_table(snap.runs, "recent runs", key=True, date=False),
        nodes_table(snap.nodes, snap.now, LIVE_WITHIN, "nodes", date=False),
    )


# Below this terminal size (columns, lines) the live view is the compact one: it fits 80x24.
COMPACT_BELOW = (120, 40)


def short_key(key: str) -> str:
    """``send_email#…bd73`` for a one-time job's key (name and the key's last 4 characters)."""
    name, sep, rest = key.partition("#")
    return f"{name}#…{rest[-4:]}" if sep else key


def compact_view(snap: Snapshot, elapsed: float, duration: float | None, height: int) -> Group:
    """The live view for a small terminal: each line under 80 columns, each table cut to fit
    ``height`` lines (the jobs first, then as many recent runs as there is room for)."""
    total = f"/{duration:.0f}s" if duration else "s (Ctrl-C stops)"
    header = Text.assemble(
        ("pg-scheduler demo", "bold"),
        f"  {elapsed:.0f}{total}  ticks {snap.ticks}  ",
        (f"twice {snap.duplicates}", "green" if snap.duplicates == 0 else "bold red"),
        f"  nodes {snap.live_nodes()} live",
    )
    jobs = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("job", "status", "attempt", "next run"):
        jobs.add_column(column, no_wrap=True)
    # Lines: header 1, two tables with a title, a column header and a rule each (3 + 3), and
    # the caption 1; what is left goes to rows, jobs first.
    room = max(height - 8, 4)
    shown_jobs = snap.jobs[: max(room - 3, 1)]
    for job in shown_jobs:
        jobs.add_row(
            short_key(job.key),
            status_text(job.status),
            attempts_text(job),
            when(job.next_run, date=False),
        )
    runs = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("job", "tick", "node", "status", "ms"):
        runs.add_column(column, no_wrap=True)
    for run in snap.runs[: max(room - len(shown_jobs), 1)]:
        runs.add_row(
            short_key(run.job_key),
            when(run.scheduled_at, date=False),
            run.node_id.split(":")[0],  # host:pid:random; the name tells the nodes apart
            status_text(run.status),
            "" if run.duration_ms is None else str(run.duration_ms),
        )
    return Group(
        header,
        Text("jobs", style="bold"),
        jobs,
        Text("recent runs", style="bold"),
        runs,
        Text("times in UTC; a wider terminal shows more", style="dim"),
    )


def progress_line(snap: Snapshot, elapsed: float, keys: dict[int, str]) -> str:
    done = len(keys) - snap.unfinished(list(keys.values()))
    return (
        f"{elapsed:5.1f}s  ticks run {snap.ticks}  ticks run twice {snap.duplicates}  "
        f"one-time jobs done {done}/{len(PLAN)}  live nodes {snap.live_nodes()}"
    )


# ---------------------------------------------------------------------------------------- run
def run(
    *,
    url: str | None,
    data_dir: Path,
    duration: float | None,
    node_count: int,
    console: Console,
    stop: threading.Event,
) -> int:
    """Run the demo; returns the exit code (0: no duplicates, every job as expected)."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    server: embedded.EmbeddedPostgres | None = None
    if url is None:
        with console.status("starting the embedded PostgreSQL…"):
            server = embedded.start(data_dir)
        if stop.is_set():  # Ctrl-C while it started: stop here, as the command line asked
            server.stop()
            raise KeyboardInterrupt
        url = server.url
        console.print(f"PostgreSQL: embedded, data in {data_dir} (kept for the next run)")
    else:
        console.print(f"PostgreSQL: {sa.make_url(url).render_as_string(hide_password=True)}")
    engine = sa.create_engine(url, pool_size=2, pool_pre_ping=True)
    try:
        # Each run starts from empty tables, so the summary is about this run only.
        migrations.downgrade(engine, names=NAMES)
        migrations.upgrade(engine, names=NAMES)
        reader = Reader(Scheduler(SchedulerConfig(engine=engine, table_prefix=NAMES.prefix)))
        return Demo(reader, url, data_dir, duration, node_count, console, stop).run()
    finally:
        engine.dispose()
        if server is not None:
            server.stop()


@dataclasses.dataclass
class Demo:
    """One run of the demo cluster, from starting the nodes to the summary."""

    reader: Reader
    url: str
    data_dir: Path
    duration: float | None
    node_count: int
    console: Console
    stop: threading.Event
    keys: dict[int, str] = dataclasses.field(default_factory=dict)  # PLAN index -> job key

    def run(self) -> int:
        self.console.print(
            f"starting {plural(self.node_count, 'node')} (logs: {self.data_dir}/demo-node-N.log)"
        )
        nodes = start_nodes(self.url, self.node_count, self.data_dir)
        failure: str | None = None
        try:
            failure = self.wait_for_nodes(nodes)
            if failure is None:
                failure = self.watch(nodes)
        finally:
            codes = stop_nodes(nodes)
        if failure:
            self.console.print(Text(failure, style="bold red"), soft_wrap=True)
        summary = summarize(self.reader, self.keys, codes, interrupted=self.stop.is_set())
        print_summary(self.console, summary)
        return 0 if summary.ok and failure is None else 1

    def wait_for_nodes(self, nodes: Sequence[NodeProcess]) -> str | None:
        deadline = time.monotonic() + NODE_START_TIMEOUT
        while not self.stop.is_set():
            if (dead := exited(nodes)) is not None:
                return dead
            if self.reader.snapshot(recent=0).live_nodes() >= self.node_count:
                return None
            if time.monotonic() > deadline:
                return (
                    f"the nodes did not start within {NODE_START_TIMEOUT:.0f}s: see {nodes[0].log}"
                )
            self.stop.wait(0.2)
        return None

    def enqueue_due(self, elapsed: float) -> None:
        for i, planned in enumerate(PLAN):
            if i not in self.keys and elapsed >= planned.delay:
                self.keys[i] = self.reader.scheduler.enqueue(
                    planned.name, planned.params, retries=planned.retries
                )

    def watch(self, nodes: Sequence[NodeProcess]) -> str | None:
        """Enqueue the plan, show the cluster at work, and return when it is time to stop:
        after --duration once every one-time job has finished (or FINISH_GRACE later), on
        Ctrl-C/SIGTERM, or when a node dies (the returned reason)."""
        console = self.console
        started = time.monotonic()
        deadline = started + self.duration if self.duration is not None else None
        finish_by: float | None = None
        last_line = float("-inf")
        live = Live(console=console, auto_refresh=False) if console.is_terminal else None
        with live if live is not None else contextlib.nullcontext():
            while not self.stop.is_set():
                elapsed = time.monotonic() - started
                self.enqueue_due(elapsed)
                snap = self.reader.snapshot()
                if live is not None:
                    view = (
                        live_view(snap, elapsed, self.duration, console.width >= 150)
                        if console.width >= COMPACT_BELOW[0] and console.height >= COMPACT_BELOW[1]
                        else compact_view(snap, elapsed, self.duration, console.height)
                    )
                    live.update(view, refresh=True)
                elif elapsed - last_line >= 2.0:  # CI logs: a plain line now and then
                    console.print(progress_line(snap, elapsed, self.keys), soft_wrap=True)
                    last_line = elapsed
                if (dead := exited(nodes)) is not None:
                    return dead
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    unfinished = snap.unfinished(list(self.keys.values()))
                    if len(self.keys) == len(PLAN) and unfinished == 0:
                        return None
                    if finish_by is None:
                        finish_by = now + FINISH_GRACE
                        console.print(
                            f"waiting up to {FINISH_GRACE:.0f}s for the one-time jobs to finish"
                        )
                    elif now >= finish_by:
                        return f"one-time jobs unfinished {FINISH_GRACE:.0f}s after --duration"
                self.stop.wait(0.5)
        return None


def exited(nodes: Sequence[NodeProcess]) -> str | None:
    """Why the demo must stop early, if a node process has exited."""
    for n in nodes:
        if n.process.poll() is not None:
            return f"{n.name} exited with code {n.process.returncode}: {log_tail(n.log)}"
    return None
