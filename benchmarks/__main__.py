"""Benchmark pg_scheduler against pgqueuer, procrastinate and chancy, in one run.

    python -m benchmarks                         # full sizes, every installed library
    python -m benchmarks --quick --only ours     # CI-sized, pg_scheduler alone (< 1 min)
    python -m benchmarks --url postgresql://... --json results.json --markdown RESULTS.md
    python -m benchmarks --scenarios drain_c32 drain_c32_stale --rounds 3 --sweep
    python -m benchmarks --only ours pgqueuer --scenarios async_enqueue async_drain_c32 --rounds 3

Every drain runs twice: with fresh planner statistics (ANALYZE after the fill) and with stale
ones (``_stale``: no ANALYZE, autovacuum off on the scenario's tables; see
``benchmarks.peers._harness.STATS_MODES``). Each peer drains with its best settings for the
concurrency: those recorded in its module (``BEST``), or with ``--sweep`` the best of a short
drain with each of its candidate settings (``tuning_candidates``), measured in the same run.

The ``async_*`` scenarios measure each library as an asyncio application uses it: pg_scheduler's
``AsyncScheduler`` (psycopg 3 async; the ``_asyncpg`` rows: asyncpg) against pgqueuer, which is
asyncio-native and runs exactly as in its other scenarios (its best settings, ``Queries.enqueue``).

Starts its own embedded PostgreSQL 18 (with pg_stat_statements) unless ``--url`` is given; each
scenario then works in a database of its own, created and dropped around it. Scenarios run one
at a time, and within a scenario each library in turn, so slow drift in machine load touches every
library alike. Run it from the repository root, with the ``bench`` extra installed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import measures, ours, report
from benchmarks.library import Library
from benchmarks.peers import PEER_NAMES, _harness, load_peers

LIBRARIES = (report.OURS, *PEER_NAMES)


@dataclass(frozen=True)
class Sizes:
    bulk: int
    one_by_one: int
    drain: int
    drain_concurrency_1: int
    wake_samples: int
    wake_delayed_samples: int
    cron_seconds: int
    idle_seconds: float
    statements_jobs: int
    rss_jobs: int
    rss_warmup: int
    claim_rows: int
    claim_samples: int
    sweep_drain: int


FULL = Sizes(
    bulk=20_000,
    one_by_one=2_000,
    drain=20_000,
    drain_concurrency_1=20_000,
    wake_samples=50,
    wake_delayed_samples=20,
    cron_seconds=30,
    idle_seconds=30,
    statements_jobs=5_000,
    rss_jobs=100_000,
    rss_warmup=10_000,
    claim_rows=1_000_000,
    claim_samples=200,
    sweep_drain=10_000,
)
QUICK = Sizes(
    bulk=2_000,
    one_by_one=100,
    drain=500,
    drain_concurrency_1=50,
    wake_samples=5,
    wake_delayed_samples=2,
    cron_seconds=3,
    idle_seconds=2,
    statements_jobs=300,
    rss_jobs=1_500,
    rss_warmup=500,
    claim_rows=10_000,
    claim_samples=20,
    sweep_drain=300,
)

Call = Callable[[Library, str, Sizes], Any]


#: Each library's settings for a drain at a concurrency: ``(library, concurrency) -> settings``,
#: filled by ``tune`` before the first drain at that concurrency.
TUNED: dict[tuple[str, int], dict[str, Any]] = {}
#: (concurrency, processes, stats) of each drain scenario.
DRAINS: dict[str, tuple[int, int, str]] = {}
#: The libraries the async scenarios compare (issue 19's targets are against pgqueuer).
ASYNC_LIBRARIES = (report.OURS, "pgqueuer")


def from_asyncio(library: Library) -> Library:
    """The library as an asyncio application uses it (``Library.asyncio_library``)."""
    if library.asyncio_library is None:
        raise ValueError(f"{library.name}: no asyncio use to measure")
    return library.asyncio_library


def _drain(
    key: str,
    concurrency: int,
    processes: int,
    stats: str = "fresh",
    *,
    use: Callable[[Library], Library] = lambda library: library,
) -> Call:
    """A drain scenario; ``use`` picks which of the library's uses drains (``from_asyncio``)."""
    DRAINS[key] = (concurrency, processes, stats)

    def call(library: Library, dsn: str, sizes: Sizes) -> Any:
        n = sizes.drain_concurrency_1 if concurrency == 1 else sizes.drain
        return use(library).drain(
            dsn,
            n=n,
            concurrency=concurrency,
            processes=processes,
            stats=stats,
            tuning=TUNED.get((library.name, concurrency)),
        )

    return call


def tune(
    modules: dict[str, Library], dsn: str, concurrency: int, sizes: Sizes, *, sweep: bool
) -> dict[str, Any]:
    """Settle each library's settings for drains at ``concurrency``: the recorded best, or with
    ``sweep`` the fastest of one short drain (fresh statistics) per candidate. Returns what was
    measured, for the report."""
    measured: dict[str, Any] = {}
    for lib, library in modules.items():
        if (lib, concurrency) in TUNED:
            continue
        candidates = library.tuning_candidates(concurrency)
        if not sweep or len(candidates) < 2:
            TUNED[lib, concurrency] = library.best(concurrency)
            continue
        rates: list[tuple[float, dict[str, Any]]] = []
        for settings in candidates:
            began = time.monotonic()
            try:
                rate = library.drain(
                    dsn, n=sizes.sweep_drain, concurrency=concurrency, tuning=settings
                )
            except Exception as exc:
                print(f"[sweep c={concurrency}] {lib} {settings}: {exc}", file=sys.stderr)
                continue
            rates.append((rate, settings))
            print(
                f"[sweep c={concurrency}] {lib} {settings}: {rate:,.0f} jobs/s"
                f" ({time.monotonic() - began:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
        if rates:
            TUNED[lib, concurrency] = max(rates, key=lambda item: item[0])[1]
            measured[lib] = [{"settings": settings, "jobs_per_s": rate} for rate, settings in rates]
        else:
            TUNED[lib, concurrency] = library.best(concurrency)
    return measured


#: (scenario key, libraries it applies to (None: all), call). Run in this order.
SCENARIOS: list[tuple[str, tuple[str, ...] | None, Call]] = [
    ("enqueue_bulk", None, lambda m, dsn, s: m.enqueue_bulk(dsn, n=s.bulk)),
    ("enqueue_one_by_one", None, lambda m, dsn, s: m.enqueue_one_by_one(dsn, n=s.one_by_one)),
    ("drain_c1", None, _drain("drain_c1", 1, 1)),
    ("drain_c1_stale", None, _drain("drain_c1_stale", 1, 1, "stale")),
    ("drain_c8", None, _drain("drain_c8", 8, 1)),
    ("drain_c32", None, _drain("drain_c32", 32, 1)),
    ("drain_c32_stale", None, _drain("drain_c32_stale", 32, 1, "stale")),
    ("drain_c32_p2", None, _drain("drain_c32_p2", 32, 2)),
    ("drain_c32_p4", None, _drain("drain_c32_p4", 32, 4)),
    ("wakeup_now", None, lambda m, dsn, s: m.wakeup_latency(dsn, s.wake_samples, 0.0)),
    ("wakeup_1s", None, lambda m, dsn, s: m.wakeup_latency(dsn, s.wake_delayed_samples, 1.0)),
    ("cron", None, lambda m, dsn, s: m.cron_lateness(dsn, seconds=s.cron_seconds, nodes=2)),
    ("idle", None, lambda m, dsn, s: m.idle_statements_per_second(dsn, s.idle_seconds)),
    (
        "statements",
        None,
        lambda m, dsn, s: measures.statements_per_job(m.adapter, dsn, n=s.statements_jobs),
    ),
    (
        "rss",
        None,
        lambda m, dsn, s: measures.rss(m.adapter, dsn, jobs=s.rss_jobs, warmup=s.rss_warmup),
    ),
    (
        "claim",
        (report.OURS,),
        lambda m, dsn, s: ours.claim_latency(dsn, rows=s.claim_rows, samples=s.claim_samples),
    ),
    (
        "async_enqueue",
        ASYNC_LIBRARIES,
        lambda m, dsn, s: from_asyncio(m).enqueue_one_by_one(dsn, n=s.one_by_one),
    ),
    ("async_drain_c32", ASYNC_LIBRARIES, _drain("async_drain_c32", 32, 1, use=from_asyncio)),
    (
        "async_enqueue_asyncpg",
        (report.OURS,),
        lambda m, dsn, s: ours.ASYNCPG_LIBRARY.enqueue_one_by_one(dsn, n=s.one_by_one),
    ),
    (
        "async_drain_c32_asyncpg",
        (report.OURS,),
        _drain("async_drain_c32_asyncpg", 32, 1, use=lambda _: ours.ASYNCPG_LIBRARY),
    ),
]
SCENARIO_KEYS = tuple(key for key, _, _ in SCENARIOS)
#: The scenarios with a ratio target, which ``--rounds`` repeats. Each round runs every library
#: once, in turn, so a machine that slows down for a while (a shared VM does) weighs on every
#: library alike; the table shows each library's median round.
ROUNDED = (
    "enqueue_bulk",
    "enqueue_one_by_one",
    "drain_c32",
    "drain_c32_stale",
    "async_enqueue",
    "async_drain_c32",
)
#: What ``--quick`` runs unless ``--scenarios`` says otherwise: one of each kind of figure.
QUICK_SCENARIOS = (
    "enqueue_bulk",
    "enqueue_one_by_one",
    "drain_c32",
    "drain_c32_stale",
    "drain_c32_p2",
    "wakeup_now",
    "cron",
    "statements",
    "rss",
    "claim",
    "async_enqueue",
    "async_drain_c32",
)


@contextlib.contextmanager
def database(url: str | None) -> Iterator[str]:
    if url:
        yield ours.libpq_dsn(url)
    else:
        with _harness.embedded_postgres_dsn() as dsn:
            yield dsn


def machine(dsn: str) -> dict[str, Any]:
    with _harness.admin_connection(dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    versions = {}
    for dist in ("sqlalchemy-pg-scheduler", "sqlalchemy", "psycopg", *PEER_NAMES):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return {
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": row[0] if row else None,
        "versions": versions,
    }


def summarize(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, list):
        return _harness.describe_latencies(value)
    if isinstance(value, dict):
        if "lateness" in value:
            late = _harness.describe_latencies(value["lateness"])
            return f"{late}; duplicates {value['duplicates']}, missed {value['missed']}"
        shown = {k: v for k, v in value.items() if not isinstance(v, list)}
        return ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()
        )
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a CI smoke run)")
    parser.add_argument("--url", help="use this PostgreSQL (libpq DSN or SQLAlchemy URL)")
    parser.add_argument("--only", nargs="+", choices=LIBRARIES, help="libraries to run")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIO_KEYS, help="scenarios to run")
    parser.add_argument(
        "--skip", nargs="+", choices=SCENARIO_KEYS, default=[], help="scenarios to skip"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run each scenario with a ratio target this many times, libraries taking turns;"
        " report the median (default 1)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="before the drains at a concurrency, run a short drain with each of every peer's"
        " candidate settings and use the fastest (default: the settings recorded in the peer's"
        " module as its best)",
    )
    parser.add_argument("--json", type=Path, help="write every figure and raw sample here")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown here")
    parser.add_argument(
        "--from-json", type=Path, help="run nothing: print (and --markdown) a saved run's table"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        return rerender(args.from_json, args.markdown)

    sizes = QUICK if args.quick else FULL
    wanted = list(args.only or LIBRARIES)
    peers, skipped = load_peers([lib for lib in wanted if lib != report.OURS])
    modules: dict[str, Library] = {}
    if report.OURS in wanted:
        modules[report.OURS] = ours.LIBRARY
    modules.update({name: module.LIBRARY for name, module in peers.items()})
    for name, reason in skipped.items():
        print(f"skipping {name}: {reason}", file=sys.stderr)
    libraries = list(modules)
    chosen = args.scenarios or (QUICK_SCENARIOS if args.quick else SCENARIO_KEYS)
    plan = [
        (key, applies, call)
        for key, applies, call in SCENARIOS
        if key in chosen and key not in args.skip
    ]

    command = " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])])
    load_start = os.getloadavg()
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {key: {} for key, _, _ in plan}
    samples: dict[str, dict[str, list[float]]] = {}  # every round's figure, by scenario and library
    sweeps: dict[str, dict[str, Any]] = {}  # by concurrency and library: each setting's jobs/s
    with database(args.url) as dsn:
        info = machine(dsn)
        idle_method = _harness.statement_count_method(dsn)
        for key, applies, call in plan:
            if key in DRAINS:
                concurrency = DRAINS[key][0]
                applicable = {
                    lib: library
                    for lib, library in modules.items()
                    if applies is None or lib in applies
                }
                swept = tune(applicable, dsn, concurrency, sizes, sweep=args.sweep)
                if swept:
                    sweeps[str(concurrency)] = swept
            rounds = max(1, args.rounds) if key in ROUNDED else 1
            for round_ in range(rounds):
                # Every other round in reverse order: none always runs first, or last.
                turn = list(modules.items())
                for lib, library in turn[::-1] if round_ % 2 else turn:
                    if applies is not None and lib not in applies:
                        continue
                    if round_ and not isinstance(results[key].get(lib), float):
                        continue  # it failed: once is enough
                    began = time.monotonic()
                    try:
                        value = call(library, dsn, sizes)
                    except Exception as exc:  # one failing scenario must not hide the others
                        traceback.print_exc()
                        value = f"error: {type(exc).__name__}: {exc}"[:300]
                    took = time.monotonic() - began
                    if key in ROUNDED and isinstance(value, float):
                        samples.setdefault(key, {}).setdefault(lib, []).append(value)
                        value = statistics.median(samples[key][lib])
                    results[key][lib] = value
                    shown = samples.get(key, {}).get(lib, [])
                    print(
                        f"[{key}] {lib}: {summarize(shown[-1] if shown else value)} "
                        f"({took:.1f} s)"
                        + (f", round {round_ + 1}/{rounds}" if rounds > 1 else ""),
                        file=sys.stderr,
                        flush=True,
                    )
    load_end = os.getloadavg()
    elapsed = time.monotonic() - started

    rows = report.build_rows(results, libraries)
    info.update(
        loadavg_start=[round(x, 2) for x in load_start],
        loadavg_end=[round(x, 2) for x in load_end],
        idle_statements_counted_with=idle_method,
        seconds=round(elapsed, 1),
        tuning=tuning_report(modules, sweeps, swept=args.sweep),
    )
    title = (
        f"{command}\n{info['nproc']} cores, load {load_start[0]:.2f} → {load_end[0]:.2f} "
        f"(1-min avg), PostgreSQL {info['postgresql']}, {elapsed:.0f} s"
    )
    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 200).print(report.render(rows, libraries, title))
    for line in info["tuning"]:
        print(line)
    for key, by_lib in results.items():
        for lib, value in by_lib.items():
            if isinstance(value, dict) and value.get("note"):
                print(f"note [{lib}] {key}: {value['note']}")
    if args.json:
        payload = {
            "command": command,
            "machine": info,
            "sizes": asdict(sizes),
            "libraries": libraries,
            "skipped": skipped,
            "rows": report.as_json(rows),
            "results": results,
            "rounds": samples,
            "sweeps": sweeps,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    if args.markdown:
        args.markdown.write_text(markdown_page(command, info, rows, libraries))
    return 0


def tuning_report(
    modules: dict[str, Library], sweeps: dict[str, dict[str, Any]], *, swept: bool
) -> list[str]:
    """One line per (library, concurrency) with settings: what the drains ran with and, after a
    sweep, what each candidate drained."""
    lines = []
    for (lib, concurrency), settings in sorted(TUNED.items()):
        if lib not in modules or (lib == report.OURS and not settings):
            continue
        shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "library defaults"
        tried = sweeps.get(str(concurrency), {}).get(lib)
        source = "best of this run's sweep" if swept and tried else "recorded best"
        if not settings and not tried:
            source = "no recorded best"
        line = f"- {report.DISPLAY.get(lib, lib)}, drains at c={concurrency}: {shown} ({source}"
        if tried:
            line += "; swept: " + "; ".join(
                f"{', '.join(f'{k}={v}' for k, v in t['settings'].items())}"
                f" {t['jobs_per_s']:,.0f} jobs/s"
                for t in tried
            )
        lines.append(line + ")")
    return lines


def markdown_page(
    command: str, info: dict[str, Any], rows: list[report.Row], libraries: list[str]
) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    tuning = "\n".join(info.get("tuning", []))
    return (
        f"`{command}`\n\n"
        f"Machine: {info['nproc']} cores ({info['platform']}), Python {info['python']}, "
        f"PostgreSQL {info['postgresql']}; load average (1 min) {info['loadavg_start'][0]:.2f} "
        f"at start, {info['loadavg_end'][0]:.2f} at end; {info['seconds']:.0f} s. "
        f"Versions: {versions}.\n\n"
        f"{report.markdown(rows, libraries)}\n"
        + (f"\nPeer settings:\n\n{tuning}\n" if tuning else "")
    )


def rerender(path: Path, markdown: Path | None) -> int:
    from rich.console import Console

    saved = json.loads(path.read_text())
    libraries = saved["libraries"]
    rows = report.build_rows(saved["results"], libraries)
    info = saved["machine"]
    Console(width=None if sys.stdout.isatty() else 200).print(
        report.render(rows, libraries, saved["command"])
    )
    if markdown:
        markdown.write_text(markdown_page(saved["command"], info, rows, libraries))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
