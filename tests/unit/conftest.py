"""``tests/unit`` needs no database: a test here that asks for one fails at once."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_database(request: pytest.FixtureRequest) -> None:
    wanted = [name for name in request.fixturenames if name.startswith("pg_scheduler_")]
    if wanted:
        pytest.fail(f"a unit test may not use the database ({', '.join(wanted)}): move it")
