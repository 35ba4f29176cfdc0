"""Fixtures for fault tests: a PostgreSQL these tests own (and may stop, restart, make read-only),
a proxy in front of it, and node processes on it.

The session-wide test server of ``pg_scheduler.testing`` is shared with every other test and is
never restarted here: ``fault_pg`` is a second embedded server in its own temporary data directory,
started on first use (only the ``slow`` tests ask for it, so the PostgreSQL 15 passes of CI, which
deselect them, never start it).
"""

from __future__ import annotations

import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import sqlalchemy as sa

from pg_scheduler import embedded, migrations
from pg_scheduler.naming import Names
from pg_scheduler.testing import unique_prefix, wait_until
from tests.faults.proxy import Proxy
from tests.support.cluster import Cluster


@dataclass
class FaultServer:
    """A restartable PostgreSQL that only the fault tests use."""

    pg: embedded.EmbeddedPostgres
    engine: sa.Engine

    @property
    def url(self) -> str:
        return self.pg.url_for("psycopg")

    @property
    def socket_path(self) -> str:
        host = sa.make_url(self.pg.libpq_uri).query["host"]
        assert isinstance(host, str)
        return f"{host}/.s.PGSQL.5432"

    def admin(self, sql: str, **params: Any) -> list[Any]:
        """Run one statement in autocommit on a fresh connection; returns its rows (if any)."""
        engine = sa.create_engine(
            self.url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT"
        )
        try:
            with engine.connect() as conn:
                # The admin session must write even while a test made the database read-only.
                conn.exec_driver_sql("SET default_transaction_read_only = off")
                result = conn.execute(sa.text(sql), params)
                return list(result.all()) if result.returns_rows else []
        finally:
            engine.dispose()

    def terminate(self, application_name_like: str) -> int:
        """``pg_terminate_backend`` every session whose application_name matches; returns count."""
        rows = self.admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE :pattern AND pid <> pg_backend_pid()",
            pattern=application_name_like,
        )
        return sum(1 for (ok,) in rows if ok)

    def restart(self, mode: Literal["fast", "immediate"]) -> None:
        self.pg.restart(mode)

    def stop(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        self.pg.stop_server(mode)

    def start(self) -> None:
        self.pg.start_server()

    def is_up(self) -> bool:
        try:
            self.admin("SELECT 1")
        except sa.exc.OperationalError:
            return False
        return True


@pytest.fixture(scope="session")
def fault_server() -> Iterator[FaultServer]:
    data_dir = tempfile.mkdtemp(prefix="pg_scheduler_faults_")
    pg = embedded.start(data_dir, driver="psycopg", cleanup="delete")
    settings = sa.create_engine(pg.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with settings.connect() as conn:
        # 20 node processes and the soak's restarts need room; durability is not under test.
        conn.exec_driver_sql("ALTER SYSTEM SET max_connections = 500")
        conn.exec_driver_sql("ALTER SYSTEM SET fsync = off")
    settings.dispose()
    pg.restart("fast")
    engine = sa.create_engine(pg.url_for("psycopg"), pool_size=5, pool_pre_ping=True)
    server = FaultServer(pg, engine)
    try:
        yield server
    finally:
        engine.dispose()
        if not server.is_up():
            pg.start_server()
        pg.stop()


@pytest.fixture
def fault_db(fault_server: FaultServer) -> Iterator[FaultServer]:
    """The fault server, brought back to a normal state after the test (running, writable)."""
    yield fault_server
    if not fault_server.is_up():
        fault_server.start()
    wait_until(fault_server.is_up, timeout=60, message="fault server up")
    fault_server.admin("ALTER DATABASE postgres RESET default_transaction_read_only")
    fault_server.engine.dispose()


@pytest.fixture
def fault_names(fault_db: FaultServer) -> Iterator[Names]:
    names = Names(prefix=unique_prefix())
    migrations.upgrade(fault_db.engine, names=names)
    yield names
    try:
        migrations.downgrade(fault_db.engine, names=names)
    except Exception:  # pragma: no cover - best effort after a fault
        pass


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def fault_cluster(
    request: pytest.FixtureRequest, fault_db: FaultServer, fault_names: Names
) -> Iterator[Cluster]:
    """Node processes on the fault server; all are stopped (or killed) at teardown, and their
    output is printed when the test failed."""
    c = Cluster(fault_db.url, fault_names, fault_db.engine)
    yield c
    for node in c.nodes:  # a paused node must not stall teardown
        node.send(signal.SIGCONT)
    c.stop_all()
    if request.node.stash.get(_FAILED, False):
        try:
            for row in c.query(
                f"SELECT key, status, attempt, node_id, heartbeat_at, next_run, last_error "
                f"FROM {c.names.jobs_table} ORDER BY key LIMIT 50"
            ):
                print("job", tuple(row))
            for row in c.query(
                f"SELECT job_key, attempt, status, node_id, started_at, finished_at "
                f"FROM {c.names.runs_table} ORDER BY id DESC LIMIT 50"
            ):
                print("run", tuple(row))
        except Exception as exc:
            print("could not read the tables:", exc)
        for node in c.nodes:
            print(f"----- node {node.name} ({node.node_id}) exit {node.proc.returncode}")
            print("".join(node.output[-150:]))
    c.engine.dispose()


@pytest.fixture
def proxy(fault_db: FaultServer) -> Iterator[Proxy]:
    p = Proxy(unix_path=fault_db.socket_path)
    yield p
    p.resume()
    p.close()


def since(start: float) -> float:
    return round(time.monotonic() - start, 2)


def write_measurement(name: str, **values: Any) -> None:
    """Record a measured recovery time (shown with ``-s``; appended to a file for the notes)."""
    line = f"[measured] {name}: " + ", ".join(f"{k}={v}" for k, v in values.items())
    print(line)
    path = Path(tempfile.gettempdir()) / "pg_scheduler_fault_measurements.txt"
    with path.open("a") as out:
        out.write(line + "\n")
