"""The node's CPU per job on one thread: claim, run and outcome write, with no thread switches.

    python -m benchmarks.profiles.profile_hot_path --rounds 12 --jobs-per-round 800

Claims 32 jobs at a time on the poller's kept connection, runs each no-op job as a worker would
(context, execution, outcome), writes the batch's outcomes as the grouped writer does, and counts
the calling thread's CPU time (``time.thread_time``) of each stage. Prints the smallest per-job
figure over the rounds: on a shared VM whose speed drifts, the minimum is the stable estimate of
what the code costs. Starts its own embedded PostgreSQL unless ``--url``.
"""

from __future__ import annotations

import time

from benchmarks import ours
from benchmarks.peers import _harness
from benchmarks.profiles.profile_drain import arguments, installed
from pg_scheduler.node.attempt import attempt_outcome, new_context
from pg_scheduler.node.running import RunningJob
from pg_scheduler.runtime.threads import drive

BATCH = 32


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--jobs-per-round", type=int, default=800)
    args = parser.parse_args(argv)
    per_round = args.jobs_per_round
    best: dict[str, float] = {}
    with installed(args.url, "hot_path") as (db, engine):
        node = ours.build_scheduler(engine, BATCH)
        node.enqueue_many(ours.NOOP, [None] * (per_round * args.rounds + BATCH))
        with _harness.admin_connection(db) as conn:
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")
        names = node.registered_names()
        job = node.registered_job(ours.NOOP)
        assert job is not None
        for _ in range(args.rounds):
            cpu = {"claim": 0.0, "run": 0.0, "write": 0.0}
            done = 0
            while done < per_round:
                t0 = time.thread_time()
                with node.database.autocommit(node.database.claim_connection) as repo:
                    claimed = repo.claim(node.node_id, names, BATCH)
                t1 = time.thread_time()
                items = []
                for one in claimed:
                    running = RunningJob(one, job, new_context(one, node.node_id, node.log))
                    node.inflight.add(running)
                    error = drive(node.runtime.run_code(running))
                    items.append((one, attempt_outcome(running, error, 0)))
                    node.inflight.end_code(running)
                t2 = time.thread_time()
                node.runtime._write_group(items)
                for one, _ in items:
                    node.inflight.remove(one.lease_id)
                t3 = time.thread_time()
                cpu["claim"] += t1 - t0
                cpu["run"] += t2 - t1
                cpu["write"] += t3 - t2
                done += len(claimed)
            for stage, seconds in cpu.items():
                best[stage] = min(best.get(stage, float("inf")), seconds / done * 1e6)
        node.shutdown()
    print(f"node CPU per job, one thread, best of {args.rounds} rounds of {per_round} jobs:")
    for stage, us in best.items():
        print(f"  {us:6.1f} us  {stage}")
    print(f"  {sum(best.values()):6.1f} us  in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
