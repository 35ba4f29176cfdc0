"""Outcome writes in groups: many finished attempts, one statement.

A worker thread whose job has ended hands its outcome to ``OutcomeWriter.submit`` with a callback,
and goes back to work: it does not wait for the write. When no write is in flight it becomes the
writer: it takes every outcome queued so far (its own included), records them in one transaction
(``JobRepository.finish_many``: completed one-time runs in one statement, any other outcome through
``finish``), calls each outcome's callback with its result, and keeps writing while outcomes keep
arriving (after yielding the GIL once, so that jobs ending at the same moment share its first
group). A lone outcome is therefore written at once, with no timer, while a busy node writes one
statement per few milliseconds instead of one per job, each with its own WAL flush (group commit),
and no thread is woken just to learn that its outcome was written. Fencing is unchanged: each row
is still matched on ``status = 'running' AND lease_id = :its_lease``.

``AsyncOutcomeWriter`` does the same for ``AsyncScheduler``, with a task instead of a thread.

When a group write fails nothing of it was committed: every callback gets ``None``, and the
scheduler writes that outcome on the single-job path, with that path's retries. One bad row cannot
hold back the others, and database outages are handled in one place.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

from pg_scheduler.db.records import ClaimedJob, FinishResult, Outcome

logger = logging.getLogger(__name__)

#: Most outcomes in one group (bounds the statement's arrays; a node rarely has this many).
MAX_GROUP = 1000

WriteGroup = Callable[[Sequence[tuple[ClaimedJob, Outcome]]], Sequence[FinishResult]]
Written = Callable[[FinishResult | None], None]


def group_failed(size: int, exc: Exception) -> list[FinishResult | None]:
    """A group write failed: nothing of it was committed, so every outcome gets None and is then
    written alone (and retried) by its caller."""
    logger.debug(
        "group write of %d outcomes failed (%s); writing them one by one",
        size,
        exc,
        extra={"event": "job.outcome_group_failed"},
    )
    return [None] * size


class OutcomeWriter:
    """Group commit of outcomes, led by whichever worker thread finds no write in flight."""

    def __init__(self, write_group: WriteGroup, *, max_group: int = MAX_GROUP) -> None:
        self._write_group = write_group
        self._max_group = max_group
        self._lock = threading.Lock()
        self._queue: list[tuple[ClaimedJob, Outcome, Written]] = []
        self._writing = False

    def submit(self, claimed: ClaimedJob, outcome: Outcome, written: Written) -> None:
        """Record ``outcome``, then call ``written`` with what the write did (None: the group
        write failed, nothing of it was committed). ``written`` runs on whichever thread writes
        the group, possibly this one before ``submit`` returns; it must not block."""
        with self._lock:
            self._queue.append((claimed, outcome, written))
            if self._writing:
                return  # the thread writing now takes it in its next group
            self._writing = True
        # Let the other threads waiting for the GIL run first: a pass's jobs end together, and
        # the ones ending now queue their outcomes before this thread takes the group. Without
        # it the first group held about half of them and a busy node wrote 1.75 statements per
        # pass instead of one (see benchmarks/RESULTS.md). A lone outcome loses a system call.
        time.sleep(0)
        while True:
            with self._lock:
                group = self._queue[: self._max_group]
                del self._queue[: self._max_group]
                if not group:
                    self._writing = False
                    return
            self._flush(group)

    def _flush(self, group: list[tuple[ClaimedJob, Outcome, Written]]) -> None:
        results: Sequence[FinishResult | None]
        try:
            results = self._write_group([(claimed, outcome) for claimed, outcome, _ in group])
        except Exception as exc:
            results = group_failed(len(group), exc)
        for (_, _, written), result in zip(group, results, strict=True):
            try:
                written(result)
            except Exception:  # one callback's bug must not lose the others' results
                logger.exception(
                    "outcome callback failed", extra={"event": "job.outcome_callback_failed"}
                )


AsyncWriteGroup = Callable[
    [Sequence[tuple[ClaimedJob, Outcome]]], Awaitable[Sequence[FinishResult]]
]


class AsyncOutcomeWriter:
    """``OutcomeWriter`` for ``AsyncScheduler``: outcomes that end while a group is being written
    go in the next group, written by one task on the scheduler's event loop."""

    def __init__(self, write_group: AsyncWriteGroup, *, max_group: int = MAX_GROUP) -> None:
        self._write_group = write_group
        self._max_group = max_group
        self._queue: list[tuple[ClaimedJob, Outcome, asyncio.Future[FinishResult | None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def write(self, claimed: ClaimedJob, outcome: Outcome) -> FinishResult | None:
        """Record ``outcome`` with the others queued now; returns what the write did, or None
        when the group write failed (nothing of it was committed: write it alone)."""
        done: asyncio.Future[FinishResult | None] = asyncio.get_running_loop().create_future()
        self._queue.append((claimed, outcome, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="pg_scheduler:outcomes")
        # Shielded: a caller cancelled meanwhile does not cancel the group's write.
        return await asyncio.shield(done)

    async def _drain(self) -> None:
        while self._queue:
            group = self._queue[: self._max_group]
            del self._queue[: self._max_group]
            results: Sequence[FinishResult | None]
            try:
                results = await self._write_group(
                    [(claimed, outcome) for claimed, outcome, _ in group]
                )
            except Exception as exc:
                results = group_failed(len(group), exc)
            for (_, _, done), result in zip(group, results, strict=True):
                if not done.done():
                    done.set_result(result)
