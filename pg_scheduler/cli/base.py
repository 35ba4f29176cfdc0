"""What every part of the ``pg-scheduler`` command shares: exit codes, one-line errors, words, and
the database a command works on (its URL, table prefix and schema).

The bottom layer of ``pg_scheduler.cli``: it imports nothing else from the package, and neither
click nor rich, so ``pg_scheduler.cli.entry.main`` can report a missing ``cli`` extra with it.
Whatever ends a command becomes one line on stderr, ``pg-scheduler: error: <problem>: <fix>``,
and an exit code:

* 0: done;
* 1: the command could not do its job (database unreachable, tables not installed, unknown job
  key, job in the wrong state, ...);
* 2: the command line is wrong (bad flag or URL, unknown module or attribute, ...);
* 130: interrupted by Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from typing import Any

import sqlalchemy as sa

from pg_scheduler import migrations
from pg_scheduler.errors import ConfigError
from pg_scheduler.naming import Names

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
INTERRUPTED = "interrupted"

URL_ENV = "PG_SCHEDULER_DATABASE_URL"
PREFIX_ENV = "PG_SCHEDULER_TABLE_PREFIX"
SCHEMA_ENV = "PG_SCHEDULER_SCHEMA"
TRACEBACK_ENV = "PG_SCHEDULER_TRACEBACK"
URL_EXAMPLE = "postgresql+psycopg://user:password@host:5432/dbname"

# The CLI is synchronous; an async app's URL is used with the sync driver of the same family.
_SYNC_DRIVERS = {"asyncpg": "psycopg", "psycopg_async": "psycopg"}
_DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pg8000": "pg8000"}
_PASSWORD_RE = re.compile(r"(//[^:/@]*:)[^@/]*@")


class CliError(Exception):
    """A failure to report as one line (``problem: fix``), with its exit code."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageProblem(CliError):
    """The command line is wrong (exit code 2)."""

    exit_code = EXIT_USAGE


# ---------------------------------------------------------------------------------------- errors
def first_line(exc: BaseException) -> str:
    """The first line of an error (a driver's, without SQLAlchemy's background links)."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


def report(message: str) -> None:
    """Print an error as one line on stderr (plain text: a rich console would wrap it)."""
    print(f"pg-scheduler: error: {' '.join(message.split())}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- words
def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 tick``, ``2 ticks``: a count with its noun in the right number."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def article(word: str) -> str:
    """``an Engine``, ``a str``: the word after the indefinite article it takes (by its first
    letter, which is right for the type and job names it is used with)."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


# ---------------------------------------------------------------------------------------- URLs
def redact(raw: str) -> str:
    """``raw`` with any password replaced, for a URL SQLAlchemy could not even parse."""
    return _PASSWORD_RE.sub(r"\1***@", raw)


def parse_url(raw: str | None) -> sa.URL:
    """A PostgreSQL URL from ``--url``/``PG_SCHEDULER_DATABASE_URL``, or a usage problem.

    ``postgres://`` (as Heroku and others write it) is accepted, and async drivers are swapped
    for psycopg (the CLI is synchronous), so an async app's URL works here unchanged.
    """
    if not raw:
        raise UsageProblem(f"no database URL: pass --url {URL_EXAMPLE} or set {URL_ENV}")
    try:
        url = sa.make_url(raw)
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise UsageProblem(
            f"invalid --url {redact(raw)!r}: {first_line(exc)}; write it like {URL_EXAMPLE}"
        ) from exc
    backend = url.get_backend_name()
    if backend not in ("postgres", "postgresql"):
        raise UsageProblem(
            f"invalid --url {url.render_as_string(hide_password=True)!r}: it is a {backend} URL "
            f"but pg_scheduler needs PostgreSQL; write it like {URL_EXAMPLE}"
        )
    driver = url.get_driver_name() if "+" in url.drivername else None
    driver = _SYNC_DRIVERS.get(driver or "", driver)
    return url.set(drivername=f"postgresql+{driver}" if driver else "postgresql")


def parse_names(table_prefix: str, schema: str | None) -> Names:
    try:
        return Names(prefix=table_prefix, schema=schema or None)
    except ConfigError as exc:
        flag = "--schema" if "schema" in str(exc).lower() else "--table-prefix"
        raise UsageProblem(f"invalid {flag}: {exc}") from exc


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

    def flags(self) -> str:
        """The flags that select this installation, for the commands we suggest."""
        parts = [] if self.url_from_env else ["--url URL"]
        if self.names.prefix:
            parts.append(f"--table-prefix {self.names.prefix}")
        if self.names.schema:
            parts.append(f"--schema {self.names.schema}")
        return "".join(f" {part}" for part in parts)

    def upgrade_hint(self) -> str:
        return f"run `pg-scheduler db upgrade{self.flags()}`"

    def engine(self) -> sa.Engine:
        """An engine on the URL whose server has answered, or a one-line explanation."""
        connect_args: dict[str, Any] = {}
        driver = self.url.get_driver_name()
        if driver in ("psycopg", "psycopg2") and "connect_timeout" not in self.url.query:
            connect_args["connect_timeout"] = 10  # libpq would wait forever on a silent host
        try:
            engine = sa.create_engine(
                self.url, poolclass=sa.pool.NullPool, connect_args=connect_args
            )
        except sa.exc.NoSuchModuleError as exc:
            raise UsageProblem(
                f"invalid --url {self.shown!r}: unknown driver {driver!r}; use postgresql+psycopg "
                "(psycopg 3), postgresql+psycopg2 or postgresql+pg8000"
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
                "server is running and that the URL (host, port, user, password, database) is "
                "right"
            ) from exc
        return engine

    def require_schema(self, engine: sa.Engine) -> None:
        """Fail with the exact ``db upgrade`` command unless our tables are at head."""
        installed = migrations.current(engine, names=self.names)
        expected = migrations.head()
        if installed is None:
            raise CliError(
                f"pg_scheduler tables ({self.where}) are not installed in {self.shown}: "
                f"{self.upgrade_hint()}"
            )
        if installed != expected:
            if not known_revision(installed):
                fix = (
                    "upgrade the sqlalchemy-pg-scheduler package (a newer version migrated this "
                    "database)"
                )
            elif migrations.installed_as_branch(engine, names=self.names):
                fix = migrations.BRANCH_UPGRADE_HINT
            else:
                fix = self.upgrade_hint()
            raise CliError(
                f"pg_scheduler tables ({self.where}) are at revision {installed!r}, but this "
                f"pg-scheduler needs {expected!r}: {fix}"
            )


def known_revision(revision: str) -> bool:
    """Whether this version of pg_scheduler ships ``revision``."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    scripts = ScriptDirectory.from_config(migrations.make_config(Names()))
    try:
        return scripts.get_revision(revision) is not None
    except CommandError:
        return False
