"""How the CLI and the demo show jobs, runs and nodes: rich tables for people, JSON for scripts.

JSON keeps the record's field names (``JobRecord``, ``RunRecord``, ``NodeRecord``) as keys:
timestamps are ISO 8601 with their UTC offset, durations are seconds, UUIDs are strings.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import uuid
from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from pg_scheduler import JobRecord, NodeRecord, RunRecord

STATUS_STYLE = {
    "pending": "yellow",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
    "skipped": "dim",
    "lost": "red",
    "released": "yellow",
    "live": "green",
    "silent": "red",
    "stopped": "dim",
}


# ---------------------------------------------------------------------------------------- JSON
def plain(value: Any) -> Any:
    """``value`` as JSON data: ISO 8601 timestamps, seconds for durations, strings for UUIDs."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def to_json(value: Any) -> str:
    return json.dumps(plain(value), indent=2, ensure_ascii=False)


# ---------------------------------------------------------------------------------------- cells
def when(value: dt.datetime | None, *, date: bool = True) -> str:
    """A timestamp for people: UTC, to the second."""
    if value is None:
        return "-"
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")


def error_line(error: str | None, width: int = 60) -> str:
    """The first line of a stored error (``Type: message``), cut to ``width``."""
    if not error:
        return ""
    line = error.strip().splitlines()[0]
    return line if len(line) <= width else f"{line[: width - 1]}…"


def status_text(status: enum.Enum | str) -> Text:
    value = str(status.value if isinstance(status, enum.Enum) else status)
    return Text(value, style=STATUS_STYLE.get(value, ""))


def node_state(node: NodeRecord, now: dt.datetime, within: dt.timedelta) -> str:
    """``live``, ``stopped`` (shut down cleanly) or ``silent`` (not seen within ``within``)."""
    if node.stopped_at is not None:
        return "stopped"
    return "live" if node.last_seen_at > now - within else "silent"


# ---------------------------------------------------------------------------------------- tables
#: What ``max_retries`` NULL means: the enqueue left it to the handler of the node that runs it.
HANDLERS = "handler's"


def attempts_text(job: JobRecord) -> str:
    """``attempt/attempts allowed``; the allowed attempts read ``handler's`` until a node with the
    job's handler has claimed it (its enqueue left ``retries`` unsaid)."""
    allowed = HANDLERS if job.max_retries is None else str(job.max_retries + 1)
    return f"{job.attempt}/{allowed}"


def jobs_table(
    jobs: Sequence[JobRecord], title: str | None = None, *, wide: bool = True, date: bool = True
) -> Table:
    """Jobs, one per row; ``wide=False`` leaves out the last-run and node columns."""
    table = Table(title=title, title_justify="left", caption="times in UTC", caption_justify="left")
    table.add_column("key", overflow="fold", min_width=12)
    table.add_column("schedule", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("attempt", justify="right")
    table.add_column("next run", no_wrap=True)
    if wide:
        table.add_column("last run", no_wrap=True)
        table.add_column("node", overflow="fold")
    table.add_column("last error", no_wrap=True, overflow="ellipsis", max_width=60 if wide else 30)
    for job in jobs:
        cells: list[Any] = [
            job.key,
            job.cron or "once",
            status_text(job.status),
            attempts_text(job),
            when(job.next_run, date=date),
        ]
        if wide:
            cells += [when(job.last_run_at, date=date), job.node_id or ""]
        cells.append(error_line(job.last_error))
        table.add_row(*cells)
    return table


def job_fields(job: JobRecord) -> Table:
    """Every field of one job, as a two-column grid (the error is shown apart, in full)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for name, value in plain(job).items():
        if name == "last_error":
            continue
        if name == "status":
            grid.add_row(name, status_text(job.status))
        elif name == "params":
            grid.add_row(name, json.dumps(value, ensure_ascii=False))
        elif name == "max_retries" and value is None:
            grid.add_row(name, HANDLERS)
        else:
            grid.add_row(name, "-" if value is None else str(value))
    return grid


def runs_table(
    runs: Sequence[RunRecord], title: str | None = None, *, key: bool = False, date: bool = True
) -> Table:
    """Runs (attempts), one per row; ``key=True`` adds the job key column."""
    table = Table(title=title, title_justify="left", caption="times in UTC", caption_justify="left")
    table.add_column("run", justify="right")
    if key:
        table.add_column("job", overflow="fold")
    table.add_column("tick", no_wrap=True)
    table.add_column("attempt", justify="right")
    table.add_column("node", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("started", no_wrap=True)
    table.add_column("ms", justify="right")
    table.add_column("error", no_wrap=True, overflow="ellipsis", max_width=50)
    for run in runs:
        cells: list[Any] = [str(run.id)]
        if key:
            cells.append(run.job_key)
        cells += [
            when(run.scheduled_at, date=date),
            str(run.attempt),
            run.node_id,
            status_text(run.status),
            when(run.started_at, date=date),
            "" if run.duration_ms is None else str(run.duration_ms),
            error_line(run.error, 50),
        ]
        table.add_row(*cells)
    return table


def nodes_table(
    nodes: Sequence[NodeRecord],
    now: dt.datetime,
    within: dt.timedelta,
    title: str | None = None,
    *,
    date: bool = True,
) -> Table:
    """Nodes, one per row, with their state and the job names they registered."""
    table = Table(title=title, title_justify="left", caption="times in UTC", caption_justify="left")
    table.add_column("node", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("pid", justify="right")
    table.add_column("jobs registered", overflow="fold")
    table.add_column("started", no_wrap=True)
    table.add_column("last seen", no_wrap=True)
    for node in nodes:
        table.add_row(
            node.node_id,
            status_text(node_state(node, now, within)),
            str(node.pid),
            ", ".join(sorted(node.job_names)),
            when(node.started_at, date=date),
            when(node.last_seen_at, date=date),
        )
    return table
