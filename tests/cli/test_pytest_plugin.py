"""The pytest plugin (``pytest_plugins = ["pg_scheduler.testing"]``) as an application uses it:
a real pytest run in a subprocess, on the server this session already runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pg_scheduler.testing import TestServer

APP_TEST = """
pytest_plugins = ["pg_scheduler.testing"]


def test_uses_the_server(pg_scheduler_url):
    assert pg_scheduler_url
"""


@pytest.mark.parametrize(("flags", "shown"), [((), False), (("-v",), True)])
def test_server_line_only_with_verbose(
    tmp_path: Path, pg_scheduler_server: TestServer, flags: tuple[str, ...], shown: bool
) -> None:
    (tmp_path / "test_app.py").write_text(APP_TEST)
    env = {**os.environ, "PG_SCHEDULER_TEST_DSN": pg_scheduler_server.url}
    env.pop("PG_SCHEDULER_TEST_ROLE", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *flags, "test_app.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("pg_scheduler tests ran against PostgreSQL" in result.stdout) is shown, result.stdout
