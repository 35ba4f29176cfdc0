"""Process faults: a node killed between its job's side effect and the outcome write, SIGTERM with
short and long jobs in flight, a job that kills its own process, twenty nodes racing for every
tick. (kill -9 mid-job and SIGSTOP fencing are in tests/node/test_cluster.py.)"""

from __future__ import annotations

import itertools
import signal
import statistics
import time

import pytest

from pg_scheduler.testing import wait_until
from tests.faults.conftest import since, write_measurement
from tests.faults.helpers import enqueue_many, runs, status
from tests.faults.invariants import assert_invariants
from tests.support.cluster import FAST, Cluster

pytestmark = [pytest.mark.slow, pytest.mark.faults]

HORIZON = FAST["no_heartbeat_timeout"] + 3


def effects(c: Cluster, key: str) -> list[tuple[int, str, bool]]:
    return [
        (int(a), str(n), bool(f))
        for a, n, f in c.query(
            f"SELECT attempt, node, finished_at IS NOT NULL FROM {c.effects} "
            "WHERE job_key = :k ORDER BY attempt, id",
            k=key,
        )
    ]


def test_kill_after_the_side_effect_before_the_outcome_write_reruns_the_job(
    fault_cluster: Cluster,
) -> None:
    """At-least-once, documented: the job's code finished (its effect row is complete) but the
    node died before recording it, so the job runs again elsewhere. Tasks that must not repeat a
    side effect use ctx.job_key and ctx.attempt as idempotency keys."""
    c = fault_cluster
    a = c.start("p3_a", jobs=["slow"], extra={"hooks": {"before_outcome": 60}})
    (key,) = enqueue_many(c, "slow", [{"seconds": 0.2}])
    wait_until(lambda: f"OUTCOME_PENDING {key}" in a.log(), timeout=30, message="effect done")
    b = c.start("p3_b", jobs=["slow"])
    assert status(c, key) == "running"
    a.send(signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: status(c, key) == "completed", timeout=30, message="re-run elsewhere")
    recovered_s = since(killed)
    # The rerun has the same attempt number: the idempotency key repeats, as it should.
    assert effects(c, key) == [(1, a.node_id, True), (1, b.node_id, True)]
    assert runs(c, key) == [(1, "lost"), (1, "completed")]  # a lost run uses up no attempt
    c.stop_all()
    assert_invariants(c, horizon=HORIZON)
    write_measurement("kill -9 after side effect, before outcome", recovery_s=recovered_s)


def test_sigterm_with_short_and_long_jobs_in_flight(fault_cluster: Cluster) -> None:
    """SIGTERM: short jobs finish and are recorded; a cooperative long job stops at once and is
    handed back; a job that ignores cancellation and outlives shutdown_timeout is handed back at
    the timeout; the process exits 0 within the timeout; another node finishes both long jobs."""
    c = fault_cluster
    shutdown_timeout = 3.0
    a = c.start("p4_a", jobs=["slow"], config={"shutdown_timeout": shutdown_timeout})
    short = enqueue_many(c, "slow", [{"seconds": 2.5, "cooperative": False}] * 2)
    (stubborn,) = enqueue_many(c, "slow", [{"seconds": 8, "cooperative": False}])
    (cooperative,) = enqueue_many(c, "slow", [{"seconds": 8}])
    wait_until(lambda: c.scalar(f"SELECT count(*) FROM {c.effects}") == 4, timeout=30)
    a.send(signal.SIGTERM)
    signalled = time.monotonic()
    b = c.start("p4_b", jobs=["slow"], wait_ready=False)
    assert a.wait(shutdown_timeout + 15) == 0
    exited_s = since(signalled)
    assert b.ready.wait(60), b.log()
    for key in short:
        assert runs(c, key) == [(1, "completed")]
    # When a's process ended, nothing was left running under its leases.
    assert (
        c.scalar(
            f"SELECT count(*) FROM {c.names.jobs_table} WHERE status = 'running' AND node_id = :n",
            n=a.node_id,
        )
        == 0
    )
    wait_until(
        lambda: status(c, stubborn) == status(c, cooperative) == "completed",
        timeout=40,
        message="b finishes the handed-back jobs",
    )
    finished_s = since(signalled)
    for key in (stubborn, cooperative):
        assert runs(c, key) == [(1, "released"), (1, "completed")]  # no attempt used up
        assert [e[1] for e in effects(c, key)] == [a.node_id, b.node_id]
    assert "[job.released]" in a.log()
    c.stop_all()
    assert_invariants(c, horizon=HORIZON)
    write_measurement(
        "SIGTERM with jobs in flight",
        shutdown_timeout_s=shutdown_timeout,
        process_exited_after_s=exited_s,
        long_jobs_finished_elsewhere_after_s=finished_s,
    )
    assert exited_s < shutdown_timeout + 10, a.log()


def test_a_job_that_calls_os_exit(fault_cluster: Cluster) -> None:
    c = fault_cluster
    nodes = [c.start(n, jobs=["suicide"]) for n in ("p10_a", "p10_b")]
    (key,) = enqueue_many(c, "suicide", [{"die_times": 1}])
    wait_until(lambda: any(n.proc.poll() is not None for n in nodes), timeout=30)
    died = time.monotonic()
    dead = next(n for n in nodes if n.proc.poll() is not None)
    survivor = next(n for n in nodes if n is not dead)
    assert dead.proc.returncode == 17
    wait_until(lambda: status(c, key) == "completed", timeout=30, message="rescued and re-run")
    recovered_s = since(died)
    assert runs(c, key) == [(1, "lost"), (1, "completed")]  # a lost run uses up no attempt
    assert [e[1] for e in effects(c, key)] == [dead.node_id, survivor.node_id]
    c.stop_all()
    assert_invariants(c, horizon=HORIZON)
    write_measurement("job calls os._exit", recovery_s=recovered_s)


def test_twenty_nodes_race_for_every_tick(fault_cluster: Cluster) -> None:
    """Twenty processes, one per-second schedule. Misfire policy ``all`` makes "no tick missed"
    a guarantee (a tick claimed late still runs) rather than a bet on a loaded CI machine's
    timing; each tick must run exactly once."""
    c = fault_cluster
    # Calmer timings than FAST: twenty nodes heartbeating every 0.3 s would load two cores.
    calm = {"heartbeat_interval": 1.0, "no_heartbeat_timeout": 5.0, "job_check_interval": 2.0}
    schedule = {"tick": {"cron": "* * * * * *", "misfire": "all", "misfire_grace": 60}}
    nodes = [
        c.start(f"r{i:02d}", recurring=schedule, config=calm, wait_ready=False) for i in range(20)
    ]
    for node in nodes:
        assert node.ready.wait(120), node.log()
    warm = c.scalar("SELECT now()")
    wait_until(
        lambda: (
            c.scalar(
                f"SELECT count(*) FROM {c.effects} WHERE scheduled_at > :w AND finished_at IS NOT NULL",
                w=warm,
            )
            >= 8
        ),
        timeout=90,
        message="eight ticks with all twenty nodes up",
    )
    c.stop_all()
    rows = c.query(
        f"SELECT scheduled_at, started_at, node FROM {c.effects} "
        "WHERE scheduled_at > :w ORDER BY scheduled_at",
        w=warm,
    )
    ticks = [r[0] for r in rows]
    assert len(ticks) == len(set(ticks)), "a tick ran twice"
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(ticks)}
    assert gaps == {1.0}, f"every second ran, none missed: {sorted(gaps)}"
    assert_invariants(c, horizon=8.0)
    late = [(r[1] - r[0]).total_seconds() for r in rows]
    write_measurement(
        "20 nodes, per-second tick",
        ticks=len(ticks),
        distinct_nodes=len({r[2] for r in rows}),
        lateness_median_s=round(statistics.median(late), 3),
        lateness_max_s=round(max(late), 3),
    )
