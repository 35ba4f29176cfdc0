"""The ``pg-scheduler`` command tree: the root group and its subcommands.

Loaded by ``pg_scheduler.cli.entry.main`` once the ``cli`` extra is known to be installed. The
root group turns whatever ends a command into one line on stderr and an exit code (see
``pg_scheduler.cli.base``), and takes its own flags (``--traceback``, ``--version``) anywhere
on the line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click
import sqlalchemy as sa

from pg_scheduler.errors import ConfigError, PgSchedulerError

from .base import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    INTERRUPTED,
    TRACEBACK_ENV,
    CliError,
    first_line,
    report,
)
from .jobs import jobs, nodes, runs
from .migrate import db
from .processes import demo, worker

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


for command in (db, jobs, runs, nodes, worker, demo):
    cli.add_command(command)
