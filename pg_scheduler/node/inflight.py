"""``Inflight``: the runs a node holds leases for.

Its size is what the poller subtracts from ``max_concurrent_jobs``, so the cap holds across polls;
a job that hangs keeps its slot until its code returns (Python cannot kill a thread), while its
lease is rescued elsewhere.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pg_scheduler.node.running import RunningJob


class Inflight:
    """Thread-safe registry of the runs a node holds leases for.

    It counts the jobs whose code has ended (see ``end_code``), so ``free_slots`` answers without
    walking the registry: a busy node asks after every job."""

    def __init__(self, on_empty: Callable[[], None] | None = None) -> None:
        self._jobs: dict[uuid.UUID, RunningJob] = {}
        self._code_ended = 0
        self._lock = threading.Lock()  # a plain lock: taken several times per job
        self.on_empty = on_empty
        """Called (from whichever thread removes the last lease) when the node runs nothing."""

    def add(self, running: RunningJob) -> None:
        with self._lock:
            if running.lease_id not in self._jobs:
                self._jobs[running.lease_id] = running
                self._code_ended += running.code_ended

    def end_code(self, running: RunningJob) -> None:
        """``running``'s code has returned: its slot is free, its lease still held until its
        outcome is written (``remove``)."""
        with self._lock:
            if running.code_ended:
                return
            running.code_ended = True
            if self._jobs.get(running.lease_id) is running:
                self._code_ended += 1

    def remove(self, lease_id: uuid.UUID) -> None:
        with self._lock:
            running = self._jobs.pop(lease_id, None)
            if running is not None and running.code_ended:
                self._code_ended -= 1
            emptied = running is not None and not self._jobs
        if emptied and self.on_empty is not None:
            self.on_empty()

    def get(self, lease_id: uuid.UUID) -> RunningJob | None:
        with self._lock:
            return self._jobs.get(lease_id)

    def snapshot(self) -> list[RunningJob]:
        with self._lock:
            return list(self._jobs.values())

    def leases(self) -> list[uuid.UUID]:
        with self._lock:
            return list(self._jobs)

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    def free_slots(self, cap: int) -> int:
        """How many more jobs may be claimed under ``cap`` (``max_concurrent_jobs``): a job
        whose code has ended frees its slot at once, while its outcome is still being written;
        but the node never holds more than ``2 * cap`` leases (jobs running, or waiting for
        their outcome write), so a slow database cannot make it claim without bound."""
        with self._lock:
            held = len(self._jobs)
            return max(0, min(cap - (held - self._code_ended), 2 * cap - held))

    def __iter__(self) -> Iterator[RunningJob]:
        return iter(self.snapshot())
