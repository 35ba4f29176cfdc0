"""Run every peer scenario against one embedded PostgreSQL and print a table.

    python -m benchmarks.peers.try_peers            # small sizes, a few minutes
    python -m benchmarks.peers.try_peers --full     # the default (published) sizes
    python -m benchmarks.peers.try_peers --peers chancy --json results.json

Run it from the repository root.  Running the file directly also works: it removes its
own directory from ``sys.path`` first, because the peer modules are named after the
libraries they import (``benchmarks/peers/chancy.py`` would shadow ``chancy``).
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(_HERE.parent.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.library import Library  # noqa: E402
from benchmarks.peers import PEER_NAMES, _harness, load_peers  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    bulk: int
    one_by_one: int
    drain: int
    wake_samples: int
    wake_delayed_samples: int
    cron_seconds: int
    idle_seconds: float


SMALL = Sizes(
    bulk=2000,
    one_by_one=300,
    drain=2000,
    wake_samples=10,
    wake_delayed_samples=3,
    cron_seconds=5,
    idle_seconds=5,
)
FULL = Sizes(
    bulk=20000,
    one_by_one=2000,
    drain=20000,
    wake_samples=50,
    wake_delayed_samples=50,
    cron_seconds=10,
    idle_seconds=10,
)


def scenarios(sizes: Sizes) -> list[tuple[str, Callable[[Library, str], Any]]]:
    """(label, call) pairs, in the order they are run and printed."""
    return [
        ("enqueue_bulk jobs/s", lambda m, dsn: m.enqueue_bulk(dsn, n=sizes.bulk)),
        (
            "enqueue_one_by_one jobs/s",
            lambda m, dsn: m.enqueue_one_by_one(dsn, n=sizes.one_by_one),
        ),
        (
            "drain c=32 p=1 jobs/s",
            lambda m, dsn: m.drain(dsn, n=sizes.drain, concurrency=32, processes=1),
        ),
        (
            "drain c=32 p=2 jobs/s",
            lambda m, dsn: m.drain(dsn, n=sizes.drain, concurrency=32, processes=2),
        ),
        (
            "wakeup due-now",
            lambda m, dsn: m.wakeup_latency(dsn, samples=sizes.wake_samples, delay_s=0.0),
        ),
        (
            "wakeup due-in-1s",
            lambda m, dsn: m.wakeup_latency(dsn, samples=sizes.wake_delayed_samples, delay_s=1.0),
        ),
        (
            "cron 1/s, 2 nodes",
            lambda m, dsn: m.cron_lateness(dsn, seconds=sizes.cron_seconds, nodes=2),
        ),
        (
            "idle statements/s",
            lambda m, dsn: m.idle_statements_per_second(dsn, seconds=sizes.idle_seconds),
        ),
    ]


def format_result(value: Any) -> str:
    if isinstance(value, str):  # an error or a skip
        return value
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
    if isinstance(value, list):
        if not value:
            return "no samples"
        return f"med {statistics.median(value) * 1000:,.1f} ms / max {max(value) * 1000:,.0f}"
    if isinstance(value, dict):
        lateness = value["lateness"]
        late = f"med {statistics.median(lateness) * 1000:,.0f} ms" if lateness else "no runs"
        return f"{late}, dup {value['duplicates']}, missed {value['missed']}/{value['ticks']}"
    return str(value)


def print_table(peers: list[str], rows: dict[str, dict[str, Any]]) -> None:
    labels = list(rows)
    cells = {label: [format_result(rows[label].get(peer, "-")) for peer in peers] for label in rows}
    first = max(len("scenario"), *(len(label) for label in labels))
    widths = [
        max(len(peer), *(len(cells[label][i]) for label in labels)) for i, peer in enumerate(peers)
    ]
    header = "  ".join(
        ["scenario".ljust(first), *(p.ljust(w) for p, w in zip(peers, widths, strict=True))]
    )
    print(header)
    print("-" * len(header))
    for label in labels:
        values = (c.ljust(w) for c, w in zip(cells[label], widths, strict=True))
        print("  ".join([label.ljust(first), *values]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="use the published sizes")
    parser.add_argument("--peers", nargs="*", default=list(PEER_NAMES), choices=PEER_NAMES)
    parser.add_argument("--only", nargs="*", help="run only scenarios whose label contains this")
    parser.add_argument("--json", type=Path, help="also write raw results to this file")
    args = parser.parse_args(argv)

    sizes = FULL if args.full else SMALL
    available, skipped = load_peers(args.peers)
    for name, reason in skipped.items():
        print(f"skipping {name}: {reason}", file=sys.stderr)

    plan = scenarios(sizes)
    if args.only:
        plan = [(label, call) for label, call in plan if any(s in label for s in args.only)]
    rows: dict[str, dict[str, Any]] = {label: {} for label, _ in plan}
    for name in skipped:
        for by_peer in rows.values():
            by_peer[name] = "skipped"

    # Other work on the machine skews every figure; record how busy it was.
    load_before = os.getloadavg()
    started = time.monotonic()
    with _harness.embedded_postgres_dsn() as dsn:
        method = _harness.statement_count_method(dsn)
        for name, module in available.items():
            for label, call in plan:
                began = time.monotonic()
                try:
                    rows[label][name] = call(module.LIBRARY, dsn)
                except Exception as exc:  # one failing scenario must not hide the others
                    traceback.print_exc()
                    rows[label][name] = f"error: {type(exc).__name__}"
                took = time.monotonic() - began
                print(
                    f"[{name}] {label}: {format_result(rows[label][name])} ({took:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )

    print()
    load_after = os.getloadavg()
    print(f"sizes: {sizes}")
    print(
        f"cpus: {os.cpu_count()}, load average (1/5/15 min) before: "
        f"{'/'.join(f'{x:.1f}' for x in load_before)}, after: "
        f"{'/'.join(f'{x:.1f}' for x in load_after)}"
    )
    print(f"idle statements counted with: {method}")
    print_table(list(args.peers), rows)
    for label, by_peer in rows.items():
        for name, value in by_peer.items():
            if isinstance(value, dict) and value.get("note"):
                print(f"note [{name}] {label}: {value['note']}")
    print(f"total {time.monotonic() - started:.0f} s")
    if args.json:
        payload = {
            "sizes": sizes.__dict__,
            "idle_method": method,
            "load_before": load_before,
            "load_after": load_after,
            "results": rows,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
