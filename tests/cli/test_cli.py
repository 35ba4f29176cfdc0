"""``pg-scheduler``: every command against a real PostgreSQL, and every bad input.

Commands run in-process through click's ``CliRunner`` (the same ``RootGroup.main`` the console
script runs, so exit codes and the one-line errors are the real ones). ``worker`` runs as a real
subprocess wherever signals matter.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from pg_scheduler import JobStatus, Scheduler, SchedulerConfig, migrations
from pg_scheduler.cli.base import URL_ENV
from pg_scheduler.cli.commands import cli
from pg_scheduler.models import Models
from pg_scheduler.naming import Names
from pg_scheduler.states import RunStatus
from pg_scheduler.testing import TestServer, unique_prefix, wait_until
from tests.support.factories import ago, count_jobs, make_job, make_node, make_run, runs_of

Invoke = Callable[..., Result]


@pytest.fixture
def invoke() -> Invoke:
    """Run ``pg-scheduler ARGS`` in-process; ``PG_SCHEDULER_DATABASE_URL`` unset unless given."""

    def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
        runner = CliRunner(env={URL_ENV: None, "PG_SCHEDULER_TABLE_PREFIX": None, **(env or {})})
        return runner.invoke(cli, list(args), prog_name="pg-scheduler")

    return run


@pytest.fixture
def on(pg_scheduler_url: str, names: Names) -> list[str]:
    """The flags that point a command at this test's installed tables."""
    return ["--url", pg_scheduler_url, "--table-prefix", names.prefix]


def one_error_line(result: Result) -> str:
    """The error output, asserted to be exactly one ``pg-scheduler: error:`` line, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pg-scheduler: error: "), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------- db
@pytest.mark.owner_only
def test_db_upgrade_installs_then_is_a_no_op(
    invoke: Invoke, pg_scheduler_url: str, engine: sa.Engine
) -> None:
    prefix = unique_prefix()
    try:
        first = invoke("db", "upgrade", "--url", pg_scheduler_url, "--table-prefix", prefix)
        assert first.exit_code == 0, first.output
        assert "upgraded from not installed to" in first.stdout
        assert migrations.current(engine, table_prefix=prefix) == migrations.head()

        again = invoke("db", "upgrade", "--url", pg_scheduler_url, "--table-prefix", prefix)
        assert again.exit_code == 0, again.output
        assert f"already at {migrations.head()} (head)" in again.stdout
    finally:
        migrations.downgrade(engine, table_prefix=prefix)


@pytest.mark.owner_only
def test_db_upgrade_with_a_schema_and_the_url_from_the_environment(
    invoke: Invoke, pg_scheduler_url: str, engine: sa.Engine
) -> None:
    prefix, schema = unique_prefix(), f"s_{uuid.uuid4().hex[:8]}"
    env: dict[str, str | None] = {URL_ENV: pg_scheduler_url}
    try:
        result = invoke("db", "upgrade", "--table-prefix", prefix, "--schema", schema, env=env)
        assert result.exit_code == 0, result.output
        assert f"{schema}.{prefix}scheduled_jobs" in result.stdout
        assert migrations.is_up_to_date(engine, table_prefix=prefix, schema=schema)
    finally:
        migrations.downgrade(engine, table_prefix=prefix, schema=schema)
        with engine.begin() as conn:
            conn.execute(sa.schema.DropSchema(schema, cascade=True, if_exists=True))


def test_db_current_reports_the_revision(invoke: Invoke, on: list[str]) -> None:
    text = invoke("db", "current", *on)
    assert text.exit_code == 0, text.output
    assert f"{migrations.head()} (head)" in text.stdout

    as_json = invoke("db", "current", *on, "--json", "--check")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == {
        "current": migrations.head(),
        "head": migrations.head(),
        "up_to_date": True,
        "table_prefix": on[-1],
        "schema": None,
    }


def test_db_current_check_fails_when_not_installed(invoke: Invoke, pg_scheduler_url: str) -> None:
    prefix = unique_prefix()
    result = invoke("db", "current", "--url", pg_scheduler_url, "--table-prefix", prefix, "--check")
    assert result.exit_code == 1
    assert "not installed" in result.stdout
    line = one_error_line(result)
    assert f"run `pg-scheduler db upgrade --url URL --table-prefix {prefix}`" in line


@pytest.mark.owner_only
def test_db_downgrade_asks_for_yes_then_drops_the_tables(
    invoke: Invoke, pg_scheduler_url: str, engine: sa.Engine
) -> None:
    prefix = unique_prefix()
    flags = ["--url", pg_scheduler_url, "--table-prefix", prefix]
    migrations.upgrade(engine, table_prefix=prefix)

    refused = invoke("db", "downgrade", *flags)
    assert refused.exit_code == 2
    assert "pass --yes to confirm" in one_error_line(refused)
    assert migrations.current(engine, table_prefix=prefix) == migrations.head()

    done = invoke("db", "downgrade", *flags, "--yes")
    assert done.exit_code == 0, done.output
    assert "to not installed" in done.stdout
    assert migrations.current(engine, table_prefix=prefix) is None


@pytest.mark.owner_only
def test_db_upgrade_refused_permission(
    invoke: Invoke, pg_scheduler_url: str, engine: sa.Engine
) -> None:
    with engine.connect() as conn:
        if int(conn.exec_driver_sql("SHOW server_version_num").scalar_one()) < 150000:
            pytest.skip("before PostgreSQL 15, every role may create tables in public")
    role = f"pgs_cli_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD 'pw' NOSUPERUSER NOCREATEDB")
    try:
        url = sa.make_url(pg_scheduler_url).set(username=role, password="pw")
        result = invoke(
            "db",
            "upgrade",
            "--url",
            url.render_as_string(hide_password=False),
            "--table-prefix",
            unique_prefix(),
        )
        assert result.exit_code == 1
        line = one_error_line(result)
        assert "the database role lacks the privilege" in line
        assert "permission denied" in line
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP ROLE {role}")


def test_db_sql_needs_no_database(invoke: Invoke) -> None:
    result = invoke("db", "sql", "--table-prefix", "review_")
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE review_scheduled_jobs" in result.stdout
    assert "CREATE TABLE review_alembic_version" in result.stdout


# ---------------------------------------------------------------------------------------- jobs
def test_jobs_list_as_a_table_and_as_json(
    invoke: Invoke, on: list[str], engine: sa.Engine, models: Models
) -> None:
    pending = make_job(engine, models, name="send_email", params={"to": "a@b.c"})
    failed = make_job(engine, models, name="send_email", status="failed", last_error="Boom: no")
    recurring = make_job(engine, models, name="cleanup", job_type="recurring")

    table = invoke("jobs", "list", *on)
    assert table.exit_code == 0, table.output
    for key in (pending.key, failed.key, recurring.key):
        assert key in table.stdout
    assert "Boom: no" in table.stdout

    listed = invoke("jobs", "list", *on, "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert {row["key"] for row in rows} == {pending.key, failed.key, recurring.key}
    row = next(r for r in rows if r["key"] == pending.key)
    assert row["params"] == {"to": "a@b.c"}
    assert row["status"] == "pending" and row["job_type"] == "one_time"
    assert row["next_run"].endswith("+00:00")  # ISO 8601 with the offset
    assert row["misfire_grace"] == 60.0  # durations in seconds

    by_name = json.loads(invoke("jobs", "list", *on, "--json", "--name", "send_email").stdout)
    assert {r["key"] for r in by_name} == {pending.key, failed.key}
    by_status = json.loads(invoke("jobs", "list", *on, "--json", "--status", "failed").stdout)
    assert [r["key"] for r in by_status] == [failed.key]
    limited = json.loads(invoke("jobs", "list", *on, "--json", "--limit", "1").stdout)
    assert len(limited) == 1


def test_jobs_list_when_empty(invoke: Invoke, on: list[str]) -> None:
    result = invoke("jobs", "list", *on)
    assert result.exit_code == 0
    assert "no jobs in" in result.stdout
    assert json.loads(invoke("jobs", "list", *on, "--json").stdout) == []


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_flags_work_before_and_after_the_subcommand(
    invoke: Invoke, on: list[str], where: str
) -> None:
    args = ["jobs", "list", *on]
    traced = invoke("--traceback", *args) if where == "before" else invoke(*args, "--traceback")
    assert traced.exit_code == 0, traced.output
    assert "no jobs in" in traced.stdout
    version = invoke("--version", "nodes") if where == "before" else invoke("nodes", "--version")
    assert version.exit_code == 0, version.output
    assert "sqlalchemy-pg-scheduler" in version.stdout
    # After a "--" nothing is a flag: it stays an argument of the subcommand.
    literal = invoke("jobs", "show", *on, "--", "--traceback")
    assert literal.exit_code == 1
    assert "--traceback" in one_error_line(literal)


def test_jobs_show_prints_every_field_the_error_and_the_runs(
    invoke: Invoke, on: list[str], engine: sa.Engine, models: Models
) -> None:
    job = make_job(
        engine,
        models,
        status="failed",
        attempt=2,
        max_retries=1,
        params={"n": 1},
        last_error="ValueError: bad n\nTraceback (most recent call last):\n  ...",
    )
    make_run(engine, models, job, status="failed", attempt=1, started_at=ago(seconds=5))
    make_run(engine, models, job, status="failed", attempt=2)

    shown = invoke("jobs", "show", job.key, *on)
    assert shown.exit_code == 0, shown.output
    for text in (job.key, "max_retries", '{"n": 1}', "ValueError: bad n", "recent runs"):
        assert text in shown.stdout

    as_json = json.loads(invoke("jobs", "show", job.key, *on, "--json").stdout)
    assert as_json["key"] == job.key
    assert as_json["status"] == "failed" and as_json["attempt"] == 2
    assert as_json["last_error"].startswith("ValueError: bad n")


def test_jobs_cancel_a_pending_job(
    invoke: Invoke, on: list[str], engine: sa.Engine, models: Models
) -> None:
    job = make_job(engine, models)
    result = invoke("jobs", "cancel", job.key, *on, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "key": job.key,
        "cancelled": True,
        "requested": False,
        "node_id": None,
    }
    assert count_jobs(engine, models, key=job.key, status="cancelled") == 1


def test_jobs_cancel_a_running_job_asks_its_node(
    invoke: Invoke, on: list[str], engine: sa.Engine, models: Models
) -> None:
    job = make_job(engine, models, status="running")
    result = invoke("jobs", "cancel", job.key, *on)
    assert result.exit_code == 0, result.output
    assert f"is running on {job.node_id}: asked it to stop" in result.stdout
    assert count_jobs(engine, models, key=job.key, cancel_requested=True) == 1


def test_jobs_cancel_a_finished_job_is_refused(
    invoke: Invoke, on: list[str], engine: sa.Engine, models: Models
) -> None:
    job = make_job(engine, models, status="completed")
    result = invoke("jobs", "cancel", job.key, *on)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "is completed and cannot be cancelled" in line
    assert "only pending or running jobs can be cancelled" in line


def test_jobs_retry_a_failed_job(
    invoke: Invoke, on: list[str], engine: sa.Engine, models: Models
) -> None:
    job = make_job(engine, models, status="failed", attempt=1)
    result = invoke("jobs", "retry", job.key, *on, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "pending" and record["attempt"] == 0

    again = invoke("jobs", "retry", job.key, *on)
    assert again.exit_code == 1
    assert "only failed or cancelled jobs can be retried" in one_error_line(again)


def test_jobs_trigger_makes_a_recurring_job_due_now(
    invoke: Invoke, on: list[str], engine: sa.Engine, models: Models
) -> None:
    job = make_job(engine, models, job_type="recurring", next_run=ago(hours=-1))
    result = invoke("jobs", "trigger", job.key, *on)
    assert result.exit_code == 0, result.output
    assert "is due now" in result.stdout
    with engine.connect() as conn:
        due = conn.execute(
            sa.select(models.jobs.c.next_run <= sa.func.now()).where(models.jobs.c.key == job.key)
        ).scalar_one()
    assert due


def test_runs_shows_one_job_s_history(
    invoke: Invoke, on: list[str], engine: sa.Engine, models: Models
) -> None:
    job = make_job(engine, models, status="completed", attempt=2, max_retries=2)
    make_run(engine, models, job, status="failed", attempt=1, started_at=ago(seconds=3))
    make_run(engine, models, job, status="completed", attempt=2)

    table = invoke("runs", job.key, *on)
    assert table.exit_code == 0, table.output
    assert "failed" in table.stdout and "completed" in table.stdout

    runs = json.loads(invoke("runs", job.key, *on, "--json").stdout)
    assert [(r["attempt"], r["status"]) for r in runs] == [(2, "completed"), (1, "failed")]
    assert set(runs[0]) >= {"id", "job_key", "scheduled_at", "node_id", "started_at", "error"}

    never_ran = make_job(engine, models)
    assert "has not run yet" in invoke("runs", never_ran.key, *on).stdout


def test_nodes_lists_live_nodes_and_with_all_the_others(
    invoke: Invoke, on: list[str], engine: sa.Engine, models: Models
) -> None:
    live = make_node(engine, models, ["send_email", "cleanup"])
    stopped = make_node(engine, models, ["send_email"], stopped_at=ago(minutes=1))
    silent = make_node(engine, models, ["cleanup"], last_seen_at=ago(hours=1))

    table = invoke("nodes", *on)
    assert table.exit_code == 0, table.output
    assert live.node_id in table.stdout and "cleanup, send_email" in table.stdout
    assert stopped.node_id not in table.stdout and silent.node_id not in table.stdout

    everything = json.loads(invoke("nodes", *on, "--all", "--json").stdout)
    states = {n["node_id"]: n["state"] for n in everything}
    assert states == {live.node_id: "live", stopped.node_id: "stopped", silent.node_id: "silent"}


# ---------------------------------------------------------------------------------------- bad input
def test_unreachable_database(invoke: Invoke) -> None:
    url = f"postgresql+psycopg://someone:secret@127.0.0.1:{closed_port()}/db"
    result = invoke("jobs", "list", "--url", url)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "cannot connect to PostgreSQL at postgresql+psycopg://someone:***@127.0.0.1" in line
    assert "check that the server is running" in line
    assert "secret" not in line


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "invalid --url 'not a url'"),
        (
            "postgresql+psycopg://u:secret@host:notaport/db",
            "invalid --url 'postgresql+psycopg://u:***@",
        ),
        ("mysql://u:secret@host/db", "it is a mysql URL but pg_scheduler needs PostgreSQL"),
        ("sqlite:///x.db", "it is a sqlite URL"),
        ("postgresql+nosuchdriver://u@host/db", "unknown driver 'nosuchdriver'"),
    ],
)
def test_bad_url(invoke: Invoke, url: str, expected: str) -> None:
    result = invoke("db", "upgrade", "--url", url)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert expected in line
    assert "secret" not in line
    assert "postgresql+psycopg://user:password@host:5432/dbname" in line or "driver" in line


def test_no_url_at_all(invoke: Invoke) -> None:
    result = invoke("jobs", "list")
    assert result.exit_code == 2
    assert "no database URL: pass --url" in one_error_line(result)
    assert URL_ENV in one_error_line(result)


def test_bad_table_prefix(invoke: Invoke, pg_scheduler_url: str) -> None:
    result = invoke("jobs", "list", "--url", pg_scheduler_url, "--table-prefix", "Robert'); --")
    assert result.exit_code == 2
    assert "invalid --table-prefix" in one_error_line(result)


@pytest.mark.parametrize(
    "command",
    [["jobs", "show"], ["jobs", "cancel"], ["jobs", "retry"], ["jobs", "trigger"], ["runs"]],
)
def test_unknown_job_key(invoke: Invoke, on: list[str], command: list[str]) -> None:
    result = invoke(*command, "no_such#job", *on)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "no job with key 'no_such#job'" in line
    assert f"pg-scheduler jobs list --url URL --table-prefix {on[-1]}" in line


def test_schema_not_installed(invoke: Invoke, pg_scheduler_url: str) -> None:
    prefix = unique_prefix()
    result = invoke("jobs", "list", "--url", pg_scheduler_url, "--table-prefix", prefix)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert f"({prefix}scheduled_jobs) are not installed" in line
    assert f"run `pg-scheduler db upgrade --url URL --table-prefix {prefix}`" in line


def test_schema_not_installed_with_the_url_from_the_environment(
    invoke: Invoke, pg_scheduler_url: str
) -> None:
    env: dict[str, str | None] = {URL_ENV: pg_scheduler_url}
    result = invoke("nodes", "--table-prefix", "nothing_here_", "--schema", "elsewhere", env=env)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "run `pg-scheduler db upgrade --table-prefix nothing_here_ --schema elsewhere`" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["jobs", "frobnicate"], "No such command 'frobnicate'"),
        (["jobs", "show"], "Missing argument 'KEY'"),
        (["jobs", "list", "--status", "sleeping"], "Invalid value for '--status'"),
        (["jobs", "list", "--limit", "0"], "Invalid value for '--limit'"),
        (["nodes", "--frobnicate"], "No such option '--frobnicate'"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(
    invoke: Invoke, args: list[str], expected: str
) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert expected in line
    assert "--help'" in line


def test_missing_cli_extra_names_the_pip_command(tmp_path: Path) -> None:
    # click is blocked, as in an install without the [cli] extra.
    code = "import sys; sys.modules['click'] = None; from pg_scheduler.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "jobs", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "pg-scheduler: error: the command-line interface needs click, which is not installed: "
        "pip install 'sqlalchemy-pg-scheduler[cli]'"
    )


def test_console_script_runs_the_same_commands(pg_scheduler_url: str, names: Names) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pg_scheduler.cli", "db", "current", "--json"],
        env={**os.environ, URL_ENV: pg_scheduler_url, "PG_SCHEDULER_TABLE_PREFIX": names.prefix},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["up_to_date"] is True


# ---------------------------------------------------------------------------------------- worker
APP = """
import os
import sqlalchemy as sa
from pg_scheduler import Scheduler, SchedulerConfig

PREFIX = {prefix!r}


def create(url):
    scheduler = Scheduler(
        SchedulerConfig(engine=sa.create_engine(url), table_prefix=PREFIX, node_name="app-node")
    )

    @scheduler.recurring("every_second", "* * * * * *")
    def every_second(ctx):
        print("tick", ctx.scheduled_at, flush=True)

    return scheduler


def no_arguments():
    return create(os.environ["PG_SCHEDULER_DATABASE_URL"])


async def create_async(url):
    from sqlalchemy.ext.asyncio import create_async_engine
    from pg_scheduler.aio import AsyncScheduler

    engine = create_async_engine(url)
    scheduler = AsyncScheduler(
        SchedulerConfig(engine=engine, table_prefix=PREFIX, node_name="async-node")
    )

    @scheduler.recurring("every_second", "* * * * * *")
    async def every_second(ctx):
        print("tick", ctx.scheduled_at, flush=True)

    return scheduler


elsewhere = Scheduler(
    SchedulerConfig(engine=sa.create_engine("postgresql+psycopg://x@elsewhere.invalid/db"))
)
number = 42


def not_a_scheduler(url):
    return "a string"
"""


@pytest.fixture
def app_module(tmp_path: Path, names: Names, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module defining the app's Scheduler in several ways; its name is unique to the test."""
    module = f"app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(APP.format(prefix=names.prefix)))
    monkeypatch.chdir(tmp_path)  # the worker imports from the current directory
    return module


class Worker:
    """``pg-scheduler worker`` in a subprocess, its output collected line by line."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pg_scheduler.cli", "worker", *args],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        if w.process.poll() is None:
            w.process.kill()
            w.process.wait()


def observer(engine: sa.Engine, names: Names) -> Scheduler:
    return Scheduler(SchedulerConfig(engine=engine, table_prefix=names.prefix))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_worker_runs_the_app_and_stops_gracefully_on_a_signal(
    signum: int,
    app_module: str,
    tmp_path: Path,
    pg_scheduler_url: str,
    engine: sa.Engine,
    names: Names,
    models: Models,
    workers: list[Worker],
) -> None:
    worker = Worker([f"{app_module}:create", "--url", pg_scheduler_url], tmp_path, {})
    workers.append(worker)
    watch = observer(engine, names)
    node = wait_until(watch.list_nodes, timeout=60, message="the worker's node")[0]
    assert node.node_name == "app-node" and node.job_names == ("every_second",)
    wait_until(
        lambda: any(r["status"] == "completed" for r in runs_of(engine, models, "every_second")),
        timeout=30,
        message="a completed tick",
    )

    assert worker.stop(signum) == 0, worker.output()
    assert "worker" in worker.output() and "stopped" in worker.output()
    (after,) = watch.list_nodes()
    assert after.stopped_at is not None  # deregistered by shutdown()
    assert count_jobs(engine, models, status=JobStatus.RUNNING.value) == 0
    statuses = {r["status"] for r in runs_of(engine, models, "every_second")}
    assert RunStatus.RUNNING.value not in statuses


SLOW_APP = """
import datetime as dt
import sqlalchemy as sa
from pg_scheduler import Scheduler, SchedulerConfig


def create(url):
    config = SchedulerConfig(
        engine=sa.create_engine(url),
        table_prefix={prefix!r},
        shutdown_timeout=dt.timedelta(seconds=7),
    )
    scheduler = Scheduler(config)

    @scheduler.one_time("slow")
    def slow(ctx):
        ctx.cancelled.wait(60)
        ctx.raise_if_cancelled()

    return scheduler
"""


@pytest.mark.slow
def test_worker_first_ctrl_c_says_what_it_waits_for(
    tmp_path: Path,
    pg_scheduler_url: str,
    engine: sa.Engine,
    names: Names,
    workers: list[Worker],
) -> None:
    (tmp_path / "slow_app.py").write_text(textwrap.dedent(SLOW_APP.format(prefix=names.prefix)))
    worker = Worker(["slow_app:create", "--url", pg_scheduler_url], tmp_path, {})
    workers.append(worker)
    watch = observer(engine, names)
    wait_until(watch.list_nodes, timeout=60, message="the worker's node")
    key = watch.enqueue("slow")
    wait_until(
        lambda: (job := watch.get_job(key)) is not None and job.status == JobStatus.RUNNING,
        timeout=30,
        message="the slow job running",
    )
    assert worker.stop(signal.SIGINT) == 0, worker.output()
    out = worker.output()
    assert "waiting up to 7s for 1 running job to finish" in out, out
    assert "Ctrl-C again" in out, out


@pytest.mark.slow
def test_worker_runs_an_async_app_from_an_async_factory(
    app_module: str,
    tmp_path: Path,
    pg_scheduler_server: TestServer,
    engine: sa.Engine,
    names: Names,
    models: Models,
    workers: list[Worker],
) -> None:
    url = pg_scheduler_server.url_for("psycopg")  # psycopg 3 is sync and async alike
    worker = Worker([f"{app_module}:create_async", "--url", url], tmp_path, {})
    workers.append(worker)
    watch = observer(engine, names)
    node = wait_until(watch.list_nodes, timeout=60, message="the worker's node")[0]
    assert node.node_name == "async-node"
    wait_until(
        lambda: any(r["status"] == "completed" for r in runs_of(engine, models, "every_second")),
        timeout=30,
        message="a completed tick",
    )
    assert worker.stop() == 0, worker.output()
    (after,) = watch.list_nodes()
    assert after.stopped_at is not None
    assert count_jobs(engine, models, status=JobStatus.RUNNING.value) == 0


@pytest.mark.slow
def test_worker_runs_a_scheduler_instance_built_from_the_environment(
    app_module: str,
    tmp_path: Path,
    pg_scheduler_url: str,
    engine: sa.Engine,
    names: Names,
    workers: list[Worker],
) -> None:
    # --url is exported as PG_SCHEDULER_DATABASE_URL before the module is imported.
    worker = Worker([f"{app_module}:no_arguments", "--url", pg_scheduler_url], tmp_path, {})
    workers.append(worker)
    watch = observer(engine, names)
    wait_until(watch.list_nodes, timeout=60, message="the worker's node")
    assert worker.stop() == 0, worker.output()


@pytest.mark.slow
def test_worker_falls_back_to_the_embedded_server_with_a_warning(
    tmp_path: Path, workers: list[Worker]
) -> None:
    marker = tmp_path / "ticked"
    (tmp_path / "embedded_app.py").write_text(
        textwrap.dedent(
            f"""
            import pathlib
            import sqlalchemy as sa
            from pg_scheduler import Scheduler, SchedulerConfig

            def create(url):
                config = SchedulerConfig(engine=sa.create_engine(url), create_schema=True)
                scheduler = Scheduler(config)

                @scheduler.recurring("every_second", "* * * * * *")
                def every_second(ctx):
                    pathlib.Path({str(marker)!r}).write_text(str(ctx.scheduled_at))

                return scheduler
            """
        )
    )
    env = {URL_ENV: ""}  # set but empty: no URL
    worker = Worker(["embedded_app:create", "--data-dir", str(tmp_path / "pg")], tmp_path, env)
    workers.append(worker)
    wait_until(
        lambda: marker.exists() or worker.process.poll() is not None,
        timeout=120,
        message="a tick on the embedded server",
    )
    assert marker.exists(), worker.output()
    assert worker.stop() == 0, worker.output()
    assert "no database URL (--url or PG_SCHEDULER_DATABASE_URL)" in worker.output()
    assert "embedded PostgreSQL" in worker.output()


def initdb_running(data_dir: Path) -> bool:
    """Whether an initdb for ``data_dir`` is running (as any user): /proc, no extra tools."""
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"initdb") and str(data_dir).encode() in b" ".join(argv):
            return True
    return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds initdb through /proc")
@pytest.mark.parametrize("command", ["demo", "worker"])
def test_ctrl_c_while_the_embedded_server_starts_says_interrupted(
    command: str, tmp_path: Path
) -> None:
    (tmp_path / "plain_app.py").write_text(
        "import sqlalchemy as sa\n"
        "from pg_scheduler import Scheduler, SchedulerConfig\n"
        "def create(url):\n"
        "    return Scheduler(SchedulerConfig(engine=sa.create_engine(url)))\n"
    )
    data_dir = tmp_path / "pg"
    args = {"demo": ["demo"], "worker": ["worker", "plain_app:create"]}[command]
    process = subprocess.Popen(
        [sys.executable, "-m", "pg_scheduler.cli", *args, "--data-dir", str(data_dir)],
        cwd=tmp_path,
        env={**os.environ, URL_ENV: ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: initdb_running(data_dir) or process.poll() is not None,
            timeout=60,
            interval=0.01,
            message="initdb of the embedded server",
        )
        assert process.poll() is None, process.communicate()
        # A terminal's Ctrl-C signals the whole foreground group: initdb dies of it too.
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, out + err
    assert err.strip().splitlines()[-1] == "pg-scheduler: error: interrupted", err
    assert "Traceback" not in err and "Failed postgres command" not in err, err


@pytest.mark.parametrize(
    ("target", "code", "expected"),
    [
        ("no_such_module_xyz:app", 2, "cannot import module 'no_such_module_xyz'"),
        ("{module}", 2, "is not MODULE:ATTRIBUTE"),
        ("{module}:nope", 2, "has no attribute 'nope'"),
        ("{module}:number", 2, "is an int, not a pg_scheduler Scheduler"),
        ("{module}:not_a_scheduler", 2, "returned a str, not a pg_scheduler Scheduler"),
        ("{module}:elsewhere", 2, "brings its own engine on postgresql+psycopg://x@elsewhere"),
    ],
)
def test_worker_bad_app(
    invoke: Invoke,
    app_module: str,
    pg_scheduler_url: str,
    target: str,
    code: int,
    expected: str,
) -> None:
    result = invoke("worker", target.format(module=app_module), "--url", pg_scheduler_url)
    assert result.exit_code == code, result.output
    assert expected in one_error_line(result)


def test_worker_module_that_fails_to_import(
    invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_scheduler_url: str
) -> None:
    module = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text("import not_installed_dependency_xyz\n")
    monkeypatch.chdir(tmp_path)
    result = invoke("worker", f"{module}:app", "--url", pg_scheduler_url)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert f"importing '{module}' failed" in line and "not_installed_dependency_xyz" in line


def test_worker_schema_not_installed(
    invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_scheduler_url: str
) -> None:
    module = f"uninstalled_{uuid.uuid4().hex[:8]}"
    prefix = unique_prefix()
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            f"""
            import sqlalchemy as sa
            from pg_scheduler import Scheduler, SchedulerConfig

            def create(url):
                return Scheduler(
                    SchedulerConfig(engine=sa.create_engine(url), table_prefix={prefix!r})
                )
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    result = invoke("worker", f"{module}:create", "--url", pg_scheduler_url)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert f"run `pg-scheduler db upgrade --url URL --table-prefix {prefix}`" in line
