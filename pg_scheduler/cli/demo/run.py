"""``pg-scheduler demo``'s run: the database, the node processes, the live view and the summary."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.live import Live
from rich.text import Text

from pg_scheduler import embedded, migrations
from pg_scheduler.cli.base import plural
from pg_scheduler.config import SchedulerConfig
from pg_scheduler.scheduler import Scheduler

from .app import NAMES, PLAN
from .nodes import NodeProcess, exited, start_nodes, stop_nodes
from .reader import Reader
from .screen import COMPACT_BELOW, compact_view, live_view, progress_line
from .summary import print_summary, summarize

#: How long the demo waits, after --duration, for one-time jobs that are still running.
FINISH_GRACE = 30.0
NODE_START_TIMEOUT = 60.0


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
