"""What the demo shows while it runs: a live view (a compact one on a small terminal), or plain
progress lines when stdout is not a terminal."""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from pg_scheduler.cli.views import (
    attempts_text,
    jobs_table,
    nodes_table,
    runs_table,
    status_text,
    when,
)

from .app import PLAN
from .reader import LIVE_WITHIN, Snapshot


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
