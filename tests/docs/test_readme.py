"""The README's runnable examples (code blocks starting with ``# example: NAME``) really run.

Each runs in a fresh process against the test server, in a schema of its own (through the
connection's search_path), so examples that install tables leave nothing behind.

The blocks starting with ``# file: NAME`` (the "Testing your application" section) are the files
of a user's test suite: written as they are into an empty directory and run by pytest there,
against the same server; every test in them must pass.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from pg_scheduler.testing import TestServer

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"```python\n(# example: (\S+)\n.*?)```", re.DOTALL)
EXAMPLES = {name: code for code, name in BLOCK.findall(README.read_text())}
FILE_BLOCK = re.compile(r"```python\n(# file: (\S+)\n.*?)```", re.DOTALL)
USER_SUITE = {name: code for code, name in FILE_BLOCK.findall(README.read_text())}


def test_the_readme_has_runnable_examples() -> None:
    assert {"quickstart", "jobs", "transactional"} <= set(EXAMPLES)
    assert {"conftest.py", "test_signup.py"} <= set(USER_SUITE)


def test_the_readmes_test_suite_passes_as_written(
    pg_scheduler_server: TestServer, tmp_path: Path
) -> None:
    for name, code in USER_SUITE.items():
        (tmp_path / name).write_text(code)
    tests = sum(code.count("\ndef test_") for code in USER_SUITE.values())
    env = {**os.environ, "PG_SCHEDULER_TEST_DSN": pg_scheduler_server.url}
    env.pop("PG_SCHEDULER_TEST_DRIVER", None)  # the DSN's driver (psycopg: what the README uses)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", "."],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"the README's tests failed:\n{done.stdout}\n{done.stderr}"
    assert f"{tests} passed" in done.stdout, done.stdout


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_readme_example_runs(name: str, pg_scheduler_server: TestServer, tmp_path: Path) -> None:
    schema = f"readme_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_scheduler_server.url_for("psycopg"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = sa.make_url(pg_scheduler_server.url_for("psycopg")).update_query_dict(
        {"options": f"-csearch_path={schema}"}
    )
    script = tmp_path / f"readme_{name}.py"  # never shadow a module (asyncio.py)
    script.write_text(EXAMPLES[name])
    env = {**os.environ, "PG_SCHEDULER_DATABASE_URL": url.render_as_string(hide_password=False)}
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, (
            f"README example {name!r} failed:\n{done.stdout}\n{done.stderr}"
        )
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()
