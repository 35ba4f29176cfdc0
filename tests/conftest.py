from __future__ import annotations

import pytest
import sqlalchemy as sa

from pg_scheduler.models import Models, build_models
from pg_scheduler.naming import Names

pytest_plugins = ["pg_scheduler.testing"]


@pytest.fixture
def engine(pg_scheduler_engine: sa.Engine) -> sa.Engine:
    return pg_scheduler_engine


@pytest.fixture
def names(pg_scheduler_installed: Names) -> Names:
    """A fresh, installed table prefix."""
    return pg_scheduler_installed


@pytest.fixture
def models(names: Names) -> Models:
    return build_models(names)


@pytest.fixture
def cluster(pg_scheduler_url: str, names: Names, engine: sa.Engine):  # type: ignore[no-untyped-def]
    """Start real node processes on this test's tables; all are stopped at teardown."""
    from tests.cluster import Cluster

    c = Cluster(pg_scheduler_url, names, engine)
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
