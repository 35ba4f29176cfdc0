"""The demo's verdict: how each planned one-time job ended, how many ticks ran (and ran twice),
and how the nodes stopped, read from the database at the end and printed as tables."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

from rich.console import Console
from rich.table import Table
from rich.text import Text

from pg_scheduler import JobRecord
from pg_scheduler.cli.base import plural
from pg_scheduler.cli.views import status_text
from pg_scheduler.states import JobStatus, RunStatus

from .app import PLAN, TICK, Planned
from .reader import Reader


@dataclasses.dataclass(frozen=True)
class PlannedJobResult:
    """How one planned one-time job ended, from its row and its runs."""

    planned: Planned
    key: str | None
    job: JobRecord | None
    run_statuses: tuple[RunStatus, ...]  # attempt by attempt

    @property
    def expected(self) -> tuple[RunStatus, ...]:
        return (RunStatus.FAILED,) * (self.planned.attempts - 1) + (RunStatus.COMPLETED,)

    @property
    def ok(self) -> bool:
        return (
            self.job is not None
            and self.job.status is JobStatus.COMPLETED
            and self.run_statuses == self.expected
        )


@dataclasses.dataclass(frozen=True)
class Summary:
    ticks: int
    duplicates: int
    overlapping: int
    results: tuple[PlannedJobResult, ...]
    ticks_by_node: list[tuple[str, int, dt.datetime, dt.datetime]]
    node_exit_codes: dict[str, int]
    interrupted: bool

    @property
    def jobs_ok(self) -> int:
        return sum(result.ok for result in self.results)

    @property
    def nodes_ok(self) -> int:
        return sum(code == 0 for code in self.node_exit_codes.values())

    @property
    def ok(self) -> bool:
        return (
            self.ticks > 0
            and self.duplicates == 0
            and self.overlapping == 0
            and self.jobs_ok == len(self.results)
            and self.nodes_ok == len(self.node_exit_codes)
        )

    def verdict(self) -> str:
        word = "OK" if self.ok else "FAILED"
        note = " (interrupted)" if self.interrupted else ""
        return (
            f"demo {word}{note}: {plural(self.ticks, 'tick')} run, "
            f"{plural(self.duplicates, 'duplicate tick')}, "
            f"{plural(self.overlapping, 'overlapping run')}, {self.jobs_ok}/{len(self.results)} "
            f"one-time jobs as expected, {self.nodes_ok}/{len(self.node_exit_codes)} nodes "
            "stopped cleanly"
        )


def summarize(
    reader: Reader, keys: dict[int, str], node_exit_codes: dict[str, int], *, interrupted: bool
) -> Summary:
    results = []
    for i, planned in enumerate(PLAN):
        key = keys.get(i)
        job = reader.scheduler.get_job(key) if key else None
        runs = reader.scheduler.list_runs(key) if key else []
        statuses = tuple(r.status for r in sorted(runs, key=lambda r: (r.scheduled_at, r.attempt)))
        results.append(PlannedJobResult(planned, key, job, statuses))
    return Summary(
        ticks=reader.count(reader.ticks_run()),
        duplicates=reader.count(reader.duplicate_ticks()),
        overlapping=reader.count(reader.overlapping_runs()),
        results=tuple(results),
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
    for result in summary.results:
        jobs.add_row(
            result.key or f"{result.planned.name} (not enqueued)",
            Text(json.dumps(result.planned.params)),
            status_text(result.job.status) if result.job else Text("-"),
            ", ".join(s.value for s in result.run_statuses) or "-",
            Text("yes", style="green") if result.ok else Text("NO", style="bold red"),
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
