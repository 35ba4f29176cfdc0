"""Three nodes, one per-second job: every tick runs on exactly one of them.

The script starts three node processes (``python examples/multi_node.py node``) against one
database. Each runs the same recurring job, ``* * * * * *`` (six fields: every second), which
records the tick it ran and the node that ran it in an ``effects`` table. After a few seconds
the nodes are stopped (SIGTERM: a graceful shutdown) and the invariant is checked with SQL: no
tick appears twice, in the effects or in pg_scheduler's own run history. The database decides
who runs each tick (``FOR UPDATE SKIP LOCKED`` on the job's row); there is no leader.

    python examples/multi_node.py

Uses ``PG_SCHEDULER_DATABASE_URL`` if set, else an embedded PostgreSQL in ``./.pg_scheduler``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import sqlalchemy as sa

import pg_scheduler
from pg_scheduler import JobContext, Scheduler, SchedulerConfig

PREFIX = os.environ.get("PG_SCHEDULER_TABLE_PREFIX", "multinode_")
NODES = 3
TICKS = 6  # run until this many ticks have been recorded (about six seconds)
TIMEOUT = 60.0
NODE_LIFETIME = 120.0  # a node stops by itself after this long, should this script die

metadata = sa.MetaData()
effects = sa.Table(
    f"{PREFIX}effects",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("tick", sa.DateTime(timezone=True), nullable=False),
    sa.Column("node_id", sa.Text, nullable=False),
)


@contextlib.contextmanager
def database() -> Iterator[str]:
    """``PG_SCHEDULER_DATABASE_URL``, or an embedded PostgreSQL kept in ./.pg_scheduler."""
    url = os.environ.get("PG_SCHEDULER_DATABASE_URL")
    if url:
        yield url
        return
    from pg_scheduler import embedded

    server = embedded.start(".pg_scheduler")
    try:
        yield server.url
    finally:
        server.stop()


def scheduler_for(engine: sa.Engine, name: str | None = None) -> Scheduler:
    return Scheduler(
        SchedulerConfig(
            engine=engine,
            table_prefix=PREFIX,
            node_name=name,
            heartbeat_interval=dt.timedelta(seconds=1),
            no_heartbeat_timeout=dt.timedelta(seconds=5),
            shutdown_timeout=dt.timedelta(seconds=5),
        )
    )


# ---------------------------------------------------------------------------------------- a node
def node(url: str, name: str) -> None:
    engine = sa.create_engine(url, pool_size=4)
    scheduler = scheduler_for(engine, name)

    @scheduler.recurring("every_second", "* * * * * *")
    def every_second(ctx: JobContext) -> None:
        with engine.begin() as conn:
            conn.execute(sa.insert(effects).values(tick=ctx.scheduled_at, node_id=ctx.node_id))
        print(f"{name} ran the tick of {ctx.scheduled_at:%H:%M:%S}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with scheduler:  # shutdown() on the way out: running jobs finish, nothing is left running
        stop.wait(NODE_LIFETIME)
    engine.dispose()


# ---------------------------------------------------------------------------------------- the check
def main() -> None:
    with database() as url:
        engine = sa.create_engine(url)
        # A fresh start, so that the checks are about this run only.
        metadata.drop_all(engine)
        pg_scheduler.migrations.downgrade(engine, table_prefix=PREFIX)
        metadata.create_all(engine)
        pg_scheduler.migrations.upgrade(engine, table_prefix=PREFIX)
        observer = scheduler_for(engine)  # never started: used to read the nodes table

        env = {**os.environ, "PG_SCHEDULER_DATABASE_URL": url, "PG_SCHEDULER_TABLE_PREFIX": PREFIX}
        nodes = [
            subprocess.Popen([sys.executable, __file__, "node", f"node-{i}"], env=env)
            for i in range(1, NODES + 1)
        ]
        try:
            wait_for(
                lambda: len(observer.list_nodes(live_within=dt.timedelta(seconds=10))) == NODES
            )
            print(f"{NODES} nodes are up; waiting for {TICKS} ticks")
            wait_for(lambda: count_ticks(engine) >= TICKS)
        finally:
            for process in nodes:
                process.send_signal(signal.SIGTERM)
            codes = [process.wait(timeout=TIMEOUT) for process in nodes]

        with engine.connect() as conn:
            twice = conn.execute(
                sa.select(effects.c.tick).group_by(effects.c.tick).having(sa.func.count() > 1)
            ).all()
            by_node = conn.execute(
                sa.select(effects.c.node_id, sa.func.count())
                .group_by(effects.c.node_id)
                .order_by(effects.c.node_id)
            ).all()
            runs = observer.models.runs  # pg_scheduler's history: one row per attempt
            completed = sa.func.count().filter(runs.c.status == "completed")
            runs_twice = conn.execute(
                sa.select(runs.c.scheduled_at)
                .group_by(runs.c.job_key, runs.c.scheduled_at)
                .having(completed > 1)
            ).all()
        ticks = count_ticks(engine)
        engine.dispose()

    for node_id, n in by_node:
        print(f"  {node_id}: {n} tick{'' if n == 1 else 's'}")
    assert codes == [0] * NODES, f"node exit codes {codes}"
    assert not twice, f"ticks run twice: {twice}"
    assert not runs_twice, f"ticks completed twice in the run history: {runs_twice}"
    # Only the nodes that ran ticks count: a node may be up and never win a claim.
    print(f"ok: {ticks} ticks on {len(by_node)} of {NODES} nodes, none ran twice")


def count_ticks(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count(sa.distinct(effects.c.tick)))).scalar_one()


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f}s")
        time.sleep(0.2)


if __name__ == "__main__":
    if sys.argv[1:2] == ["node"]:
        node(os.environ["PG_SCHEDULER_DATABASE_URL"], sys.argv[2])
    else:
        main()
