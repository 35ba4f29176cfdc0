"""Where a due-now job's wake-up time goes, stage by stage, in one in-process node.

    python -m benchmarks.profiles.profile_wakeup --samples 50

Each sample enqueues a job while the node is idle and timestamps (``time.perf_counter``) the
enqueue's return, the listener receiving the NOTIFY, the poller's claim starting and returning,
and the job starting; prints the median of each stage. Starts its own embedded PostgreSQL unless
``--url``.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from benchmarks import ours
from benchmarks.profiles.profile_drain import arguments, installed
from pg_scheduler import JobContext
from pg_scheduler.node.poller import Poller

STAGES = ("notified", "claim_start", "claimed", "job_started")


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args(argv)
    marks: dict[str, float] = {}
    started = threading.Event()

    def probe(ctx: JobContext) -> None:
        marks.setdefault("job_started", time.perf_counter())
        started.set()

    run_once = Poller.run_once

    def timed_run_once(self: Poller) -> Any:
        marks.setdefault("claim_start", time.perf_counter())
        result = run_once(self)
        if result.claimed:
            marks.setdefault("claimed", time.perf_counter())
        return result

    Poller.run_once = timed_run_once  # type: ignore[method-assign]
    samples: list[dict[str, float]] = []
    with installed(args.url, "wakeup", pool_size=8) as (_db, engine):
        node = ours.build_scheduler(engine, 32)
        node.one_time("profile_probe")(probe)
        on_notify = node.listener.on_notify

        def timed_notify(payload: str) -> None:
            marks.setdefault("notified", time.perf_counter())
            on_notify(payload)

        node.listener.on_notify = timed_notify
        node.start()
        try:
            time.sleep(1.0)
            for _ in range(args.samples):
                marks.clear()
                started.clear()
                node.enqueue("profile_probe")
                committed = time.perf_counter()
                marks.pop("claim_start", None)  # a pass that began before the commit
                if not started.wait(5):
                    raise TimeoutError("the probe job did not start within 5 s")
                time.sleep(0.05)
                samples.append({k: (marks[k] - committed) * 1000 for k in STAGES if k in marks})
        finally:
            node.shutdown()
    print(f"{len(samples)} samples, ms after the enqueue returned (median, p95):")
    for stage in STAGES:
        values = sorted(s[stage] for s in samples if stage in s)
        if values:
            p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
            print(f"  {stage:12s} {statistics.median(values):7.2f} {p95:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
