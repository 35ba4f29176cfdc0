"""The ``pg-scheduler`` commands (click for arguments, rich for tables).

Loaded by ``pg_scheduler.cli.main`` once the ``cli`` extra is known to be installed. Every command
that talks to PostgreSQL takes ``--url`` (or ``PG_SCHEDULER_DATABASE_URL``), ``--table-prefix``
and ``--schema``. Whatever goes wrong ends as one line on stderr naming the problem and the fix, and
an exit code: 0 success, 1 the command failed (database unreachable, schema not installed, unknown
job key, ...), 2 the command line is wrong (bad flag, bad URL, unknown module), 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from rich.console import Console

from . import migrations
from .cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from .errors import ConfigError, MigrationError, PgSchedulerError
from .naming import Names

F = TypeVar("F", bound=Callable[..., Any])

URL_ENV = "PG_SCHEDULER_DATABASE_URL"
PREFIX_ENV = "PG_SCHEDULER_TABLE_PREFIX"
SCHEMA_ENV = "PG_SCHEDULER_SCHEMA"
TRACEBACK_ENV = "PG_SCHEDULER_TRACEBACK"
URL_EXAMPLE = "postgresql+psycopg://user:password@host:5432/dbname"
# The CLI runs synchronously; an async app's URL is used with the sync driver of the same family.
_SYNC_DRIVERS = {"asyncpg": "psycopg", "psycopg_async": "psycopg"}
_DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pg8000": "pg8000"}
_PASSWORD_RE = re.compile(r"(//[^:/@]*:)[^@/]*@")


class CliError(Exception):
    """A failure to report as one line (``problem: fix``) with an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------------------------------- errors
def first_line(exc: BaseException) -> str:
    """The first line of a (driver) error, without SQLAlchemy's background links."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


def describe(exc: BaseException) -> tuple[str, int]:
    """The one-line message and the exit code for an exception that ended a command."""
    if isinstance(exc, click.UsageError):
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return f"{exc.format_message()}{where}", EXIT_USAGE
    if isinstance(exc, click.ClickException):
        return exc.format_message(), exc.exit_code
    if isinstance(exc, CliError):
        return str(exc), exc.exit_code
    if isinstance(exc, ConfigError):
        return str(exc), EXIT_USAGE
    if isinstance(exc, PgSchedulerError):
        return first_line(exc), EXIT_FAILURE
    if isinstance(exc, sa.exc.DBAPIError):
        return f"database error: {first_line(exc)}", EXIT_FAILURE
    return (
        f"unexpected {type(exc).__name__}: {first_line(exc)} "
        f"(rerun with --traceback or {TRACEBACK_ENV}=1 to see where)",
        EXIT_FAILURE,
    )


def report(message: str) -> None:
    """Print an error as one line on stderr (plain text: rich would wrap it)."""
    click.echo(f"pg-scheduler: error: {' '.join(message.split())}", err=True)


class App(click.Group):
    """The root group: turns every failure into one line on stderr and an exit code."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> int:
        argv = list(args) if args is not None else sys.argv[1:]
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else EXIT_OK
        except click.Abort as exc:
            if isinstance(exc.__cause__, KeyboardInterrupt):
                report("interrupted")
                code = EXIT_INTERRUPTED
            else:
                report("aborted")
                code = EXIT_FAILURE
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except Exception as exc:
            if "--traceback" in argv or os.environ.get(TRACEBACK_ENV):
                raise
            message, code = describe(exc)
            report(message)
        if standalone_mode:
            sys.exit(code)
        return code


def stdout() -> Console:
    """A console on the current stdout (looked up now, so CliRunner's capture sees it)."""
    return Console(file=sys.stdout, soft_wrap=True)


# ---------------------------------------------------------------------------------------- database
def redact(raw: str) -> str:
    return _PASSWORD_RE.sub(r"\1***@", raw)


def parse_url(raw: str | None) -> sa.URL:
    """A PostgreSQL SQLAlchemy URL from ``--url``/``PG_SCHEDULER_DATABASE_URL``, or a usage error."""
    if not raw:
        raise click.UsageError(f"no database URL: pass --url {URL_EXAMPLE} or set {URL_ENV}")
    try:
        url = sa.make_url(raw)
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise click.BadParameter(
            f"{redact(raw)!r} is not a database URL ({first_line(exc)}); "
            f"expected something like {URL_EXAMPLE}",
            param_hint=f"'--url' / {URL_ENV}",
        ) from exc
    backend = url.get_backend_name()
    if backend in ("postgres", "postgresql"):
        driver = url.get_driver_name() if "+" in url.drivername else None
        driver = _SYNC_DRIVERS.get(driver or "", driver)
        return url.set(drivername=f"postgresql+{driver}" if driver else "postgresql")
    raise click.BadParameter(
        f"{url.render_as_string(hide_password=True)!r} is a {backend} URL, but pg_scheduler "
        f"needs PostgreSQL; use a URL like {URL_EXAMPLE}",
        param_hint=f"'--url' / {URL_ENV}",
    )


def parse_names(table_prefix: str, schema: str | None) -> Names:
    try:
        return Names(prefix=table_prefix, schema=schema or None)
    except ConfigError as exc:
        hint = "'--schema'" if "schema" in str(exc).lower() else "'--table-prefix'"
        raise click.BadParameter(str(exc), param_hint=hint) from exc


@dataclasses.dataclass(frozen=True)
class Database:
    """Where a command works: a URL and one installation (table prefix and schema)."""

    url: sa.URL
    names: Names
    url_from_env: bool = False

    @property
    def shown(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @property
    def where(self) -> str:
        return self.names.qualified(self.names.jobs_table)

    def flags(self, *, url: bool = True) -> str:
        """The flags that select this installation, for the fixes we suggest."""
        parts = [] if self.url_from_env or not url else ["--url URL"]
        if self.names.prefix:
            parts.append(f"--table-prefix {self.names.prefix}")
        if self.names.schema:
            parts.append(f"--schema {self.names.schema}")
        return "".join(f" {part}" for part in parts)

    def engine(self) -> sa.Engine:
        """An engine on the URL whose server answered, or a one-line explanation."""
        connect_args: dict[str, Any] = {}
        driver = self.url.get_driver_name()
        if driver in ("psycopg", "psycopg2") and "connect_timeout" not in self.url.query:
            connect_args["connect_timeout"] = 10  # libpq waits forever by default
        try:
            engine = sa.create_engine(
                self.url, poolclass=sa.pool.NullPool, connect_args=connect_args
            )
        except sa.exc.NoSuchModuleError as exc:
            raise click.BadParameter(
                f"unknown driver in {self.shown!r}; use postgresql+psycopg (psycopg 3), "
                "postgresql+psycopg2 or postgresql+pg8000",
                param_hint=f"'--url' / {URL_ENV}",
            ) from exc
        except ImportError as exc:
            package = _DRIVER_PACKAGES.get(driver, driver)
            raise CliError(
                f"the {driver} driver for {self.shown!r} is not installed ({exc}): "
                f"pip install '{package}', or use a postgresql+psycopg:// URL"
            ) from exc
        try:
            with engine.connect() as conn:
                conn.execute(sa.select(sa.literal(1)))
        except sa.exc.DBAPIError as exc:
            raise CliError(
                f"cannot connect to PostgreSQL at {self.shown}: {first_line(exc)}; check that the "
                f"server is running and that the URL (host, port, user, password, database) is "
                f"right"
            ) from exc
        return engine

    def require_schema(self, engine: sa.Engine) -> None:
        """Fail with the exact ``db upgrade`` command unless our tables are at head."""
        installed = migrations.current(engine, names=self.names)
        expected = migrations.head()
        fix = f"run `pg-scheduler db upgrade{self.flags()}`"
        if installed is None:
            raise CliError(
                f"pg_scheduler tables ({self.where}) are not installed in {self.shown}: {fix}"
            )
        if installed != expected:
            if not _known_revision(installed):
                fix = "upgrade the pg-scheduler package (a newer version migrated this database)"
            raise CliError(
                f"pg_scheduler tables ({self.where}) are at revision {installed!r}, but this "
                f"pg-scheduler needs {expected!r}: {fix}"
            )


def _known_revision(revision: str) -> bool:
    scripts = ScriptDirectory.from_config(migrations.make_config(Names()))
    try:
        return scripts.get_revision(revision) is not None
    except CommandError:
        return False


def database_options(f: F) -> F:
    """``--url``, ``--table-prefix`` and ``--schema``, passed on as one ``db: Database``."""

    @functools.wraps(f)
    def wrapper(
        *args: Any, url: str | None, table_prefix: str, schema: str | None, **kw: Any
    ) -> Any:
        ctx = click.get_current_context()
        from_env = ctx.get_parameter_source("url") is click.core.ParameterSource.ENVIRONMENT
        names = parse_names(table_prefix, schema)
        return f(*args, db=Database(parse_url(url), names, from_env), **kw)

    wrapper = click.option(
        "--schema",
        envvar=SCHEMA_ENV,
        default=None,
        help=f"PostgreSQL schema of the tables (default: the search path) [env: {SCHEMA_ENV}].",
    )(wrapper)
    wrapper = click.option(
        "--table-prefix",
        envvar=PREFIX_ENV,
        default="",
        help=f"Prefix of the tables, as in SchedulerConfig.table_prefix [env: {PREFIX_ENV}].",
    )(wrapper)
    wrapper = click.option(
        "--url",
        envvar=URL_ENV,
        metavar="URL",
        help=f"SQLAlchemy URL of the database, e.g. {URL_EXAMPLE} [env: {URL_ENV}].",
    )(wrapper)
    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------- JSON
def plain(value: Any) -> Any:
    """``value`` as JSON data: ISO 8601 timestamps, seconds for durations, strings for UUIDs."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def print_json(value: Any) -> None:
    click.echo(json.dumps(plain(value), indent=2, ensure_ascii=False))


# ---------------------------------------------------------------------------------------- root
@click.group(cls=App, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--traceback",
    is_flag=True,
    help=f"Show the traceback of an unexpected error [env: {TRACEBACK_ENV}=1].",
)
@click.version_option(package_name="pg-scheduler")
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
        raise click.BadParameter(first_line(exc), param_hint="'--revision'") from exc
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
            raise click.UsageError(
                f"downgrading {db.where} to {revision} can delete jobs and their history; "
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
        raise CliError(
            f"pg_scheduler tables ({db.where}) are {state}: run `pg-scheduler db upgrade{db.flags()}`"
        )


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
