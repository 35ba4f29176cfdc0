"""Fixtures of the node tests: ``make_node`` builds schedulers of the runtime under test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from pg_scheduler.naming import Names
from pg_scheduler.testing import TestServer
from tests.support.runtimes import DRIVERS, RUNTIMES, Nodes, nodes_for


@pytest.fixture(params=DRIVERS)
def async_url(request: pytest.FixtureRequest, pg_scheduler_server: TestServer) -> str:
    """The test server's URL for each async driver in turn."""
    return pg_scheduler_server.url_for(request.param)


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    """``threads`` (``Scheduler``), or ``asyncio-<driver>`` (``AsyncScheduler``)."""
    return str(request.param)


@pytest.fixture
def make_node(
    request: pytest.FixtureRequest, runtime: str, engine: sa.Engine, names: Names
) -> Iterator[Nodes]:
    """Build nodes (``tests.support.runtimes.Node``) of this runtime on this test's tables, with
    fast timings; all are shut down at teardown."""
    with nodes_for(request, runtime, engine, names) as nodes:
        yield nodes
