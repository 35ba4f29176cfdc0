"""``pg-scheduler jobs``, ``runs`` and ``nodes``: what the tables say about jobs, their runs and
the nodes, and the ways to steer a job (cancel, retry, trigger).

Each command opens a ``Scheduler`` that is never started: it reads and writes through the same
public API an application uses.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

import click
from rich.text import Text

from pg_scheduler.config import DEFAULT_NO_HEARTBEAT_TIMEOUT, SchedulerConfig
from pg_scheduler.errors import InvalidStateError, UnknownJobError
from pg_scheduler.scheduler import Scheduler
from pg_scheduler.states import JobStatus, JobType

from .base import CliError, Database
from .options import database_options, json_option, key_argument, print_json, stdout
from .views import job_fields, jobs_table, node_state, nodes_table, plain, runs_table, when


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


@click.group()
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


@click.command()
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


@click.command()
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
