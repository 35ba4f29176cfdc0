from __future__ import annotations

import pytest
import sqlalchemy as sa

from pg_scheduler.models import Models, build_models
from pg_scheduler.naming import Names

pytest_plugins = ["pg_scheduler.testing"]


# Modules that exercise what only the owner may do (migrations, roles): they run as the owner in
# both modes of PG_SCHEDULER_TEST_ROLE. A single test says so with @pytest.mark.owner_only.
OWNER_ONLY_MODULES = ("test_migrations.py", "test_least_privilege.py", "test_host_integration.py")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "owner_only: runs as the schema owner even under PG_SCHEDULER_TEST_ROLE=runtime "
        "(the test migrates, creates roles or terminates sessions itself)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in OWNER_ONLY_MODULES:
            item.add_marker(pytest.mark.owner_only)


@pytest.fixture
def engine(
    request: pytest.FixtureRequest,
    pg_scheduler_app_engine: sa.Engine,
    pg_scheduler_engine: sa.Engine,
) -> sa.Engine:
    """The application's engine: logged in as a runtime role with DML only on this test's tables
    under ``PG_SCHEDULER_TEST_ROLE=runtime`` (unless the test is ``owner_only``), else as the
    server's owner role."""
    if request.node.get_closest_marker("owner_only") is not None:
        return pg_scheduler_engine
    return pg_scheduler_app_engine


@pytest.fixture
def owner_engine(pg_scheduler_engine: sa.Engine) -> sa.Engine:
    """The role that owns the schema: for tests that create or alter objects themselves."""
    return pg_scheduler_engine


@pytest.fixture
def names(pg_scheduler_installed: Names) -> Names:
    """A fresh, installed table prefix."""
    return pg_scheduler_installed


@pytest.fixture
def models(names: Names) -> Models:
    return build_models(names)


@pytest.fixture
def cluster(  # type: ignore[no-untyped-def]
    pg_scheduler_app_url: str,
    names: Names,
    engine: sa.Engine,
    owner_engine: sa.Engine,
    pg_scheduler_runtime_role: str | None,
):
    """Start real node processes on this test's tables (as the application's role); all are
    stopped at teardown."""
    from tests.support.cluster import Cluster

    c = Cluster(
        pg_scheduler_app_url, names, engine, admin=owner_engine, grant_to=pg_scheduler_runtime_role
    )
    yield c
    c.stop_all()


@pytest.fixture
def make_scheduler(engine: sa.Engine, names: Names):  # type: ignore[no-untyped-def]
    """Build schedulers on this test's tables with fast timings; all are shut down at teardown."""
    import datetime as dt

    from pg_scheduler import RetryBackoff, Scheduler, SchedulerConfig

    made: list[Scheduler] = []

    def make(**overrides: object) -> Scheduler:
        settings: dict[str, object] = {
            "engine": engine,
            "table_prefix": names.prefix,
            "job_check_interval": dt.timedelta(seconds=2),
            "heartbeat_interval": dt.timedelta(milliseconds=300),
            "no_heartbeat_timeout": dt.timedelta(milliseconds=1500),
            "shutdown_timeout": dt.timedelta(seconds=5),
            "retry_backoff": RetryBackoff(base=dt.timedelta(milliseconds=50), jitter=0),
        }
        settings.update(overrides)
        scheduler = Scheduler(SchedulerConfig(**settings))  # type: ignore[arg-type]
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.shutdown(dt.timedelta(seconds=2))
