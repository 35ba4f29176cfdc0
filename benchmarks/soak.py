"""Soak: nodes killed and restarted at random while one-time and per-second jobs run; nothing lost.

    python -m benchmarks.soak --duration 60          # or: python benchmarks/soak.py
    python -m benchmarks.soak --url postgresql+psycopg://…  --jobs 20000 --nodes 4

Starts ``--nodes`` node processes (tests/support/nodeproc.py) on a fresh table prefix, schedules three
per-second recurring jobs, enqueues ``--jobs`` one-time jobs in batches over the first half of the
run, and every 2-5 s (seeded) kills a random node with SIGKILL and starts a replacement. After
``--duration`` seconds the killing stops and the remaining jobs drain (at most ``--drain-timeout``,
default 600 s). Prints one line:

    soak: ... enqueued=N completed=N failed=N lost=0 unfinished=0 duplicate_ticks=0 max_recovery_s=X

``lost`` counts enqueued jobs with no row or still ``running`` under an expired lease after the
drain (must be 0); ``duplicate_ticks`` counts recurring ticks whose code completed twice on nodes that
were not killed, or that were recorded completed twice (must be 0; a tick whose node was killed
after its code and before its outcome runs again, at-least-once); a recovery is the time from a kill until no job is ``running`` under the dead node's leases.
Exit status 1 when an invariant is broken. Without ``--url`` an embedded PostgreSQL is started in a
temporary directory and deleted afterwards.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pg_scheduler import embedded, migrations
from pg_scheduler.naming import Names
from pg_scheduler.testing import unique_prefix
from tests.faults.helpers import enqueue_many
from tests.support.cluster import FAST, Cluster, Node

RECURRING = {name: "* * * * * *" for name in ("tick", "tick2", "tick3")}
JOB_RETRIES = 5  # a job can be hit by several kills in a row; it must still end completed


@dataclass
class Result:
    duration: float
    nodes: int
    kills: int
    enqueued: int
    completed: int
    failed: int
    lost: int
    unfinished: int
    duplicate_ticks: int
    max_recovery_s: float
    recoveries: list[float] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicate_ticks == 0 and self.unfinished == 0

    def line(self) -> str:
        return (
            f"soak: duration={self.duration:.0f}s nodes={self.nodes} kills={self.kills} "
            f"enqueued={self.enqueued} completed={self.completed} failed={self.failed} "
            f"lost={self.lost} unfinished={self.unfinished} "
            f"duplicate_ticks={self.duplicate_ticks} max_recovery_s={self.max_recovery_s:.2f}"
            + "".join(f" {event}={n}" for event, n in sorted(self.events.items()))
        )


class RecoveryWatch:
    """Measures, per kill, how long until no job is running under the dead node's leases."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.open: dict[str, float] = {}
        self.recoveries: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def killed(self, node_id: str) -> None:
        with self._lock:
            self.open[node_id] = time.monotonic()

    def _loop(self) -> None:
        jobs = self.cluster.names.jobs_table
        while not self._stop.wait(0.1):
            with self._lock:
                pending = dict(self.open)
            for node_id, killed_at in pending.items():
                try:
                    held = self.cluster.scalar(
                        f"SELECT count(*) FROM {jobs} WHERE status = 'running' AND node_id = :n",
                        n=node_id,
                    )
                except sa.exc.OperationalError:
                    continue
                if held == 0:
                    with self._lock:
                        self.open.pop(node_id, None)
                        self.recoveries.append(time.monotonic() - killed_at)

    def stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.open and time.monotonic() < deadline:
            time.sleep(0.1)
        self._stop.set()
        self._thread.join(5)


def run(
    url: str,
    *,
    duration: float,
    nodes: int = 4,
    jobs: int = 20_000,
    seed: int = 8,
    drain_timeout: float | None = None,
    log: Any = print,
) -> Result:
    rng = random.Random(seed)
    names = Names(prefix=unique_prefix())
    engine = sa.create_engine(url, pool_size=5, pool_pre_ping=True)
    migrations.upgrade(engine, names=names)
    cluster = Cluster(url, names, engine)
    # A lease of 3 s (FAST's 1.5 s rescues healthy jobs on a loaded two-core machine: safe, but
    # it measures the machine, not the scheduler).
    node_config = {
        **FAST,
        "heartbeat_interval": 0.5,
        "no_heartbeat_timeout": 3.0,
        "max_concurrent_jobs": 10,
    }
    counter = iter(range(10**6))

    def start_node(wait: bool = True) -> Node:
        return cluster.start(
            f"soak{next(counter)}",
            jobs=["noop"],
            recurring=RECURRING,
            config=node_config,
            wait_ready=wait,
        )

    try:
        live = [start_node() for _ in range(nodes)]
        watch = RecoveryWatch(cluster)
        keys: list[str] = []
        batches = 10
        batch_size = -(-jobs // batches)
        started = time.monotonic()
        next_batch = started
        next_kill = started + rng.uniform(2, 5)
        kills = 0
        killed: list[str] = []
        while time.monotonic() - started < duration:
            now = time.monotonic()
            if len(keys) < jobs and now >= next_batch:
                size = min(batch_size, jobs - len(keys))
                params = [{"i": len(keys) + i} for i in range(size)]
                keys += enqueue_many(cluster, "noop", params, retries=JOB_RETRIES)
                next_batch = now + duration / 2 / batches
            ready = [n for n in live if n.ready.is_set()]
            if now >= next_kill and ready:
                victim = ready[rng.randrange(len(ready))]
                live.remove(victim)
                victim.send(signal.SIGKILL)
                victim.proc.wait(10)
                watch.killed(victim.node_id)
                killed.append(victim.node_id)
                kills += 1
                live.append(start_node(wait=False))  # joins in the background
                next_kill = time.monotonic() + rng.uniform(2, 5)
            time.sleep(0.05)
        log(f"soak: chaos over after {time.monotonic() - started:.0f}s ({kills} kills); draining")
        jobs_table = names.jobs_table
        drain = drain_timeout if drain_timeout is not None else 600.0
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline:
            left = cluster.scalar(
                f"SELECT count(*) FROM {jobs_table} WHERE job_type = 'one_time' "
                "AND status IN ('pending', 'running')"
            )
            if left == 0:
                break
            time.sleep(0.5)
        watch.stop(timeout=10)
        cluster.stop_all()
        counts = dict(
            cluster.query(
                f"SELECT status, count(*) FROM {jobs_table} WHERE key = ANY(:keys) GROUP BY 1",
                keys=keys,
            )
        )
        horizon = node_config["no_heartbeat_timeout"] + 3
        stuck = cluster.scalar(
            f"SELECT count(*) FROM {jobs_table} WHERE key = ANY(:keys) AND status = 'running' "
            "AND heartbeat_at < now() - make_interval(secs => :h)",
            keys=keys,
            h=horizon,
        )
        missing = len(keys) - sum(counts.values())
        # A node killed after a tick's code finished but before its outcome was written leaves a
        # tick that runs again elsewhere (at-least-once after a crash, as the README says): its
        # effect does not count. Two finished runs of one tick by nodes that lived, or two
        # completed run rows of one tick, would break "at most once per tick".
        duplicates = cluster.scalar(
            f"SELECT count(*) FROM (SELECT job_key, scheduled_at FROM {cluster.effects} "
            "WHERE job_key IN ('tick', 'tick2', 'tick3') AND finished_at IS NOT NULL "
            "AND node <> ALL(:killed) GROUP BY 1, 2 HAVING count(*) > 1) d",
            killed=killed,
        )
        duplicates += cluster.scalar(
            f"SELECT count(*) FROM (SELECT r.job_key, r.scheduled_at FROM {names.runs_table} r "
            "WHERE r.job_key IN ('tick', 'tick2', 'tick3') AND r.status = 'completed' "
            "GROUP BY 1, 2 HAVING count(*) > 1) d"
        )
        recoveries = sorted(watch.recoveries)
        # What the nodes said about it (safe but worth knowing: a rescue of a live node's job
        # means its heartbeat was late, e.g. on an overloaded machine).
        events = {
            event.strip("[]"): sum(n.count(event) for n in cluster.nodes)
            for event in ("[job.rescued]", "[job.lease_lost]", "[db.unavailable]", "[db.timeout]")
        }
        return Result(
            duration=duration,
            nodes=nodes,
            kills=kills,
            enqueued=len(keys),
            completed=int(counts.get("completed", 0)),
            failed=int(counts.get("failed", 0)),
            lost=missing + int(stuck),
            unfinished=int(counts.get("pending", 0) + counts.get("running", 0)) - int(stuck),
            duplicate_ticks=int(duplicates),
            max_recovery_s=max(recoveries, default=0.0),
            recoveries=recoveries,
            events=events,
        )
    finally:
        cluster.stop_all()
        try:
            migrations.downgrade(engine, names=names)
            with engine.begin() as conn:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {cluster.effects}")
        finally:
            engine.dispose()


def embedded_url() -> tuple[str, Any]:
    pg = embedded.start(tempfile.mkdtemp(prefix="pg_scheduler_soak_"), cleanup="delete")
    with sa.create_engine(pg.url, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.exec_driver_sql("ALTER SYSTEM SET max_connections = 300")
        conn.exec_driver_sql("ALTER SYSTEM SET fsync = off")
    pg.restart()
    return pg.url_for("psycopg"), pg.stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=60, help="seconds of chaos (>= 60)")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=20_000, help="one-time jobs to enqueue")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--drain-timeout", type=float, default=None)
    parser.add_argument("--url", help="SQLAlchemy URL (default: a temporary embedded PostgreSQL)")
    args = parser.parse_args(argv)
    stop = None
    url = args.url
    if url is None:
        url, stop = embedded_url()
    try:
        result = run(
            url,
            duration=args.duration,
            nodes=args.nodes,
            jobs=args.jobs,
            seed=args.seed,
            drain_timeout=args.drain_timeout,
        )
    finally:
        if stop is not None:
            stop()
    print(result.line(), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
