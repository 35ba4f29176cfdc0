"""Database faults: sessions terminated, PostgreSQL restarted or stopped, a black hole, a read-only
database, two nodes migrating at once. Real node processes against a PostgreSQL the test owns."""

from __future__ import annotations

import datetime as dt
import signal
import time
from typing import Any, Literal

import pytest

from pg_scheduler.testing import wait_until
from tests.faults.conftest import FaultServer, since, write_measurement
from tests.faults.helpers import enqueue_many, runs, safe_scalar, status, statuses
from tests.faults.invariants import assert_invariants
from tests.faults.proxy import Proxy
from tests.support.cluster import FAST, Cluster

pytestmark = [pytest.mark.slow, pytest.mark.faults]

# A per-second schedule whose runs are late-tolerant enough for a loaded CI machine.
TICK = {"cron": "* * * * * *", "misfire": "coalesce", "misfire_grace": 60}


def db_now(cluster: Cluster) -> dt.datetime:
    value = cluster.scalar("SELECT now()")
    assert isinstance(value, dt.datetime)
    return value


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_while_jobs_run_and_a_tick_falls_inside_the_outage(
    fault_cluster: Cluster, fault_db: FaultServer, mode: Literal["fast", "immediate"]
) -> None:
    c = fault_cluster
    for name in ("a", "b"):
        c.start(name, jobs=["slow"], recurring={"tick": TICK})
    keys = enqueue_many(c, "slow", [{"seconds": 2.5}] * 4)
    wait_until(
        lambda: c.scalar(f"SELECT count(*) FROM {c.effects} WHERE job_key LIKE 'slow#%'") == 4,
        timeout=30,
        message="all four slow jobs running",
    )
    wait_until(lambda: c.scalar(f"SELECT count(*) FROM {c.effects} WHERE job_key = 'tick'") >= 2)
    down_at = db_now(c)
    started = time.monotonic()
    fault_db.stop(mode)
    # Hold the server down past a whole-second boundary: at least one tick falls inside.
    time.sleep(max(0.0, 1.3 - (time.time() % 1.0)))
    fault_db.start()
    up_at = db_now(c)
    outage = since(started)
    wait_until(lambda: statuses(c, keys) == {"completed": 4}, timeout=60, message="jobs finished")
    finished_in = since(started)
    wait_until(
        lambda: (
            safe_scalar(c, f"SELECT count(*) FROM {c.effects} WHERE scheduled_at > :t", t=up_at)
            >= 2
        ),
        timeout=30,
        message="ticks after the outage",
    )
    ticking_in = c.scalar(
        f"SELECT extract(epoch FROM min(started_at) - :up) FROM {c.effects} "
        "WHERE job_key = 'tick' AND started_at > :up",
        up=up_at,
    )
    c.stop_all()
    # The missed ticks coalesce: exactly one run for the ticks that fell inside the outage.
    inside = c.query(
        f"SELECT scheduled_at, started_at FROM {c.effects} "
        "WHERE job_key = 'tick' AND scheduled_at > :down AND scheduled_at < :up ORDER BY 1",
        down=down_at,
        up=up_at,
    )
    # Coalesce: the ticks that fell inside the outage run once, late, if the job was waiting for
    # one of them; if its previous tick was still running when the server went away, the next
    # run is computed after that run's outcome is written, from the database's now(): none.
    running_at_down = c.scalar(
        f"SELECT count(*) FROM {c.names.runs_table} WHERE job_key = 'tick' "
        "AND started_at < :down AND (finished_at IS NULL OR finished_at > :down)",
        down=down_at,
    )
    assert len(inside) == (0 if running_at_down else 1), (inside, running_at_down)
    assert_invariants(c, horizon=FAST["no_heartbeat_timeout"] + 3)
    # Runs beyond each job's first (a lost or handed-back run's rerun keeps its attempt number).
    reruns = c.scalar(
        f"SELECT count(*) - count(DISTINCT job_key) FROM {c.names.runs_table} "
        "WHERE job_key LIKE 'slow#%'"
    )
    lost = c.scalar(f"SELECT count(*) FROM {c.names.runs_table} WHERE status = 'lost'")
    write_measurement(
        f"restart -m {mode}",
        outage_s=outage,
        jobs_finished_after_s=finished_in,
        first_tick_after_up_s=round(float(ticking_in), 2),
        reruns=reruns,
        lost_runs=lost,
    )
    assert reruns == 0 and lost == 0


def test_black_hole_times_out_and_the_node_recovers_without_a_restart(
    fault_cluster: Cluster, fault_db: FaultServer, proxy: Proxy
) -> None:
    """Node A reaches the database through a proxy that starts swallowing every byte; node B
    reaches it directly. A's statements must fail within statement_timeout (not hang), B must
    take over A's job once A's lease expires, A's late outcome must be fenced off, and A must
    work again when the proxy resumes, without a restart."""
    c = fault_cluster
    timeout = 1.0
    a = c.start(
        "bh_a",
        jobs=["slow"],
        url=proxy.url(),
        config={"statement_timeout": timeout},
        extra={
            "effects_url": c.url,
            "pool_pre_ping": False,  # SQLAlchemy's ping runs before the scheduler's deadline
            "connect_args": {"application_name": "pg_scheduler:bh_a", "connect_timeout": 2},
        },
    )
    (key,) = enqueue_many(c, "slow", [{"seconds": 8, "cooperative": False}], retries=3)
    wait_until(lambda: c.scalar(f"SELECT count(*) FROM {c.effects}") == 1, timeout=30)
    b = c.start("bh_b", jobs=["slow"])
    errors_before = a.count("[db.unavailable]")
    proxy.pause()
    paused = time.monotonic()
    wait_until(
        lambda: a.count("[db.unavailable]") > errors_before,
        timeout=3 * (timeout + 1) + 5,
        message="A's statements time out",
    )
    first_error_s = since(paused)
    wait_until(
        lambda: c.scalar(f"SELECT count(*) FROM {c.effects} WHERE node = :b", b=b.node_id) == 1,
        timeout=30,
        message="B takes the job over",
    )
    taken_over_s = since(paused)
    wait_until(lambda: status(c, key) == "completed", timeout=30, message="B completes it")
    # A kept failing fast meanwhile (each failure is a statement that timed out, not a hang).
    assert a.proc.poll() is None
    proxy.resume()
    resumed = time.monotonic()
    wait_until(lambda: "[job.lease_lost]" in a.log(), timeout=30, message="A learns it lost")
    b.send(signal.SIGTERM)
    b.wait(30)
    (after,) = enqueue_many(c, "slow", [{"seconds": 0.1}])
    wait_until(lambda: status(c, after) == "completed", timeout=30, message="A works again")
    recovered_s = since(resumed)
    assert runs(c, key) == [(1, "lost"), (1, "completed")]  # a lost run uses up no attempt
    assert c.scalar(f"SELECT node_id FROM {c.names.jobs_table} WHERE key = :k", k=after) == (
        a.node_id
    )
    c.stop_all()
    assert_invariants(c, horizon=FAST["no_heartbeat_timeout"] + 3)
    write_measurement(
        "black hole (proxy paused)",
        statement_timeout_s=timeout,
        first_timeout_error_s=first_error_s,
        job_taken_over_by_other_node_s=taken_over_s,
        node_working_again_after_resume_s=recovered_s,
        cut_off_connections=a.count("[db.timeout]"),
    )


def test_terminated_sessions_neither_stop_the_node_nor_cause_a_false_rescue(
    fault_cluster: Cluster, fault_db: FaultServer
) -> None:
    """Every session of node A is terminated three times while its job runs: A reconnects each
    time (heartbeat, poller, listener), its lease is never judged stalled by B, and the job
    completes on its first attempt."""
    c = fault_cluster
    a = c.start("term_a", jobs=["slow"], recurring={"tick": TICK})
    (key,) = enqueue_many(c, "slow", [{"seconds": 6, "cooperative": False}])
    wait_until(lambda: c.scalar(f"SELECT count(*) FROM {c.effects} WHERE job_key = :k", k=key))
    b = c.start("term_b", jobs=["slow"], recurring={"tick": TICK})
    terminated = 0
    for _ in range(3):
        terminated += fault_db.terminate("pg_scheduler:term_a%")
        wait_until(
            lambda: (
                fault_db.admin(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE :p",
                    p="pg_scheduler:term_a%:heartbeat",
                )[0][0]
                == 1
            ),
            timeout=10,
            message="A's heartbeat reconnected",
        )
    reconnected = time.monotonic()
    wait_until(lambda: status(c, key) == "completed", timeout=30, message="job completed")
    assert runs(c, key) == [(1, "completed")]
    (later,) = enqueue_many(c, "slow", [{"seconds": 0.1}])
    wait_until(lambda: status(c, later) == "completed", timeout=30)
    c.stop_all()
    assert c.scalar(f"SELECT count(*) FROM {c.names.runs_table} WHERE status = 'lost'") == 0
    assert "[job.rescued]" not in a.log() + b.log()
    assert_invariants(c, horizon=FAST["no_heartbeat_timeout"] + 3)
    write_measurement(
        "pg_terminate_backend x3",
        sessions_terminated=terminated,
        job_done_after_last_kill_s=since(reconnected),
        false_rescues=0,
    )


def test_database_down_longer_than_the_lease(fault_cluster: Cluster, fault_db: FaultServer) -> None:
    """The server is stopped for four lease periods while jobs run. When it returns, every holder
    renews before anyone judges its lease (the rescuer waits a whole lease after an outage), so
    nothing runs twice here; if a holder were slower still, its job would be rescued and re-run,
    and its late outcome fenced off: at-least-once, never a stale final state."""
    c = fault_cluster
    for name in ("down_a", "down_b"):
        c.start(name, jobs=["slow"], recurring={"tick": TICK})
    keys = enqueue_many(c, "slow", [{"seconds": 3, "cooperative": False}] * 4)
    wait_until(
        lambda: c.scalar(f"SELECT count(*) FROM {c.effects} WHERE job_key LIKE 'slow#%'") == 4,
        timeout=30,
    )
    outage = 4 * FAST["no_heartbeat_timeout"]
    fault_db.stop("fast")
    stopped = time.monotonic()
    time.sleep(outage)  # the fault itself: the database is away this long
    fault_db.start()
    wait_until(lambda: statuses(c, keys) == {"completed": 4}, timeout=60, message="jobs done")
    done_s = since(stopped)
    c.stop_all()
    # Runs beyond each job's first (a lost or handed-back run's rerun keeps its attempt number).
    reruns = c.scalar(
        f"SELECT count(*) - count(DISTINCT job_key) FROM {c.names.runs_table} "
        "WHERE job_key LIKE 'slow#%'"
    )
    assert_invariants(c, horizon=FAST["no_heartbeat_timeout"] + 3)
    write_measurement(
        "database down 4 x lease", outage_s=outage, jobs_completed_after_s=done_s, reruns=reruns
    )


def test_read_only_database_backs_off_with_a_bounded_log_rate(
    fault_cluster: Cluster, fault_db: FaultServer
) -> None:
    c = fault_cluster
    nodes = [c.start(n, jobs=["slow"], recurring={"tick": TICK}) for n in ("ro_a", "ro_b")]
    (key,) = enqueue_many(c, "slow", [{"seconds": 2}])
    wait_until(lambda: c.scalar(f"SELECT count(*) FROM {c.effects} WHERE job_key = :k", k=key))
    before = [n.count("[db.unavailable]") for n in nodes]
    fault_db.admin("ALTER DATABASE postgres SET default_transaction_read_only = on")
    fault_db.terminate("pg_scheduler:ro_%")
    window = 6.0
    time.sleep(window)  # the fault itself: the database stays read-only this long
    lines = [n.count("[db.unavailable]") - b for n, b in zip(nodes, before, strict=True)]
    fault_db.admin("ALTER DATABASE postgres RESET default_transaction_read_only")
    fault_db.terminate("pg_scheduler:ro_%")
    reverted = time.monotonic()
    wait_until(lambda: status(c, key) == "completed", timeout=30, message="outcome written")
    (later,) = enqueue_many(c, "slow", [{"seconds": 0.1}])
    wait_until(lambda: status(c, later) == "completed", timeout=30, message="working again")
    recovered_s = since(reverted)
    c.stop_all()
    assert runs(c, key) == [(1, "completed")]
    assert_invariants(c, horizon=FAST["no_heartbeat_timeout"] + 3)
    # Every service keeps retrying (it has to notice the recovery), but each logs at most one line
    # per DB_ERROR_LOG_SECONDS: poll, heartbeat, maintenance and the outcome write, a few each.
    from pg_scheduler.db.outages import DB_ERROR_LOG_SECONDS

    per_service = int(window // DB_ERROR_LOG_SECONDS) + 2
    assert all(0 < n <= 4 * per_service for n in lines), lines
    write_measurement(
        "read-only database",
        read_only_s=window,
        db_unavailable_lines_per_node=lines,
        working_again_after_revert_s=recovered_s,
    )


def test_two_nodes_migrating_a_fresh_prefix_at_once(fault_db: FaultServer) -> None:
    """Both nodes start with create_schema=True on a prefix nobody installed; the test holds the
    migrations' advisory lock until both are provably waiting on it, then lets them race."""
    import sqlalchemy as sa

    from pg_scheduler import migrations
    from pg_scheduler.naming import Names
    from pg_scheduler.testing import unique_prefix
    from tests.db.test_migrations import WAITERS_SQL

    names = Names(prefix=unique_prefix())
    c = Cluster(fault_db.url, names, fault_db.engine)
    try:
        with fault_db.engine.connect() as holder:
            holder.execute(migrations.ADVISORY_LOCK_SQL, {"key": names.advisory_lock_key})
            nodes = [
                c.start(n, jobs=["slow"], config={"create_schema": True}, wait_ready=False)
                for n in ("mig_a", "mig_b")
            ]

            def both_waiting() -> bool:
                with fault_db.engine.connect() as conn:
                    waiting = conn.scalar(WAITERS_SQL, {"key": names.advisory_lock_key})
                assert all(n.proc.poll() is None for n in nodes), [n.log() for n in nodes]
                return waiting == 2

            wait_until(both_waiting, timeout=60, message="both nodes waiting on the lock")
            holder.rollback()
        for node in nodes:
            assert node.ready.wait(60), node.log()
        versions = c.query(f"SELECT version_num FROM {names.version_table}")
        assert versions == [(migrations.head(),)]
        (key,) = enqueue_many(c, "slow", [{"seconds": 0.1}])
        wait_until(lambda: status(c, key) == "completed", timeout=30)
        assert "already exists" not in "".join(n.log() for n in nodes)
    finally:
        c.stop_all()
        with sa.create_engine(fault_db.url, poolclass=sa.pool.NullPool).connect() as conn:
            migrations.downgrade(conn, names=names)
            conn.commit()


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_a_black_holed_listen_connection_is_noticed_and_replaced(
    fault_db: FaultServer,
    fault_names: Any,
    proxy: Proxy,
    driver: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A LISTEN connection whose network swallows every byte delivers nothing and reports no
    error. The threaded listener, like the asyncio one, checks a silent connection with a
    deadline: it drops it and listens again once the network is back."""
    import sqlalchemy as sa

    from pg_scheduler import Scheduler, SchedulerConfig
    from pg_scheduler.runtime import listen

    monkeypatch.setattr(listen, "KEEPALIVE_SECONDS", 0.5)
    engine = sa.create_engine(proxy.url(driver), connect_args={"connect_timeout": 2})
    timings = {
        name: dt.timedelta(seconds=seconds)
        for name, seconds in FAST.items()
        if name != "retry_backoff"
    }
    s = Scheduler(SchedulerConfig(engine=engine, table_prefix=fault_names.prefix, **timings))
    try:
        s.start()
        wait_until(s.listener.connected.is_set, timeout=10, message="listening")
        proxy.pause()
        wait_until(
            lambda: not s.listener.connected.is_set(),
            timeout=15,
            message="the silent LISTEN connection dropped",
        )
        proxy.resume()
        wait_until(s.listener.connected.is_set, timeout=20, message="listening again")
    finally:
        proxy.resume()
        s.shutdown(dt.timedelta(seconds=2))
        engine.dispose()
