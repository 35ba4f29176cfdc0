"""``pg-scheduler db``: install, upgrade, downgrade and inspect pg_scheduler's tables.

The tables are migrated by Alembic, with a version table of their own; ``db sql`` prints an
upgrade's SQL without a database, for review.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import click
from alembic.util import CommandError

from pg_scheduler import migrations
from pg_scheduler.errors import MigrationError

from .base import PREFIX_ENV, SCHEMA_ENV, CliError, Database, UsageProblem, first_line, parse_names
from .options import database_options, print_json, stdout


@click.group()
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
