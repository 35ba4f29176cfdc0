"""The jobs a node can run, by name, and how a ``JobConfig`` becomes rows.

Shared by ``Scheduler`` and ``AsyncScheduler``: the rules for registering a name twice, what a
node's claims resolve from its handlers, and which repository call schedules a job live here once.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any, NamedTuple

from pg_scheduler.db.records import OneTimeSpec, RecurringSpec
from pg_scheduler.db.repository import JobRepository
from pg_scheduler.errors import DuplicateJobError
from pg_scheduler.jobs import FunctionJob, Job, JobConfig
from pg_scheduler.states import JobType


class Claimable(NamedTuple):
    """The job names a node claims, and for each (same order) its handler's ``retries``: what a
    claim stores in a job whose enqueue left them unsaid (``max_retries`` NULL)."""

    names: list[str]
    retries: list[int]


class JobRegistry:
    """Thread-safe map from job name to the ``Job`` that runs it on this node."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._claimable = Claimable([], [])  # rebuilt at each registration, read at each poll

    def add(self, job: Job) -> Job:
        """Register ``job``; returns the registered instance.

        Registering a name again with a job of the same class (and, for function jobs, the same
        function) keeps the first instance; anything else under a taken name is an error.
        """
        if not isinstance(job, Job):
            raise TypeError(f"register() needs a Job, got {type(job).__name__}")
        with self._lock:
            existing = self._jobs.get(job.name)
            if existing is None:
                self._jobs[job.name] = job
                jobs = list(self._jobs.values())
                self._claimable = Claimable(
                    [j.name for j in jobs], [j.config.retries for j in jobs]
                )
                return job
        if type(existing) is not type(job) or (
            isinstance(job, FunctionJob)
            and isinstance(existing, FunctionJob)
            and existing.fn is not job.fn
        ):
            raise DuplicateJobError(f"job name {job.name!r} is already registered to {existing!r}")
        return existing

    def get(self, name: str) -> Job | None:
        with self._lock:
            return self._jobs.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    def claimable(self) -> Claimable:
        """The names this node claims and their handlers' retries (one snapshot)."""
        return self._claimable

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    def one_time_spec(
        self, name: str, params: Any, retries: int | None, run_at: dt.datetime | None
    ) -> OneTimeSpec:
        """What an enqueue of ``name`` inserts. ``retries`` left unsaid (None) is stored as NULL
        and resolved from the handler by the node that claims the job (``Claimable``), even when
        this process has the handler too: one rule, whichever process enqueues."""
        return OneTimeSpec(name, params, retries, run_at)


def schedule(repo: JobRepository, config: JobConfig) -> str:
    """Create or update a recurring job's row, or enqueue one run of a one-time job with its
    config's params. Returns the job key."""
    if config.job_type is JobType.RECURRING:
        assert config.schedule is not None
        spec = RecurringSpec(
            config.name, config.schedule, config.retries, config.misfire, config.misfire_grace
        )
        return repo.upsert_recurring(spec).key
    return repo.insert_one_time(
        OneTimeSpec(config.name, config.params, config.retries, config.run_at)
    )
