"""What a node needs from the runtime it runs on. Two runtimes implement it: worker threads
(``pg_scheduler.runtime.threads``, for ``Scheduler``) and asyncio tasks
(``pg_scheduler.runtime.aio``, for ``AsyncScheduler``).

Everything a node decides is written once, as coroutines in ``pg_scheduler.node``; the runtime
only says how they wait and where code runs. On the thread runtime a coroutine's awaits block the
thread that drives it and return (``runtime.threads.drive``), except an outcome write, which
parks the attempt until its group is written; on asyncio they are ordinary awaits.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import sqlalchemy as sa

from pg_scheduler.db.records import ClaimedJob, FinishResult, Outcome
from pg_scheduler.db.repository import JobRepository, shares_one_statement

if TYPE_CHECKING:
    from pg_scheduler.node.running import RunningJob

T = TypeVar("T")


class Stream(enum.Enum):
    """Where a database call runs."""

    TRANSACTION = "transaction"
    """A new transaction of the session factory, committed on success."""
    AUTOCOMMIT = "autocommit"
    """A pooled connection in autocommit: one atomic statement, or reads."""
    CLAIM = "claim"
    """Autocommit on the claim stream's kept connection (when free)."""
    OUTCOME = "outcome"
    """Autocommit on the outcome stream's kept connection."""
    ENQUEUE = "enqueue"
    """Autocommit on the enqueue stream's kept connection."""
    HEARTBEAT = "heartbeat"
    """A transaction on the heartbeat's own connection: busy jobs or an exhausted pool cannot
    starve it."""


class Wakeup(Protocol):
    """An event a service sleeps on; ``set`` may be called from any thread."""

    def set(self) -> None: ...

    def clear(self) -> None: ...

    def is_set(self) -> bool: ...

    async def wait(self, timeout: float | None) -> bool:
        """Wait until set or ``timeout`` seconds have passed; True if set."""
        ...


class Runtime(Protocol):
    """How a node waits, calls the database and runs job code."""

    on_schema_missing: Callable[[], None]
    """Called when a statement finds the tables missing (the node checks them again)."""

    def wakeup(self) -> Wakeup: ...

    async def db(self, fn: Callable[[JobRepository], T], stream: Stream = Stream.TRANSACTION) -> T:
        """Run ``fn(repository)`` on ``stream``; database errors come out translated
        (``DatabaseUnavailableError``, ``SchemaNotInstalledError``)."""
        ...

    async def on_connection(self, fn: Callable[[sa.Connection], None], *, commit: bool) -> None:
        """Run ``fn`` on a connection of its own (migrations and schema checks)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def start(self) -> None:
        """Get ready to run jobs (the thread runtime starts its worker threads)."""
        ...

    def serve(self, loop: Coroutine[Any, Any, None], name: str) -> Callable[[], None]:
        """Run a service's loop in the background; returns what cancels it."""
        ...

    def launch(self, attempt: Coroutine[Any, Any, None], name: str) -> None:
        """Run one attempt in the background (a worker thread, or a task)."""
        ...

    async def run_code(self, running: RunningJob, *, here: bool = False) -> BaseException | None:
        """Run the job's hooks (``init``, ``run``, ``shutdown``); return the exception that failed
        the attempt, or None. ``here``: in the calling thread or task (``run_pending``)."""
        ...

    def write_outcome(
        self, claimed: ClaimedJob, outcome: Outcome
    ) -> Awaitable[FinishResult | None]:
        """Write an outcome with the others ending now (one statement for the group); None when
        the group write failed (nothing of it was committed)."""
        ...

    async def hop(self) -> None:
        """Continue off the group writer's thread before something slow (a no-op on asyncio)."""
        ...

    def start_listener(self, on_notify: Callable[[str], None]) -> None: ...

    async def stop_listener(self) -> None: ...

    async def close(self) -> None:
        """Stop worker threads and event loops, give back kept connections."""
        ...

    async def after_pending(self) -> None:
        """``run_pending`` is done: close what it opened (its event loop, kept connections)."""
        ...


def group_stream(items: Sequence[tuple[ClaimedJob, Outcome]]) -> Stream:
    """Where a group of outcomes is written: in autocommit when it is one atomic statement
    (completed one-time runs; see ``shares_one_statement``), else in one transaction."""
    if all(shares_one_statement(*item) for item in items):
        return Stream.OUTCOME
    return Stream.TRANSACTION
