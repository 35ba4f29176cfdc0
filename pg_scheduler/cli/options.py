"""What the ``pg-scheduler`` commands share: the database flags, ``--json`` and ``KEY``, and
where output goes.

Commands that talk to PostgreSQL take ``--url`` (or ``PG_SCHEDULER_DATABASE_URL``),
``--table-prefix`` and ``--schema``; listing commands take ``--json`` for scripts.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from click.core import ParameterSource
from rich.console import Console

from .base import PREFIX_ENV, SCHEMA_ENV, URL_ENV, URL_EXAMPLE, Database, parse_names, parse_url
from .views import to_json

F = TypeVar("F", bound=Callable[..., Any])


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


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
key_argument = click.argument("key")


def stdout() -> Console:
    """A console on the current stdout (looked up now, so CliRunner's capture sees it).

    Piped output is not cut to 80 columns: a table's rows stay whole for grep and less.
    """
    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 250
    return Console(file=sys.stdout, soft_wrap=True, width=wide)


def print_json(value: Any) -> None:
    click.echo(to_json(value))
