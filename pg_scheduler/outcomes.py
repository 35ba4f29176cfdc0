"""Outcome writes in groups: many finished attempts, one transaction.

A worker thread whose job has ended calls ``OutcomeWriter.write``. When no write is in flight it
becomes the writer: it takes every outcome queued so far (its own included) and records them in
one transaction (``JobRepository.finish_many``: completed one-time runs in one statement, any other
outcome through ``finish``), then hands each waiting thread its result. Outcomes that end while a
write is in flight queue up for the next one. A lone outcome is therefore written at once, with no
timer, while a busy node writes one transaction per few milliseconds instead of one per job, each
with its own WAL flush (group commit). Fencing is unchanged: each row is still matched on
``status = 'running' AND lease_id = :its_lease``.

When a group write fails nothing of it was committed: every thread of the group gets ``None`` and
writes its own outcome on the single-job path, with that path's retries. One bad row cannot hold
back the others, and database outages are handled in one place.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from .records import ClaimedJob
from .repository import FinishResult, Outcome

logger = logging.getLogger(__name__)

#: Most outcomes in one group (bounds the statement's arrays; a node rarely has this many).
MAX_GROUP = 1000

WriteGroup = Callable[[Sequence[tuple[ClaimedJob, Outcome]]], Sequence[FinishResult]]


class _Pending:
    __slots__ = ("claimed", "done", "outcome", "result", "wake")

    def __init__(self, claimed: ClaimedJob, outcome: Outcome) -> None:
        self.claimed = claimed
        self.outcome = outcome
        self.result: FinishResult | None = None
        self.done = False
        # Held until this thread is woken: to take its result, or to lead the next write. One
        # lock per waiter, so a write wakes exactly the threads it concerns (a shared Condition's
        # notify_all woke every waiting thread after every write: 16 % of the node's CPU).
        self.wake = threading.Lock()
        self.wake.acquire()


class OutcomeWriter:
    """Group commit of outcomes, led by whichever worker thread finds no write in flight."""

    def __init__(self, write_group: WriteGroup, *, max_group: int = MAX_GROUP) -> None:
        self._write_group = write_group
        self._max_group = max_group
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._writing = False

    def write(self, claimed: ClaimedJob, outcome: Outcome) -> FinishResult | None:
        """Record ``outcome``; returns what the write did, or None when the group write failed
        (the caller then writes it alone)."""
        mine = _Pending(claimed, outcome)
        with self._lock:
            self._queue.append(mine)
            lead = not self._writing
            self._writing = True
        if not lead:
            mine.wake.acquire()  # until our group is written, or it is our turn to lead
            if mine.done:
                return mine.result
        # The leader is the oldest queued outcome, so its own is always in the group it writes.
        with self._lock:
            group = self._queue[: self._max_group]
            del self._queue[: self._max_group]
        self._flush(group, mine)
        with self._lock:
            successor = self._queue[0] if self._queue else None
            self._writing = successor is not None
        if successor is not None:
            successor.wake.release()  # not done: it leads the next write
        return mine.result

    def _flush(self, group: list[_Pending], leader: _Pending) -> None:
        results: Sequence[FinishResult | None]
        try:
            results = self._write_group([(p.claimed, p.outcome) for p in group])
        except Exception as exc:
            # Nothing was committed; each thread writes its own outcome (and retries) instead.
            logger.debug(
                "group write of %d outcomes failed (%s); writing them one by one",
                len(group),
                exc,
                extra={"event": "job.outcome_group_failed"},
            )
            results = [None] * len(group)
        for pending, result in zip(group, results, strict=True):
            pending.result = result
            pending.done = True
            if pending is not leader:
                pending.wake.release()
