"""Where a drain's time goes, stage by stage: one in-process node, each stage timed as it runs.

    python -m benchmarks.profiles.profile_passes --jobs 20000 --concurrency 32

Wraps the poller's pass, its slot gathering, the claim statement, the dispatch, each job's run
and the grouped outcome writes with timers (a few microseconds each), drains ``--jobs`` no-op
jobs, and prints medians and the share of wall time each stage took. A stage that takes much
longer than PostgreSQL spends on its statement (``profile_drain`` shows that) is waiting for a
CPU or the GIL. Starts its own embedded PostgreSQL unless ``--url``.
"""

from __future__ import annotations

import functools
import inspect
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from benchmarks import ours
from benchmarks.peers import _harness
from benchmarks.profiles.profile_drain import arguments, installed
from pg_scheduler.db import repository
from pg_scheduler.node import attempt, poller
from pg_scheduler.runtime import outcomes

# stage -> (started, ended, size) of every call
spans: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
# (dispatched, code started) of every job
starts: list[tuple[float, float]] = []


def timed(stage: str, size: Callable[[Any, tuple[Any, ...]], int] = lambda r, a: 0) -> Any:
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            result = fn(*args, **kwargs)
            spans[stage].append((began, time.perf_counter(), size(result, args)))
            return result

        @functools.wraps(fn)
        async def inner_async(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            result = await fn(*args, **kwargs)
            spans[stage].append((began, time.perf_counter(), size(result, args)))
            return result

        return inner_async if inspect.iscoroutinefunction(fn) else inner

    return wrap


def instrument() -> None:
    p, r, o = poller.Poller, repository.JobRepository, outcomes.OutcomeWriter
    p.run_once = timed("pass", lambda res, a: res.claimed)(p.run_once)  # type: ignore[method-assign]
    p._gather_slots = timed("gather slots")(p._gather_slots)  # type: ignore[method-assign]
    p._dispatch = timed("dispatch", lambda res, a: len(a[1]))(p._dispatch)  # type: ignore[method-assign]
    r.claim = timed("claim statement + rows", lambda res, a: len(res))(r.claim)  # type: ignore[method-assign]
    o._flush = timed("outcome group write", lambda res, a: len(a[1]))(o._flush)  # type: ignore[method-assign]
    run = attempt.Attempts.run

    async def _run(self: Any, running: Any, **options: Any) -> None:
        starts.append((running.started, time.perf_counter()))
        await run(self, running, **options)

    attempt.Attempts.run = _run  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    n = args.jobs
    with installed(args.url, "passes", pool_size=args.concurrency + 4) as (db, engine):
        ours.build_scheduler(engine, 1).enqueue_many(ours.NOOP, [None] * n)
        with _harness.admin_connection(db) as conn:
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")
        instrument()
        node = ours.build_scheduler(engine, args.concurrency)
        began = time.perf_counter()
        node.start()
        while len(starts) < n:
            time.sleep(0.01)
        wall = time.perf_counter() - began
        node.shutdown()
    print(f"{n} jobs, concurrency {args.concurrency}: {n / wall:,.0f} jobs/s (instrumented)")
    print(f"  {'stage':<26} {'calls':>6} {'size':>6} {'median ms':>10} {'p90 ms':>8} {'% wall':>7}")
    for stage, rows in spans.items():
        took = [end - start for start, end, _ in rows]
        size = statistics.mean(k for _, _, k in rows) if rows else 0
        p90 = statistics.quantiles(took, n=10)[-1] if len(took) > 1 else took[0]
        print(
            f"  {stage:<26} {len(rows):>6} {size:>6.1f} {statistics.median(took) * 1000:>10.2f}"
            f" {p90 * 1000:>8.2f} {sum(took) / wall * 100:>6.0f}%"
        )
    waits = [started - dispatched for dispatched, started in starts]
    print(
        f"  dispatched -> code starts: median {statistics.median(waits) * 1000:.2f} ms,"
        f" p90 {statistics.quantiles(waits, n=10)[-1] * 1000:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
