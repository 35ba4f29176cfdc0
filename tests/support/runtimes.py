"""The two runtimes behind one face, for the contract suite in ``tests/node``.

``Node`` wraps a ``Scheduler`` (runtime ``threads``) or an ``AsyncScheduler`` (runtime
``asyncio``) and gives both the same synchronous methods: on asyncio every call is made on an event
loop that runs in a background thread (``asyncio.run_coroutine_threadsafe(...).result()``), and a
coroutine it returns is awaited there. A test written against ``Node`` runs on both runtimes.

Also the helpers of the asyncio-only tests: ``node`` (an ``AsyncScheduler`` on its own engine),
``until`` (``wait_until`` for coroutines), ``has_status``, ``enqueue_elsewhere``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import inspect
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session

from pg_scheduler import JobContext, JobStatus, RetryBackoff, Scheduler, SchedulerConfig
from pg_scheduler.aio import AsyncScheduler
from pg_scheduler.db.records import OneTimeSpec
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.models import build_models
from pg_scheduler.naming import Names

#: The async drivers every asyncio test runs on.
DRIVERS = ("asyncpg", "psycopg_async")
#: The runtimes of the contract suite: the threaded node, and the asyncio node on each async driver.
RUNTIMES = ("threads", *(f"asyncio-{driver}" for driver in DRIVERS))

# Short timings, so that a lease expires in seconds (as in conftest's make_scheduler).
FAST: dict[str, Any] = {
    "job_check_interval": dt.timedelta(seconds=2),
    "heartbeat_interval": dt.timedelta(milliseconds=300),
    "no_heartbeat_timeout": dt.timedelta(milliseconds=1500),
    "shutdown_timeout": dt.timedelta(seconds=5),
    "retry_backoff": RetryBackoff(base=dt.timedelta(milliseconds=50), jitter=0),
}


# ---------------------------------------------------------------------- the contract's driver


class LoopThread:
    """An event loop running in a daemon thread; ``run`` calls into it and waits for the result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Call ``fn`` on the loop (awaiting what it returns, if awaitable) and return the result."""

        async def call() -> Any:
            value = fn()
            if inspect.isawaitable(value):
                value = await value
            return value

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Node:
    """A ``Scheduler`` or an ``AsyncScheduler`` with synchronous methods.

    Any attribute of the scheduler is reachable: a method is called (on the loop, for asyncio) and
    its coroutine awaited; ``call(lambda s: s.heartbeat.run_once())`` reaches further in."""

    def __init__(self, scheduler: Scheduler | AsyncScheduler, loop: LoopThread | None) -> None:
        self.scheduler = scheduler
        self.loop = loop

    @property
    def runtime(self) -> str:
        return "threads" if self.loop is None else "asyncio"

    def call(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(scheduler)``, on the scheduler's loop for asyncio, awaited if it is a coroutine."""
        if self.loop is None:
            return fn(self.scheduler)
        scheduler = self.scheduler
        return self.loop.run(lambda: fn(scheduler))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.scheduler, name)
        if self.loop is None or not callable(attr):
            return attr

        @functools.wraps(attr)
        def forward(*args: Any, **kwargs: Any) -> Any:
            return self.call(lambda s: getattr(s, name)(*args, **kwargs))

        return forward

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def status(self, key: str) -> JobStatus | None:
        record = self.get_job(key)
        return record.status if record else None

    def code(self, fn: Callable[[JobContext], Any]) -> Callable[[JobContext], Any]:
        """Job code in the runtime's own style: ``fn`` itself on threads, an ``async def`` that
        calls it on asyncio (so ``fn`` must not block)."""
        if self.loop is None:
            return fn

        @functools.wraps(fn)
        async def run(ctx: JobContext) -> Any:
            return fn(ctx)

        return run


class Nodes:
    """Builds ``Node`` objects of one runtime on one test's tables; stops them all at the end."""

    def __init__(self, runtime: str, engine: sa.Engine, names: Names, async_url: str | None):
        self.runtime = runtime
        self.engine = engine
        self.names = names
        self.async_url = async_url
        self.loop = LoopThread() if async_url is not None else None
        self.made: list[Node] = []
        self.engines: list[AsyncEngine] = []

    def __call__(self, **overrides: Any) -> Node:
        settings: dict[str, Any] = {"table_prefix": self.names.prefix, **FAST, **overrides}
        if self.loop is None:
            settings.setdefault("engine", self.engine)
            node = Node(Scheduler(SchedulerConfig(**settings)), None)
        else:
            if "engine" not in settings:
                assert self.async_url is not None
                settings["engine"] = make_engine(self.async_url)
                self.engines.append(settings["engine"])
            node = Node(
                self.loop.run(lambda: AsyncScheduler(SchedulerConfig(**settings))), self.loop
            )
        self.made.append(node)
        return node

    def close(self) -> None:
        try:
            for node in self.made:
                node.shutdown(dt.timedelta(seconds=2))
            if self.loop is not None:
                for engine in self.engines:
                    self.loop.run(engine.dispose)
        finally:
            if self.loop is not None:
                self.loop.close()


@contextlib.contextmanager
def nodes_for(
    request: pytest.FixtureRequest, runtime: str, engine: sa.Engine, names: Names
) -> Iterator[Nodes]:
    async_url = None
    if runtime != "threads":
        server = request.getfixturevalue("pg_scheduler_server")
        async_url = server.url_for(runtime.partition("-")[2])
    made = Nodes(runtime, engine, names, async_url)
    try:
        yield made
    finally:
        made.close()


# ---------------------------------------------------------------------- asyncio-only helpers


def make_engine(url: str) -> AsyncEngine:
    return create_async_engine(url, pool_size=10, pool_pre_ping=True)


@contextlib.asynccontextmanager
async def node(url: str, names: Names, **overrides: Any) -> AsyncIterator[AsyncScheduler]:
    """An AsyncScheduler on its own engine (not started); shut down and disposed at the end."""
    engine = make_engine(url)
    scheduler = AsyncScheduler(
        SchedulerConfig(engine=engine, table_prefix=names.prefix, **{**FAST, **overrides})
    )
    try:
        yield scheduler
    finally:
        await scheduler.shutdown(dt.timedelta(seconds=2))
        await engine.dispose()


async def until(
    predicate: Callable[[], Any], timeout: float = 10.0, message: str = "condition"
) -> Any:
    """Wait until ``predicate`` (sync or async) returns a truthy value, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {message}")
        await asyncio.sleep(0.02)


async def status(s: AsyncScheduler, key: str) -> JobStatus | None:
    record = await s.get_job(key)
    return record.status if record else None


def has_status(s: AsyncScheduler, key: str, expected: JobStatus) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await status(s, key) is expected

    return check


def enqueue_elsewhere(
    engine: sa.Engine, names: Names, name: str, params: Any = None, retries: int = 0
) -> str:
    """Enqueue as another application would: a synchronous session of its own."""
    spec = OneTimeSpec(name, params, retries)
    with Session(engine) as session, session.begin():
        return JobRepository(session, build_models(names)).insert_one_time(spec)


def events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [getattr(r, "event", "") for r in caplog.records]


class Gauge:
    """How many jobs run at once (jobs on the loop and on worker threads alike)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = self.total = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.total += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1
