"""The distribution is ``sqlalchemy-pg-scheduler`` (``pg-scheduler`` on PyPI is another project);
the import name stays ``pg_scheduler`` and the command ``pg-scheduler``."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import pg_scheduler

REPO = Path(__file__).resolve().parents[2]
DISTRIBUTION = "sqlalchemy-pg-scheduler"
# An install command with the old name (with any extra) installs the unrelated project.
OLD = "pg-scheduler" + "["


def test_pyproject_names_the_distribution_and_refers_to_itself_by_it() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION
    assert project["scripts"] == {"pg-scheduler": "pg_scheduler.cli:main"}
    selves = [
        req
        for reqs in project["optional-dependencies"].values()
        for req in reqs
        if "scheduler" in req
    ]
    assert selves and all(req.startswith(f"{DISTRIBUTION}[") for req in selves), selves
    assert all("example.invalid" not in url for url in project["urls"].values())


def test_no_install_command_names_the_other_project() -> None:
    sources = [REPO / "README.md", REPO / "pyproject.toml", REPO / ".ci" / "run"]
    for folder in ("pg_scheduler", "examples", "tests", "benchmarks"):
        sources += sorted((REPO / folder).rglob("*.py"))
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in sources
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if OLD in line and f"{DISTRIBUTION}[" not in line
    ]
    assert offenders == []


def test_version_names_the_distribution() -> None:
    assert importlib.metadata.version(DISTRIBUTION) == pg_scheduler.__version__
    done = subprocess.run(
        [sys.executable, "-m", "pg_scheduler.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == f"pg-scheduler ({DISTRIBUTION}) {pg_scheduler.__version__}"
