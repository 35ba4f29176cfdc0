"""What a job is: ``Job`` (code), ``JobConfig`` (name, schedule, retries) and ``JobContext``.

A job class implements ``run(ctx)`` and, optionally, ``init(ctx)`` and ``shutdown(ctx)``, which run
before and after *every* run (as in the original). Any of them may be ``async def``. Plain functions
become jobs through the scheduler's decorators (``@scheduler.recurring``, ``@scheduler.one_time``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .cron import MISFIRE_POLICIES, CronSchedule, MisfirePolicy
from .errors import ConfigError
from .naming import validate_job_name
from .params import encode_params
from .states import JobType


@dataclass(frozen=True)
class JobConfig:
    """A job's name and how it runs. Build one with ``JobConfig.recurring`` or ``.one_time``."""

    name: str
    job_type: JobType
    schedule: CronSchedule | None = None
    params: Any = None
    retries: int = 0
    misfire: MisfirePolicy = "coalesce"
    misfire_grace: dt.timedelta = dt.timedelta(minutes=1)
    run_at: dt.datetime | None = None

    def __post_init__(self) -> None:
        validate_job_name(self.name)
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(f"retries must be a non-negative integer, got {self.retries!r}")
        if self.misfire not in MISFIRE_POLICIES:
            raise ConfigError(
                f"misfire must be one of {', '.join(MISFIRE_POLICIES)}, got {self.misfire!r}"
            )
        if not isinstance(self.misfire_grace, dt.timedelta) or self.misfire_grace < dt.timedelta(0):
            raise ConfigError(
                f"misfire_grace must be a non-negative timedelta, got {self.misfire_grace!r}"
            )
        if self.run_at is not None and (
            not isinstance(self.run_at, dt.datetime) or self.run_at.tzinfo is None
        ):
            raise ConfigError(
                f"run_at must be a timezone-aware datetime, got {self.run_at!r} "
                "(naive times are read differently by different drivers)"
            )
        if self.job_type is JobType.RECURRING and self.schedule is None:
            raise ConfigError(f"recurring job {self.name!r} needs a cron schedule")
        if self.job_type is JobType.ONE_TIME:
            encode_params(self.params)  # refuse unserialisable parameters now, not at enqueue

    @classmethod
    def recurring(
        cls,
        name: str,
        cron: str,
        *,
        timezone: str = "UTC",
        retries: int = 0,
        misfire: MisfirePolicy = "coalesce",
        misfire_grace: dt.timedelta = dt.timedelta(minutes=1),
    ) -> JobConfig:
        """A job that runs at every tick of ``cron`` (5 fields; 6 with seconds first; ``@daily``…),
        evaluated in ``timezone``, at most once per tick across all nodes.

        ``retries`` are attempts within one tick; after the last one the job waits for its next
        tick. ``misfire`` says what to do with ticks missed while no node ran: ``coalesce`` (run
        once, then the next future tick), ``skip`` (drop ticks later than ``misfire_grace``) or
        ``all`` (run each missed tick, those within ``misfire_grace`` of now).
        """
        return cls(
            name=name,
            job_type=JobType.RECURRING,
            schedule=CronSchedule.parse(cron, timezone),
            retries=retries,
            misfire=misfire,
            misfire_grace=misfire_grace,
        )

    @classmethod
    def one_time(
        cls,
        name: str,
        params: Any = None,
        *,
        retries: int = 0,
        run_at: dt.datetime | None = None,
    ) -> JobConfig:
        """A job that runs once per ``schedule_job``/``enqueue``, with JSON ``params``, up to
        ``retries + 1`` attempts, no earlier than ``run_at`` (default: now)."""
        return cls(
            name=name, job_type=JobType.ONE_TIME, params=params, retries=retries, run_at=run_at
        )

    @property
    def cron(self) -> str | None:
        return self.schedule.expression if self.schedule else None

    @property
    def timezone(self) -> str:
        return self.schedule.timezone if self.schedule else "UTC"


class CancelReason(str, enum.Enum):
    """Why a run was asked to stop (``JobContext.cancel_reason``). It decides the run's outcome
    (README "Outcomes"): after ``CANCEL_JOB`` the run ends ``cancelled`` whatever its code does;
    after ``SHUTDOWN`` or ``LEASE_LOST``, code that raises the cancellation
    (``ctx.raise_if_cancelled()``, or ``asyncio.CancelledError``) hands the run back to
    ``pending``, runnable at once, without using up an attempt."""

    SHUTDOWN = "shutdown"
    """Its node is shutting down."""
    LEASE_LOST = "lease_lost"
    """Its node lost the job's lease (another node has taken it back); nothing this run does
    will be recorded."""
    CANCEL_JOB = "cancel_job"
    """An operator called ``cancel_job`` (``pg-scheduler jobs cancel``)."""

    def __str__(self) -> str:
        return self.value


class _Cancellation:
    """The mutable part of a frozen ``JobContext``: why the run was asked to stop."""

    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason: CancelReason | None = None


@dataclass(frozen=True)
class JobContext:
    """What a running job knows about its run.

    ``job_key``, ``attempt`` and ``scheduled_at`` identify the run: use them as idempotency keys,
    since a job may run again after a crash (execution is at-least-once). A run that was handed
    back (shutdown, lost lease) runs again with the same ``attempt``.
    """

    params: Any
    job_name: str
    job_key: str
    attempt: int
    scheduled_at: dt.datetime
    node_id: str
    logger: logging.Logger | logging.LoggerAdapter[Any]
    max_retries: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    """Set when the run should stop: shutdown, a lost lease, or ``cancel_job``
    (``cancel_reason`` says which)."""
    _cancellation: _Cancellation = field(default_factory=_Cancellation, repr=False, compare=False)

    @property
    def cancel_reason(self) -> CancelReason | None:
        """Why the run was asked to stop, or None while it was not."""
        return self._cancellation.reason

    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise ``JobCancelled`` if the run was asked to stop. Letting it propagate is how a job
        stops early: the run is handed back (shutdown, lost lease) or ends ``cancelled``
        (``cancel_job``); returning instead would record it ``completed``."""
        if self.cancelled.is_set():
            raise JobCancelled(self.job_key, self.cancel_reason)

    def _cancel(self, reason: CancelReason, *, override: bool = False) -> bool:
        """Ask the run to stop (the scheduler calls this). The first reason is kept unless
        ``override``; returns whether this was the first request."""
        first = self._cancellation.reason is None
        if first or override:
            self._cancellation.reason = reason
        self.cancelled.set()
        return first


class JobCancelled(Exception):
    """Raised by ``JobContext.raise_if_cancelled`` when the run was asked to stop; ``reason``
    says why (a ``CancelReason``)."""

    def __init__(self, job_key: str, reason: CancelReason | None = None) -> None:
        super().__init__(job_key if reason is None else f"{job_key} ({reason.value})")
        self.job_key = job_key
        self.reason = reason


def is_cancellation(exc: BaseException | None) -> bool:
    """Whether job code ended by raising the cancellation (``JobCancelled`` or
    ``asyncio.CancelledError``)."""
    return isinstance(exc, JobCancelled | asyncio.CancelledError)


Hook = Callable[[JobContext], Any]


class Job:
    """Base class of jobs: override ``run`` (and optionally ``init``/``shutdown``)."""

    def __init__(self, config: JobConfig) -> None:
        if not isinstance(config, JobConfig):
            raise ConfigError(f"a Job needs a JobConfig, got {type(config).__name__}")
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    def init(self, ctx: JobContext) -> Any:
        """Called before each run; an exception fails the attempt."""

    def run(self, ctx: JobContext) -> Any:
        """The job's work. Raise to fail the attempt (it is retried while retries remain)."""
        raise NotImplementedError(f"{type(self).__name__}.run(ctx) is not implemented")

    def shutdown(self, ctx: JobContext) -> Any:
        """Called after each run whatever its outcome; an exception here is logged, and does not
        turn a success into a failure."""

    @functools.cached_property
    def has_init(self) -> bool:
        """Whether ``init`` does anything (the base class's does not: no call on every run)."""
        return getattr(type(self).init, "__code__", None) is not Job.init.__code__ or (
            "init" in vars(self)
        )

    @functools.cached_property
    def has_shutdown(self) -> bool:
        """Whether ``shutdown`` does anything (as ``has_init``)."""
        return getattr(type(self).shutdown, "__code__", None) is not Job.shutdown.__code__ or (
            "shutdown" in vars(self)
        )

    @functools.cached_property
    def is_async(self) -> bool:
        """Whether a hook is ``async def`` (asked on every run: worked out once)."""
        return any(is_async_callable(getattr(self, hook)) for hook in ("init", "run", "shutdown"))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """True for ``async def`` functions and objects with an ``async def __call__``."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )


class FunctionJob(Job):
    """A job whose ``run`` is a plain function ``fn(ctx)`` (sync or ``async def``)."""

    def __init__(self, config: JobConfig, fn: Callable[[JobContext], Any]) -> None:
        super().__init__(config)
        if not callable(fn):
            raise ConfigError(f"job {config.name!r}: {fn!r} is not callable")
        self.fn = fn
        if is_async_callable(fn):
            self.run = self._run_async  # type: ignore[method-assign]

    def run(self, ctx: JobContext) -> Any:
        return self.fn(ctx)

    async def _run_async(self, ctx: JobContext) -> Any:
        result = self.fn(ctx)
        if isinstance(result, Awaitable):
            return await result
        return result

    def __repr__(self) -> str:
        return f"<FunctionJob {self.name!r} {getattr(self.fn, '__qualname__', self.fn)!r}>"


def is_coroutine_result(value: Any) -> bool:
    return asyncio.iscoroutine(value) or inspect.isawaitable(value)
