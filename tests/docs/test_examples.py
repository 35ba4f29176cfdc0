"""Every example in examples/ runs to completion against the test server and checks itself."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from pg_scheduler import migrations
from pg_scheduler.testing import unique_prefix

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT = 300  # seconds; each example bounds its own run and fails rather than hang


@pytest.fixture
def prefix(pg_scheduler_engine: sa.Engine) -> Iterator[str]:
    """A table prefix of this test's own; its tables (ours and the example's) go afterwards."""
    prefix = unique_prefix()
    yield prefix
    migrations.downgrade(pg_scheduler_engine, table_prefix=prefix)
    app_tables = sa.MetaData()
    for name in ("orders", "effects"):
        sa.Table(f"{prefix}{name}", app_tables)
    app_tables.drop_all(pg_scheduler_engine, checkfirst=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "example", ["quickstart.py", "web_app.py", "multi_node.py", "async_app.py"]
)
def test_example_runs_and_checks_itself(
    example: str, prefix: str, pg_scheduler_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "PG_SCHEDULER_DATABASE_URL": pg_scheduler_url,
        "PG_SCHEDULER_TABLE_PREFIX": prefix,
    }
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / example)],
        cwd=tmp_path,  # an example must not depend on where it is run from
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "ok:" in result.stdout, result.stdout
    assert not (tmp_path / ".pg_scheduler").exists(), "the example ignored the database URL"
