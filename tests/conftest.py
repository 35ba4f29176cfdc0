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
