"""The ``pg-scheduler`` commands: click parses the command line, rich draws the tables.

Loaded by ``pg_scheduler.cli.main`` once the ``cli`` extra is known to be installed; the exit codes
and the one-line error format are described there. Commands that talk to PostgreSQL take ``--url``
(or ``PG_SCHEDULER_DATABASE_URL``), ``--table-prefix`` and ``--schema``; listing commands take
``--json`` for scripts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from alembic.util import CommandError
from click.core import ParameterSource
from rich.console import Console
from rich.text import Text

from pg_scheduler import embedded, migrations
from pg_scheduler.config import DEFAULT_NO_HEARTBEAT_TIMEOUT, SchedulerConfig
from pg_scheduler.errors import (
    EmbeddedPostgresError,
    InvalidStateError,
    MigrationError,
    UnknownJobError,
)
from pg_scheduler.scheduler import Scheduler
from pg_scheduler.states import JobStatus, JobType

from .base import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    INTERRUPTED,
    PREFIX_ENV,
    SCHEMA_ENV,
    TRACEBACK_ENV,
    URL_ENV,
    URL_EXAMPLE,
    CliError,
    Database,
    UsageProblem,
    describe,
    first_line,
    parse_names,
    parse_url,
    report,
)
from .serve import configure_logging, serve, stop_signals
from .views import job_fields, jobs_table, node_state, nodes_table, plain, runs_table, to_json, when

F = TypeVar("F", bound=Callable[..., Any])


GLOBAL_FLAGS = ("--traceback", "--version")


def hoist_global_flags(argv: list[str]) -> list[str]:
    """``argv`` with the root's flags moved in front, so that ``jobs list --traceback`` means
    ``--traceback jobs list`` (click only takes a group's options before its subcommand).
    Nothing after a ``--`` moves: that is an argument, whatever it looks like."""
    options = before_separator(argv)
    flags = [arg for arg in options if arg in GLOBAL_FLAGS]
    rest = [arg for arg in options if arg not in GLOBAL_FLAGS]
    return [*flags, *rest, *argv[len(options) :]]


def before_separator(argv: list[str]) -> list[str]:
    return argv[: argv.index("--")] if "--" in argv else argv


class RootGroup(click.Group):
    """The root group: turns every failure into one line on stderr and an exit code."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> int:
        argv = hoist_global_flags(list(args) if args is not None else sys.argv[1:])
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else EXIT_OK
        except click.Abort as exc:
            interrupted = isinstance(exc.__cause__, KeyboardInterrupt)
            report(INTERRUPTED if interrupted else "aborted")
            code = EXIT_INTERRUPTED if interrupted else EXIT_FAILURE
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except BrokenPipeError:
            # `pg-scheduler jobs list | head`: the reader left; say nothing more, to anyone.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until exit
            code = EXIT_FAILURE
        except Exception as exc:
            if "--traceback" in before_separator(argv) or os.environ.get(TRACEBACK_ENV):
                raise
            message, code = describe(exc)
            report(message)
        if standalone_mode:
            sys.exit(code)
        return code


def stdout() -> Console:
    """A console on the current stdout (looked up now, so CliRunner's capture sees it).

    Piped output is not cut to 80 columns: a table's rows stay whole for grep and less.
    """
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 250
    return Console(file=sys.stdout, soft_wrap=True, width=wide)


def print_json(value: Any) -> None:
    click.echo(to_json(value))


def database_options(f: F) -> F:
    """``--url``, ``--table-prefix`` and ``--schema``, handed to the command as ``db: Database``."""

    @functools.wraps(f)
    def wrapper(
        *args: Any, url: str | None, table_prefix: str, schema: str | None, **kw: Any
    ) -> Any:
        ctx = click.get_current_context()
        from_env = ctx.get_parameter_source("url") is ParameterSource.ENVIRONMENT
        names = parse_names(table_prefix, schema)
        return f(*args, db=Database(parse_url(url), names, from_env), **kw)

    options = [
        click.option(
            "--url",
            envvar=URL_ENV,
            metavar="URL",
            help=f"SQLAlchemy URL of the database, e.g. {URL_EXAMPLE} [env: {URL_ENV}].",
        ),
        click.option(
            "--table-prefix",
            envvar=PREFIX_ENV,
            default="",
            help=f"Prefix of the tables, as in SchedulerConfig.table_prefix [env: {PREFIX_ENV}].",
        ),
        click.option(
            "--schema",
            envvar=SCHEMA_ENV,
            default=None,
            help=f"PostgreSQL schema of the tables (default: search path) [env: {SCHEMA_ENV}].",
        ),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------- root
@click.group(cls=RootGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--traceback",
    is_flag=True,
    help=f"Show the traceback of an unexpected error [env: {TRACEBACK_ENV}=1].",
)
@click.version_option(
    package_name="sqlalchemy-pg-scheduler", message="%(prog)s (%(package)s) %(version)s"
)
def cli(traceback: bool) -> None:
    """pg_scheduler: PostgreSQL-backed cron and one-time jobs for SQLAlchemy applications.

    Start with `pg-scheduler demo`. Exit codes: 0 success, 1 failure, 2 bad command line,
    130 interrupted.
    """


# ---------------------------------------------------------------------------------------- db
@cli.group()
def db() -> None:
    """Install, upgrade and inspect pg_scheduler's tables (Alembic, with its own version table)."""


def _run_migration(action: Callable[[], None]) -> None:
    try:
        action()
    except CommandError as exc:  # an unknown --revision, mostly
        raise UsageProblem(f"invalid --revision: {first_line(exc)}") from exc
    except MigrationError as exc:
        raise CliError(first_line(exc)) from exc


def _revision_label(revision: str | None) -> str:
    if revision is None:
        return "not installed"
    return f"{revision} (head)" if revision == migrations.head() else revision


@db.command("upgrade")
@database_options
@click.option("--revision", default="head", show_default=True, help="Revision to upgrade to.")
def db_upgrade(db: Database, revision: str) -> None:
    """Install the tables, or upgrade them to REVISION. Safe to run concurrently and repeatedly."""
    engine = db.engine()
    before = migrations.current(engine, names=db.names)
    _run_migration(lambda: migrations.upgrade(engine, names=db.names, revision=revision))
    after = migrations.current(engine, names=db.names)
    if before == after:
        stdout().print(f"pg_scheduler tables {db.where}: already at {_revision_label(after)}")
    else:
        stdout().print(
            f"pg_scheduler tables {db.where}: upgraded from {_revision_label(before)} "
            f"to {_revision_label(after)}"
        )


@db.command("downgrade")
@database_options
@click.option(
    "--revision",
    default="base",
    show_default=True,
    help="Revision to downgrade to; 'base' drops every pg_scheduler table.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def db_downgrade(db: Database, revision: str, yes: bool) -> None:
    """Downgrade the tables to REVISION (default: drop them, with every job and run in them)."""
    if not yes:
        if not sys.stdin.isatty():
            raise UsageProblem(
                f"downgrading {db.where} to {revision} deletes jobs and their history: "
                "pass --yes to confirm"
            )
        click.confirm(
            f"Downgrade pg_scheduler tables {db.where} in {db.shown} to {revision}?", abort=True
        )
    engine = db.engine()
    before = migrations.current(engine, names=db.names)
    _run_migration(lambda: migrations.downgrade(engine, names=db.names, revision=revision))
    after = migrations.current(engine, names=db.names)
    stdout().print(
        f"pg_scheduler tables {db.where}: downgraded from {_revision_label(before)} "
        f"to {_revision_label(after)}"
    )


@db.command("current")
@database_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--check", is_flag=True, help="Exit 1 unless the tables are at this version's head.")
def db_current(db: Database, as_json: bool, check: bool) -> None:
    """Show the installed revision of the tables, and this version's head."""
    engine = db.engine()
    current = migrations.current(engine, names=db.names)
    head = migrations.head()
    if as_json:
        print_json(
            {
                "current": current,
                "head": head,
                "up_to_date": current == head,
                "table_prefix": db.names.prefix,
                "schema": db.names.schema,
            }
        )
    elif current == head:
        stdout().print(f"{db.where}: {current} (head)")
    else:
        stdout().print(f"{db.where}: {_revision_label(current)}; head is {head}")
    if check and current != head:
        state = "not installed" if current is None else f"at {current}, not at head {head}"
        raise CliError(f"pg_scheduler tables ({db.where}) are {state}: {db.upgrade_hint()}")


@db.command("sql")
@click.option("--table-prefix", envvar=PREFIX_ENV, default="", help="Prefix of the tables.")
@click.option("--schema", envvar=SCHEMA_ENV, default=None, help="PostgreSQL schema of the tables.")
@click.option("--revision", default="head", show_default=True, help="Revision to upgrade to.")
@click.option("--from-revision", default=None, help="Revision to start from (default: nothing).")
def db_sql(table_prefix: str, schema: str | None, revision: str, from_revision: str | None) -> None:
    """Print the SQL an upgrade would run, for review (offline: needs no database)."""
    names = parse_names(table_prefix, schema)
    out: list[str] = []

    def render() -> None:
        out.append(migrations.sql(names=names, revision=revision, from_revision=from_revision))

    _run_migration(render)
    click.echo(out[0], nl=False)


def open_scheduler(db: Database) -> Scheduler:
    """A (never started) Scheduler on ``db``, for reading and steering jobs."""
    engine = db.engine()
    db.require_schema(engine)
    return Scheduler(
        SchedulerConfig(engine=engine, table_prefix=db.names.prefix, schema=db.names.schema)
    )


@contextlib.contextmanager
def steering(db: Database, key: str, allowed: str) -> Iterator[None]:
    """Turn "no such job" and "not in a state for this" into one line with the way out."""
    try:
        yield
    except UnknownJobError:
        raise unknown_key(db, key) from None
    except InvalidStateError as exc:
        raise CliError(f"{exc}: {allowed} (see `pg-scheduler jobs show KEY{db.flags()}`)") from None


def unknown_key(db: Database, key: str) -> CliError:
    return CliError(
        f"no job with key {key!r} in {db.where}: list the keys with "
        f"`pg-scheduler jobs list{db.flags()}`"
    )


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
key_argument = click.argument("key")


@cli.group()
def jobs() -> None:
    """List, inspect and steer jobs (a job is a row: one per recurring job, one per enqueue)."""


@jobs.command("list")
@database_options
@click.option("--name", default=None, help="Only jobs with this name.")
@click.option(
    "--status", type=click.Choice([s.value for s in JobStatus]), help="Only jobs in this state."
)
@click.option(
    "--type", "job_type", type=click.Choice([t.value for t in JobType]), help="Only this type."
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@json_option
def jobs_list(
    *,
    db: Database,
    name: str | None,
    status: str | None,
    job_type: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List jobs, the next due first. JSON: a list of job objects."""
    found = open_scheduler(db).list_jobs(name=name, status=status, job_type=job_type, limit=limit)
    if as_json:
        print_json(found)
    elif not found:
        stdout().print(f"no jobs in {db.where}")
    else:
        console = stdout()
        console.print(jobs_table(found, wide=console.width >= 160))


@jobs.command("show")
@database_options
@key_argument
@json_option
def jobs_show(db: Database, key: str, as_json: bool) -> None:
    """Show every field of the job KEY, its last error and its recent runs."""
    scheduler = open_scheduler(db)
    job = scheduler.get_job(key)
    if job is None:
        raise unknown_key(db, key)
    if as_json:
        print_json(job)
        return
    console = stdout()
    console.print(job_fields(job))
    if job.last_error:
        console.print(Text("last_error", style="bold"))
        console.print(Text(job.last_error.rstrip()), markup=False)
    runs = scheduler.list_runs(key, limit=10)
    if runs:
        console.print(runs_table(runs, "recent runs"))


@jobs.command("cancel")
@database_options
@key_argument
@json_option
def jobs_cancel(db: Database, key: str, as_json: bool) -> None:
    """Cancel the pending job KEY; a running one is asked to stop (it checks at its heartbeat)."""
    with steering(db, key, "only pending or running jobs can be cancelled"):
        result = open_scheduler(db).cancel_job(key)
    if as_json:
        print_json(result)
    elif result.cancelled:
        stdout().print(f"cancelled {key}")
    else:
        stdout().print(f"{key} is running on {result.node_id}: asked it to stop")


@jobs.command("retry")
@database_options
@key_argument
@json_option
def jobs_retry(db: Database, key: str, as_json: bool) -> None:
    """Run the failed or cancelled job KEY again, now, with a fresh attempt budget."""
    with steering(db, key, "only failed or cancelled jobs can be retried"):
        job = open_scheduler(db).retry_job(key)
    if as_json:
        print_json(job)
    else:
        stdout().print(f"{key} is pending again, due {when(job.next_run)} UTC")


@jobs.command("trigger")
@database_options
@key_argument
@json_option
def jobs_trigger(db: Database, key: str, as_json: bool) -> None:
    """Make the pending job KEY due now (a recurring job runs once, outside its schedule)."""
    with steering(db, key, "only pending jobs can be triggered; `jobs retry` re-runs a failed one"):
        job = open_scheduler(db).trigger(key)
    if as_json:
        print_json(job)
    else:
        stdout().print(f"{key} is due now ({when(job.next_run)} UTC)")


@cli.command()
@database_options
@key_argument
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@json_option
def runs(db: Database, key: str, limit: int, as_json: bool) -> None:
    """History of the job KEY: one row per attempt, newest first. JSON: a list of runs."""
    scheduler = open_scheduler(db)
    found = scheduler.list_runs(key, limit=limit)
    if not found and scheduler.get_job(key) is None:
        raise unknown_key(db, key)
    if as_json:
        print_json(found)
    elif not found:
        stdout().print(f"{key} has not run yet")
    else:
        stdout().print(runs_table(found))


@cli.command()
@database_options
@click.option("--all", "show_all", is_flag=True, help="Also list stopped and silent nodes.")
@click.option(
    "--within",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_NO_HEARTBEAT_TIMEOUT.total_seconds(),
    show_default=True,
    help="A node is live if seen within this many seconds.",
)
@json_option
def nodes(db: Database, show_all: bool, within: float, as_json: bool) -> None:
    """Live nodes (scheduler processes) and the job names each registered."""
    scheduler = open_scheduler(db)
    window = dt.timedelta(seconds=within)
    with scheduler.transaction() as repo:
        now = repo.now()
        found = repo.list_nodes(live_within=None if show_all else window)
    if as_json:
        print_json([{**plain(n), "state": node_state(n, now, window)} for n in found])
    elif not found:
        stdout().print(f"no live nodes in {db.where}" + ("" if show_all else " (try --all)"))
    else:
        stdout().print(nodes_table(found, now, window))


# ---------------------------------------------------------------------------------------- worker
@cli.command()
@click.argument("app", metavar="MODULE:ATTRIBUTE")
@click.option(
    "--url",
    envvar=URL_ENV,
    metavar="URL",
    help=f"Database URL, handed to a factory that takes one [env: {URL_ENV}].",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=embedded.DEFAULT_DATA_DIR,
    show_default=True,
    help="Data directory of the embedded PostgreSQL, used when there is no URL.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def worker(app: str, url: str | None, data_dir: Path, log_level: str) -> None:
    """Run the scheduler that MODULE:ATTRIBUTE defines, until SIGTERM or Ctrl-C.

    \b
    ATTRIBUTE (dots allowed) is one of:
      - a Scheduler or an AsyncScheduler, built with the app's own engine;
      - a function (or async def) without parameters returning one;
      - a function (or async def) taking the database URL and returning one: it gets --url,
        else PG_SCHEDULER_DATABASE_URL, else (with a warning) the URL of an embedded
        PostgreSQL started in --data-dir, whose tables are installed for you: for development.

    --url is also exported as PG_SCHEDULER_DATABASE_URL before MODULE is imported, so an app
    that reads that variable uses it; a --url naming another database than the engine of a
    ready-made scheduler is refused.

    SIGTERM or SIGINT stops claiming, gives running jobs the scheduler's shutdown_timeout to
    finish, hands the others back to the cluster, and exits 0. A second signal stops at once.
    """
    configure_logging(log_level)
    explicit = click.get_current_context().get_parameter_source("url") is (
        ParameterSource.COMMANDLINE
    )
    # Signals are caught from here on: a SIGTERM that arrives while the app is still loading
    # must stop the worker cleanly too, not kill it halfway through start().
    with stop_signals() as stop:
        serve(
            app,
            parse_url(url) if url else None,
            url_is_explicit=explicit,
            data_dir=data_dir,
            stop=stop,
        )


# ---------------------------------------------------------------------------------------- demo
@cli.command()
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    default=None,
    help="Seconds to run, then stop and print the summary [default: until Ctrl-C].",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=embedded.DEFAULT_DATA_DIR,
    show_default=True,
    help="Where the embedded PostgreSQL keeps its data (reused next time) and the nodes' logs.",
)
@click.option(
    "--url",
    metavar="URL",
    default=None,
    help="Use this PostgreSQL instead of the embedded one (its demo_* tables are reset).",
)
@click.option("--nodes", type=click.IntRange(1, 8), default=2, show_default=True)
def demo(duration: float | None, data_dir: Path, url: str | None, nodes: int) -> None:
    """Run a small cluster and prove, from the database, that no tick ran twice.

    Starts (or reuses) an embedded PostgreSQL in --data-dir, resets the demo's tables (prefix
    demo_), starts NODES worker processes with a per-second recurring job, enqueues one-time jobs
    with parameters (one fails twice, then succeeds), and shows jobs, runs and nodes live (plain
    progress lines when stdout is not a terminal). When --duration ends, or on Ctrl-C, the nodes
    shut down gracefully and a summary states how many ticks ran, how many ran twice, and how
    each job ended. Exit code 0 if no tick ran twice and every job ended as expected, 1 if not.
    """
    from . import demo as cluster

    parsed = parse_url(url).render_as_string(hide_password=False) if url else None
    console = stdout()
    with stop_signals() as stop:
        try:
            code = cluster.run(
                url=parsed,
                data_dir=data_dir,
                duration=duration,
                node_count=nodes,
                console=console,
                stop=stop,
            )
        except EmbeddedPostgresError as exc:
            if stop.is_set():  # Ctrl-C reached initdb/pg_ctl too: that is why it failed
                raise CliError(INTERRUPTED, EXIT_INTERRUPTED) from exc
            raise CliError(f"{first_line(exc)}, or pass --url to use your own PostgreSQL") from exc
    click.get_current_context().exit(code)
