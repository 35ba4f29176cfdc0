"""Run the ``Scheduler`` an application defines, as ``pg-scheduler worker MODULE:ATTRIBUTE`` does.

The attribute is found the way ``celery worker`` and ``uvicorn`` find theirs: import ``MODULE``
(the current directory is on the path), then follow ``ATTRIBUTE`` (dots allowed). It may be

* a ``Scheduler`` instance: the app built it with its own engine;
* a factory taking no argument and returning a ``Scheduler``;
* a factory taking the database URL (a ``str``) and returning a ``Scheduler``: the worker passes
  ``--url``/``PG_SCHEDULER_DATABASE_URL``, or, when neither is set, the URL of an embedded
  PostgreSQL it starts for development.

A worker runs until SIGTERM or SIGINT, then shuts the scheduler down gracefully (running jobs get
``shutdown_timeout`` to finish; the others are handed back to the cluster).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import sqlalchemy as sa

from pg_scheduler import embedded, migrations
from pg_scheduler.errors import (
    ConfigError,
    EmbeddedPostgresError,
    PgSchedulerError,
    SchemaNotInstalledError,
)
from pg_scheduler.naming import Names
from pg_scheduler.scheduler import Scheduler

from .base import (
    EXIT_INTERRUPTED,
    INTERRUPTED,
    URL_ENV,
    CliError,
    Database,
    UsageProblem,
    article,
    first_line,
    plural,
)

log = logging.getLogger("pg_scheduler.worker")


class AppNotFoundError(ConfigError):
    """``MODULE:ATTRIBUTE`` does not name a Scheduler (a usage error)."""


class AppLoadError(PgSchedulerError):
    """The application's module or factory raised while loading."""


@dataclass(frozen=True)
class AppSpec:
    """A parsed ``MODULE:ATTRIBUTE``."""

    module: str
    attribute: str

    @classmethod
    def parse(cls, spec: str) -> AppSpec:
        module, sep, attribute = spec.partition(":")
        valid = all(part.isidentifier() for part in module.split(".")) and all(
            part.isidentifier() for part in attribute.split(".")
        )
        if not sep or not valid:
            raise AppNotFoundError(
                f"{spec!r} is not MODULE:ATTRIBUTE; write it like myapp.tasks:scheduler "
                "(a module, a colon, then a Scheduler or a factory returning one)"
            )
        return cls(module, attribute)

    def __str__(self) -> str:
        return f"{self.module}:{self.attribute}"


def import_module(spec: AppSpec) -> ModuleType:
    """Import the app's module, telling a missing module from one that fails to import."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the app lives where we run
    try:
        return importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if spec.module == missing or spec.module.startswith(f"{missing}."):
            raise AppNotFoundError(
                f"cannot import module {spec.module!r} (from {spec}): no module named "
                f"{missing!r}; run the worker from the directory that contains it, or add that "
                "directory to PYTHONPATH"
            ) from exc
        raise AppLoadError(
            f"importing {spec.module!r} failed: {exc}; install the missing package"
        ) from exc
    except Exception as exc:
        raise AppLoadError(f"importing {spec.module!r} raised {type(exc).__name__}: {exc}") from exc


def find_attribute(spec: AppSpec) -> Any:
    obj: Any = import_module(spec)
    for part in spec.attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppNotFoundError(
                f"module {spec.module!r} has no attribute {spec.attribute!r}; name its Scheduler "
                "(or a function returning one) after the colon"
            ) from None
    return obj


def takes_url(factory: Callable[..., Any]) -> bool:
    """Whether ``factory`` wants the database URL as its one required argument."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    required = [
        p
        for p in parameters
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(required) == 1


def is_async_scheduler(obj: object) -> bool:
    try:
        from pg_scheduler.aio import AsyncScheduler
    except ImportError:  # the asyncio extra is not installed: it cannot be one
        return False
    return isinstance(obj, AsyncScheduler)


def is_scheduler(obj: object) -> bool:
    return isinstance(obj, Scheduler) or is_async_scheduler(obj)


@dataclass(frozen=True)
class App:
    """What ``MODULE:ATTRIBUTE`` names: a ready scheduler, or a factory (maybe of the URL)."""

    spec: AppSpec
    target: Any

    @classmethod
    def load(cls, spec: str) -> App:
        parsed = AppSpec.parse(spec)
        target = find_attribute(parsed)
        if not is_scheduler(target) and not callable(target):
            raise AppNotFoundError(
                f"{parsed} is {article(type(target).__name__)}, not a pg_scheduler Scheduler or a "
                "function returning one"
            )
        return cls(parsed, target)

    @property
    def needs_url(self) -> bool:
        return not is_scheduler(self.target) and takes_url(self.target)

    def make(self, url: str | None) -> Any:
        """The app's scheduler (``Scheduler`` or ``AsyncScheduler``); a factory is called now,
        with ``url`` if it takes one. An ``async def`` factory's coroutine is returned as is."""
        if is_scheduler(self.target):
            return self.target
        try:
            made = self.target(url) if self.needs_url else self.target()
        except PgSchedulerError:
            raise
        except Exception as exc:
            raise AppLoadError(f"{self.spec}() raised {type(exc).__name__}: {exc}") from exc
        if not inspect.isawaitable(made):
            self.check(made)
        return made

    def check(self, made: object) -> Any:
        if not is_scheduler(made):
            raise AppNotFoundError(
                f"{self.spec}() returned {article(type(made).__name__)}, not a pg_scheduler Scheduler"
            )
        return made


def run_until_stopped(
    scheduler: Scheduler, stop: threading.Event, on_started: Callable[[], None] = lambda: None
) -> None:
    """Start ``scheduler`` (unless the app already did), wait for ``stop``, shut it down."""
    if not scheduler.running:
        scheduler.start()
    on_started()
    try:
        while not stop.wait(0.5):
            pass
        say_stopping(scheduler)
    finally:
        scheduler.shutdown()


def say_stopping(scheduler: Any) -> None:
    """What the first SIGTERM or Ctrl-C waits for, and how to cut it short."""
    running = len(scheduler.inflight)
    wait = scheduler.config.shutdown_timeout.total_seconds()
    if running:
        waits = (
            f"waiting up to {wait:g}s for {plural(running, 'running job')} to finish (still "
            "running then, they are handed back to the cluster)"
        )
    else:
        waits = "no job is running"
    log.warning(
        "stopping: %s; press Ctrl-C again (or send SIGTERM again) to stop at once",
        waits,
        extra={"event": "worker.stopping"},
    )


def same_database(a: sa.URL, b: sa.URL) -> bool:
    def where(url: sa.URL) -> tuple[Any, ...]:
        return (url.host, url.port or 5432, url.database, url.username, url.query.get("host"))

    return where(a) == where(b)


@dataclass
class Run:
    """One worker run: the app, where its database is, and the signal that ends it."""

    app: App
    url: sa.URL | None
    url_is_explicit: bool
    stop: threading.Event
    server: embedded.EmbeddedPostgres | None = None

    def make(self) -> Any:
        """The app's scheduler (or the coroutine of an ``async def`` factory)."""
        if self.server is None:
            return self.app.make(
                self.url.render_as_string(hide_password=False) if self.url else None
            )
        try:
            return self.app.make(self.server.url)
        except SchemaNotInstalledError as exc:
            # The factory scheduled jobs before the worker could install the tables: install the
            # ones the error names (when it does) and call the factory again.
            names = getattr(exc, "names", None)
            if not isinstance(names, Names):
                raise CliError(
                    f"{first_line(exc)} (the embedded database is new: while developing, pass "
                    "create_schema=True in the app's SchedulerConfig)"
                ) from exc
            self.install(names)
            return self.app.make(self.server.url)

    def install(self, names: Names) -> None:
        assert self.server is not None
        engine = sa.create_engine(self.server.url, poolclass=sa.pool.NullPool)
        try:
            migrations.upgrade(engine, names=names)
        finally:
            engine.dispose()

    def prepare(self, scheduler: Any) -> Database:
        """Check the app's scheduler against the command line; where it works, for messages."""
        self.app.check(scheduler)
        engine_url: sa.URL = scheduler.engine.url
        if (
            self.url is not None
            and self.url_is_explicit
            and not same_database(self.url, engine_url)
        ):
            raise UsageProblem(
                f"{self.app.spec} brings its own engine on "
                f"{engine_url.render_as_string(hide_password=True)}, another database than "
                f"--url: drop --url, or make {self.app.spec} a function that takes the URL"
            )
        if self.server is not None:
            self.install(scheduler.names)
        return Database(engine_url, scheduler.names)

    def started(self, scheduler: Any, target: Database) -> None:
        log.info(
            "worker %s: node %s on %s runs %s; SIGTERM or Ctrl-C stops it",
            self.app.spec,
            scheduler.node_id,
            target.shown,
            ", ".join(sorted(scheduler.registered_names())) or "no jobs",
        )

    def run_sync(self, scheduler: Scheduler) -> None:
        target = self.prepare(scheduler)
        if self.stop.is_set():  # a signal arrived while the app was loading
            return
        with not_installed(target):
            run_until_stopped(scheduler, self.stop, lambda: self.started(scheduler, target))

    async def run_async(self, made: Any) -> None:
        scheduler = await made if inspect.isawaitable(made) else made
        target = self.prepare(scheduler)
        if self.stop.is_set():
            return
        with not_installed(target):
            if not scheduler.running:
                await scheduler.start()
            self.started(scheduler, target)
            try:
                while not self.stop.is_set():
                    await asyncio.sleep(0.2)
                say_stopping(scheduler)
            finally:
                await scheduler.shutdown()


@contextmanager
def not_installed(target: Database) -> Iterator[None]:
    try:
        yield
    except SchemaNotInstalledError:
        raise CliError(
            f"pg_scheduler tables ({target.where}) are not installed in {target.shown}: "
            f"{target.upgrade_hint()}"
        ) from None


def serve(
    spec: str,
    url: sa.URL | None,
    *,
    url_is_explicit: bool,
    data_dir: Path,
    stop: threading.Event,
) -> None:
    """Load the app's scheduler, run it until ``stop`` is set, and shut it down.

    ``url`` comes from ``--url`` (``url_is_explicit``) or the environment. An explicit URL is
    exported as ``PG_SCHEDULER_DATABASE_URL`` before the app's module is imported, so an app
    that reads it at import time uses it too. An ``AsyncScheduler`` (or an ``async def``
    factory) runs on an event loop of its own.
    """
    if url is not None and url_is_explicit:
        os.environ[URL_ENV] = url.render_as_string(hide_password=False)
    run = Run(App.load(spec), url, url_is_explicit, stop)
    try:
        if run.app.needs_url and url is None:
            log.warning(
                "no database URL (--url or %s): starting the embedded PostgreSQL in %s, for "
                "development only; its tables are installed automatically",
                URL_ENV,
                data_dir,
            )
            run.server = start_embedded(data_dir, stop)
        made = run.make()
        if inspect.isawaitable(made) or is_async_scheduler(made):
            asyncio.run(run.run_async(made))
        else:
            run.run_sync(made)
        log.info("worker %s stopped", spec)
    finally:
        if run.server is not None:
            run.server.stop()


def start_embedded(data_dir: Path, stop: threading.Event) -> embedded.EmbeddedPostgres:
    try:
        server = embedded.start(data_dir)
    except EmbeddedPostgresError as exc:
        if stop.is_set():  # Ctrl-C reached initdb/pg_ctl too: that is why it failed
            raise CliError(INTERRUPTED, EXIT_INTERRUPTED) from exc
        raise CliError(
            f"{first_line(exc)}, or pass --url / set {URL_ENV} to use your own PostgreSQL"
        ) from exc
    if stop.is_set():  # Ctrl-C while it started, and the server came up anyway
        server.stop()
        raise CliError(INTERRUPTED, EXIT_INTERRUPTED)
    return server
