"""Turn raw scenario results into rows, ratios, target verdicts, a rich table and JSON.

Every row has one number per library. "x best peer" compares pg_scheduler with the best peer in
the same run, oriented so that above 1 means pg_scheduler is better (ours/peer for rates,
peer/ours for latencies, statement counts and memory).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

OURS = "ours"
DISPLAY = {OURS: "pg_scheduler"}


@dataclass
class Row:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    values: dict[str, float | None]
    target: str = ""
    met: bool | None = None
    best_peer: str | None = None
    ratio: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    row: str
    text: str
    check: Callable[[Row], bool | None]


def _ratio_to_best(row: Row, peers: list[str]) -> None:
    ours = row.values.get(OURS)
    candidates = [(p, v) for p in peers if (v := row.values.get(p)) is not None]
    if not candidates:
        return
    pick = max if row.higher_is_better else min
    best, value = pick(candidates, key=lambda item: item[1])
    row.best_peer = best
    if ours is None:
        return
    if row.higher_is_better:
        row.ratio = ours / value if value else None
    else:
        # A count of zero (duplicates, missed ticks) has no meaningful ratio.
        row.ratio = value / ours if ours else None


def at_least_x_best_peer(factor: float) -> Callable[[Row], bool | None]:
    def check(row: Row) -> bool | None:
        return None if row.ratio is None else row.ratio >= factor

    return check


def at_least_x_peer(peer: str, factor: float) -> Callable[[Row], bool | None]:
    """pg_scheduler at least ``factor`` times one named peer (higher is better)."""

    def check(row: Row) -> bool | None:
        ours, theirs = row.values.get(OURS), row.values.get(peer)
        return None if ours is None or not theirs else ours / theirs >= factor

    return check


def ours_at_most(limit: float) -> Callable[[Row], bool | None]:
    def check(row: Row) -> bool | None:
        value = row.values.get(OURS)
        return None if value is None else value <= limit

    return check


TARGETS = (
    Target("drain_c32", "≥ 1.5x best peer", at_least_x_best_peer(1.5)),
    Target("drain_c32_stale", "≥ 1.5x best peer", at_least_x_best_peer(1.5)),
    Target("enqueue_bulk", "≥ 1.0x best peer", at_least_x_best_peer(1.0)),
    Target("enqueue_one_by_one", "≥ 1.2x best peer", at_least_x_best_peer(1.2)),
    Target("wakeup_now_median", "≤ 5 ms", ours_at_most(5.0)),
    Target("wakeup_now_p95", "≤ 15 ms", ours_at_most(15.0)),
    Target("wakeup_1s_median", "≤ 10 ms late", ours_at_most(10.0)),
    Target("cron_median", "≤ 10 ms", ours_at_most(10.0)),
    Target("cron_p95", "≤ 30 ms", ours_at_most(30.0)),
    Target("cron_duplicates", "0", ours_at_most(0)),
    Target("cron_missed", "0", ours_at_most(0)),
    Target("idle", "≤ 2 /s", ours_at_most(2.0)),
    Target("rss_growth", "flat: ≤ 5 MB after warm-up", ours_at_most(5.0)),
    Target("claim_ratio", "≤ 2x empty table", ours_at_most(2.0)),
    # Issue 19: the AsyncScheduler against pgqueuer, both used from asyncio.
    Target("async_enqueue", "≥ 1.0x pgqueuer", at_least_x_peer("pgqueuer", 1.0)),
    Target("async_drain_c32", "≥ 1.5x pgqueuer", at_least_x_peer("pgqueuer", 1.5)),
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def build_rows(results: dict[str, dict[str, Any]], libraries: list[str]) -> list[Row]:
    """One row per figure, in print order, from ``results[scenario][library]``."""
    rows: list[Row] = []

    def add(key: str, label: str, unit: str, higher: bool, pick: Callable[[Any], Any]) -> None:
        values: dict[str, float | None] = {}
        for lib in libraries:
            raw = results.get(key.split(":", maxsplit=1)[0], {}).get(lib)
            try:
                values[lib] = _num(pick(raw)) if raw is not None and not _is_error(raw) else None
            except (KeyError, TypeError, ValueError, statistics.StatisticsError):
                values[lib] = None
        rows.append(Row(key.rsplit(":", maxsplit=1)[-1], label, unit, higher, values))

    def ms(q: float | None) -> Callable[[Any], float]:
        def pick(raw: Any) -> float:
            return 1000 * (statistics.median(raw) if q is None else percentile(raw, q))

        return pick

    add("enqueue_bulk", "enqueue, bulk", "jobs/s", True, lambda r: r)
    add("enqueue_one_by_one", "enqueue, one by one", "jobs/s", True, lambda r: r)
    for key, label in (
        ("drain_c1", "drain, concurrency 1"),
        ("drain_c1_stale", "drain, concurrency 1, stale statistics"),
        ("drain_c8", "drain, concurrency 8"),
        ("drain_c32", "drain, concurrency 32"),
        ("drain_c32_stale", "drain, concurrency 32, stale statistics"),
        ("drain_c32_p2", "drain, 2 nodes x 32"),
        ("drain_c32_p4", "drain, 4 nodes x 32"),
    ):
        add(key, label, "jobs/s", True, lambda r: r)
    add("wakeup_now:wakeup_now_median", "wake-up, due now: median", "ms", False, ms(None))
    add("wakeup_now:wakeup_now_p95", "wake-up, due now: p95", "ms", False, ms(0.95))
    add("wakeup_1s:wakeup_1s_median", "wake-up, due in 1 s: median late", "ms", False, ms(None))
    add("wakeup_1s:wakeup_1s_p95", "wake-up, due in 1 s: p95 late", "ms", False, ms(0.95))
    add(
        "cron:cron_median",
        "cron 1/s, 2 nodes: median late",
        "ms",
        False,
        lambda r: ms(None)(r["lateness"]),
    )
    add(
        "cron:cron_p95",
        "cron 1/s, 2 nodes: p95 late",
        "ms",
        False,
        lambda r: ms(0.95)(r["lateness"]),
    )
    add(
        "cron:cron_duplicates",
        "cron 1/s, 2 nodes: duplicates",
        "ticks",
        False,
        lambda r: r["duplicates"],
    )
    add("cron:cron_missed", "cron 1/s, 2 nodes: missed", "ticks", False, lambda r: r["missed"])
    add("idle", "idle node: statements", "/s", False, lambda r: r)
    add(
        "statements:statements_per_job",
        "statements per job (drain c=32)",
        "stmts",
        False,
        lambda r: r["per_job"],
    )
    add("rss:rss_idle", "node RSS, idle", "MB", False, lambda r: r["idle_mb"])
    add("rss:rss_after", "node RSS, after all jobs", "MB", False, lambda r: r["after_mb"])
    add("rss:rss_growth", "node RSS growth after warm-up", "MB", False, lambda r: r["growth_mb"])
    add(
        "claim:claim_empty",
        "claim pass, empty table: median",
        "ms",
        False,
        lambda r: 1000 * statistics.median(r["empty"]),
    )
    add(
        "claim:claim_big",
        "claim pass, big table: median",
        "ms",
        False,
        lambda r: 1000 * statistics.median(r["big"]),
    )
    add("claim:claim_ratio", "claim pass, big / empty", "x", False, lambda r: r["ratio"])
    for key, label in (
        ("async_enqueue", "async enqueue, one by one"),
        ("async_drain_c32", "async drain, concurrency 32"),
        ("async_enqueue_asyncpg", "async enqueue, one by one (asyncpg)"),
        ("async_drain_c32_asyncpg", "async drain, concurrency 32 (asyncpg)"),
    ):
        add(key, label, "jobs/s", True, lambda r: r)

    peers = [lib for lib in libraries if lib != OURS]
    by_key = {row.key: row for row in rows}
    for row in rows:
        _ratio_to_best(row, peers)
    for target in TARGETS:
        row = by_key[target.row]
        row.target = target.text
        row.met = target.check(row)
    return [row for row in rows if any(v is not None for v in row.values.values())]


def _is_error(raw: Any) -> bool:
    return isinstance(raw, str) or (isinstance(raw, dict) and "error" in raw)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("jobs/s",) or abs(value) >= 1000:
        return f"{value:,.0f}"
    if unit in ("ticks",):
        return f"{value:.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def render(rows: list[Row], libraries: list[str], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("figure")
    table.add_column("unit")
    for lib in libraries:
        table.add_column(DISPLAY.get(lib, lib), justify="right")
    table.add_column("x best peer", justify="right")
    table.add_column("target")
    table.add_column("met", justify="center")
    for row in rows:
        ratio = "—" if row.ratio is None else f"{row.ratio:.2f}x ({row.best_peer})"
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[row.met]
        table.add_row(
            row.label,
            row.unit,
            *(_fmt(row.values.get(lib), row.unit) for lib in libraries),
            ratio,
            row.target,
            met,
        )
    return table


def markdown(rows: list[Row], libraries: list[str]) -> str:
    """The same table as Markdown (for benchmarks/RESULTS.md and the README)."""
    head = ["figure", "unit", *(DISPLAY.get(lib, lib) for lib in libraries), "x best peer"]
    head += ["target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        ratio = "—" if row.ratio is None else f"{row.ratio:.2f}x ({row.best_peer})"
        met = {True: "yes", False: "**no**", None: ""}[row.met]
        cells = [row.label, row.unit, *(_fmt(row.values.get(lib), row.unit) for lib in libraries)]
        lines.append("| " + " | ".join([*cells, ratio, row.target, met]) + " |")
    return "\n".join(lines)


def as_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [asdict(row) for row in rows]
